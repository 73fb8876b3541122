"""Small numpy-only sparse-reward cooperative tasks."""

from marlx.envs.builtin.predator_prey import PredatorPreyEnv
from marlx.envs.builtin.push_box import PushBoxEnv
from marlx.envs.builtin.two_step import TwoStepGameEnv

__all__ = ["PredatorPreyEnv", "PushBoxEnv", "TwoStepGameEnv"]
