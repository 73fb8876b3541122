"""QMIX and VDN: value decomposition with recurrent agents and whole-episode replay.

Importing this package registers ``QMIX`` and ``VDN`` with Ray Tune (``tune.Tuner("QMIX")``, ``run: QMIX``).
"""

from marlx.algorithms.qmix.learner import QMIXLearner
from marlx.algorithms.qmix.qmix import QMIX, VDN, QMIXConfig, VDNConfig
from marlx.runtime.replay import TeamEpisodeReplay


def _register() -> None:
    from ray.tune.registry import register_trainable

    register_trainable("QMIX", QMIX)
    register_trainable("VDN", VDN)


_register()

__all__ = ["QMIX", "VDN", "QMIXConfig", "VDNConfig", "QMIXLearner", "TeamEpisodeReplay"]
