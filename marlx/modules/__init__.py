"""marlx.modules: torch networks and RLModules (recurrent agent, mixers, the QMIX RLModule)."""

from marlx.modules.agent import RNNAgent, agent_inputs
from marlx.modules.mixers import QMixer, VDNMixer, make_mixer

__all__ = ["RNNAgent", "agent_inputs", "QMixer", "VDNMixer", "make_mixer"]
