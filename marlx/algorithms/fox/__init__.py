"""FoX: formation-aware exploration on marlx's QMIX (Jo et al., AAAI 2024).

Importing this package registers ``FoX`` with Ray Tune (``run: FoX``).
"""

from marlx.algorithms.fox.fox import FoX, FoXConfig
from marlx.algorithms.fox.learner import FoXLearner
from marlx.algorithms.fox.module import FoXRLModule


def _register() -> None:
    from ray.tune.registry import register_trainable

    register_trainable("FoX", FoX)


_register()

__all__ = ["FoX", "FoXConfig", "FoXLearner", "FoXRLModule"]
