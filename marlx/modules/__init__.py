"""marlx.modules: torch networks and RLModules (recurrent agent, mixers, the QMIX RLModule)."""

from marlx.modules.agent import MLPAgent, RNNAgent, agent_inputs, make_agent
from marlx.modules.mixers import QMixer, VDNMixer, make_mixer

__all__ = ["RNNAgent", "MLPAgent", "make_agent", "agent_inputs", "QMixer", "VDNMixer", "make_mixer"]
