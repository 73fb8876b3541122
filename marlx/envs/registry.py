"""One registry of environment names, usable from Python and from YAML (``env: builtin/push_box``).

Every name maps to a factory that returns a :class:`~marlx.envs.team.TeamEnv`. Names are registered
with Ray Tune as well, so RLlib configs can use them directly. In an RLlib env config the extra key
``marlx_view: multi_agent`` asks for the RLlib ``MultiAgentEnv`` view of the team (used when a per-agent
RLlib algorithm such as PPO trains on a marlx env); anything else in the env config goes to the factory.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from marlx.errors import ConfigKeyError, MissingDependencyError, UnknownNameError

VIEW_KEY = "marlx_view"
VIEWS = ("team", "multi_agent")


@dataclass(frozen=True)
class EnvSpec:
    """A registered environment.

    Attributes:
        name: ``family/task``.
        entry_point: ``"module:callable"`` returning a TeamEnv; called with ``defaults`` updated by
            the user's env config.
        defaults: keyword arguments for the entry point.
        requires: importable modules the env needs (checked before the entry point is imported).
        install: the command that installs what is missing.
        description: one line for ``marlx envs``.
    """

    name: str
    entry_point: str
    defaults: dict = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    install: str = ""
    description: str = ""

    def installed(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.requires)

    def missing(self) -> list[str]:
        return [m for m in self.requires if importlib.util.find_spec(m) is None]


_REGISTRY: dict[str, EnvSpec] = {}


def register_env(spec: EnvSpec, *, overwrite: bool = False) -> EnvSpec:
    """Add an environment to the registry (and to Ray Tune's, if Ray is imported)."""
    if spec.name in _REGISTRY and not overwrite:
        raise ValueError(f"env {spec.name!r} is registered already")
    _REGISTRY[spec.name] = spec
    _register_with_tune(spec.name)
    return spec


def env_names() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> EnvSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError(
            "env", name, _REGISTRY, hint="`marlx envs` lists them with their install state"
        ) from None


def is_registered(name: str) -> bool:
    return name in _REGISTRY


def make_env(name: str, **config: Any):
    """Create the team view of a registered environment; ``config`` overrides the defaults."""
    spec = get_spec(name)
    missing = spec.missing()
    if missing:
        raise MissingDependencyError(f"env {name!r}", missing[0], spec.install)
    module_name, attr = spec.entry_point.split(":")
    factory: Callable = getattr(importlib.import_module(module_name), attr)
    kwargs = {**spec.defaults, **config}
    try:
        return factory(**kwargs)
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            raise _bad_kwarg_error(name, e, factory) from None
        raise


def _bad_kwarg_error(name: str, error: TypeError, factory: Callable) -> ConfigKeyError:
    """Turn "got an unexpected keyword argument 'x'" into a ConfigKeyError naming the valid keys."""
    bad = str(error).split("'")[-2] if "'" in str(error) else str(error)
    params = [p for p in inspect.signature(factory).parameters if p not in ("self", "kwargs")]
    return ConfigKeyError(bad, f"env_config of {name!r}", params)


def make_rllib_env(name: str, env_config: dict | None = None):
    """Env creator used by Ray Tune's registry: the team view, or its MultiAgentEnv view."""
    config = dict(env_config or {})
    view = config.pop(VIEW_KEY, "team")
    if view not in VIEWS:
        raise UnknownNameError(f"{VIEW_KEY} value", view, VIEWS)
    team = make_env(name, **config)
    if view == "multi_agent":
        from marlx.envs.convert import TeamToMultiAgentEnv

        return TeamToMultiAgentEnv(team)
    return team


def _register_with_tune(name: str) -> None:
    from ray.tune.registry import register_env as tune_register_env

    tune_register_env(name, lambda cfg, _name=name: make_rllib_env(_name, cfg))


def _builtin_specs() -> list[EnvSpec]:
    return [
        EnvSpec(
            "builtin/push_box",
            "marlx.envs.builtin.push_box:PushBoxEnv",
            description="FIM's Push-2-Box: two agents must push a heavy box together to the goal edge (+1)",
        ),
        EnvSpec(
            "builtin/predator_prey",
            "marlx.envs.builtin.predator_prey:PredatorPreyEnv",
            description="predators capture prey only when two are adjacent at once (sparse capture reward)",
        ),
        EnvSpec(
            "mpe/simple_spread",
            "marlx.envs.pettingzoo:make_mpe",
            defaults={"scenario": "simple_spread"},
            requires=("mpe2",),
            install="pip install mpe2==1.1.1",
            description="MPE cooperative navigation (3 agents cover 3 landmarks, dense reward)",
        ),
        EnvSpec(
            "mpe/simple_reference",
            "marlx.envs.pettingzoo:make_mpe",
            defaults={"scenario": "simple_reference"},
            requires=("mpe2",),
            install="pip install mpe2==1.1.1",
            description="MPE reference game (2 agents, communication and movement in one discrete action)",
        ),
    ]


def _benchmark_specs() -> list[EnvSpec]:
    """GRF, SMAX and SMAC names; those modules import their simulators only when an env is made."""
    from marlx.envs.grf import grf_specs
    from marlx.envs.smac import smac_specs
    from marlx.envs.smax import smax_specs

    return [*grf_specs(), *smax_specs(), *smac_specs()]


for _spec in [*_builtin_specs(), *_benchmark_specs()]:
    register_env(_spec)
