"""Small numpy-only sparse-reward cooperative tasks."""

from marlx.envs.builtin.predator_prey import PredatorPreyEnv
from marlx.envs.builtin.push_box import PushBoxEnv

__all__ = ["PredatorPreyEnv", "PushBoxEnv"]
