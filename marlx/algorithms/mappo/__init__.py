"""MAPPO and IPPO: shared recurrent actor, (centralised) critic with value normalisation, per-agent PPO.

Importing this package registers ``MAPPO`` and ``IPPO`` with Ray Tune (``run: MAPPO``, ``run: IPPO``).
"""

from marlx.algorithms.mappo.learner import MAPPOLearner
from marlx.algorithms.mappo.mappo import IPPO, MAPPO, IPPOConfig, MAPPOConfig


def _register() -> None:
    from ray.tune.registry import register_trainable

    register_trainable("MAPPO", MAPPO)
    register_trainable("IPPO", IPPO)


_register()

__all__ = ["MAPPO", "IPPO", "MAPPOConfig", "IPPOConfig", "MAPPOLearner"]
