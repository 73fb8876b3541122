"""FIM: QMIX with the Focusing Influence Mechanism's intrinsic reward (Park, Lee, Han; arXiv 2506.19417).

The mechanism lives in :mod:`marlx.intrinsic.fim`; this package only composes it with QMIX. Importing it
registers ``FIM`` with Ray Tune (``run: FIM``).
"""

from marlx.algorithms.fim.fim import FIM, FIMConfig


def _register() -> None:
    from ray.tune.registry import register_trainable

    register_trainable("FIM", FIM)


_register()

__all__ = ["FIM", "FIMConfig"]
