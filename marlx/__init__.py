"""marlx: multi-agent reinforcement learning on Ray RLlib."""

__version__ = "0.1.0"
