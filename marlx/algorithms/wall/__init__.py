"""WALL: QMIX trained against the Wolfpack adversarial attack (Lee et al., ICML 2025).

Importing this package registers ``WALL`` with Ray Tune (``run: WALL``).
"""

from marlx.algorithms.wall.learner import WALLLearner
from marlx.algorithms.wall.module import WALLRLModule
from marlx.algorithms.wall.wall import WALL, WALLConfig


def _register() -> None:
    from ray.tune.registry import register_trainable

    register_trainable("WALL", WALL)


_register()

__all__ = ["WALL", "WALLConfig", "WALLLearner", "WALLRLModule"]
