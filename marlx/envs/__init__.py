"""Environments as teams: the team view, adapters, built-in sparse tasks and the name registry."""

from marlx.envs.registry import env_names, get_spec, make_env, register_env
from marlx.envs.spec import EnvSpec, family_specs
from marlx.envs.team import AVAIL, OBS, POSITIONS, STATE, TeamEnv

__all__ = [
    "AVAIL", "OBS", "POSITIONS", "STATE", "EnvSpec", "TeamEnv",
    "env_names", "family_specs", "get_spec", "make_env", "register_env",
]
