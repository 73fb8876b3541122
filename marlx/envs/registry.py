"""One registry of environment names, usable from Python and from YAML (``env: builtin/push_box``).

Every name maps to a factory that returns a :class:`~marlx.envs.team.TeamEnv`. Names are registered
with Ray Tune as well, so RLlib configs can use them directly. In an RLlib env config the extra key
``marlx_view: multi_agent`` asks for the RLlib ``MultiAgentEnv`` view of the team (used when a per-agent
RLlib algorithm such as PPO trains on a marlx env), ``marlx_imports: [module, ...]`` names modules to import
first (an experiment file's ``imports:``); anything else in the env config goes to the factory.

Besides registered names, ``module:attr`` works: a gymnasium id that importing ``module`` registers (made by
the EPyMARL-convention adapter), or a TeamEnv class or factory (see :func:`import_path_spec`).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from marlx.envs.spec import EnvSpec, family_specs
from marlx.errors import ConfigKeyError, MarlxError, MissingDependencyError, UnknownNameError

VIEW_KEY = "marlx_view"
VIEWS = ("team", "multi_agent")
#: env_config key carrying a file's ``imports:`` list to every process that makes the env.
IMPORTS_KEY = "marlx_imports"
#: env_config keys that marlx consumes (never passed to an env factory).
MARLX_ENV_KEYS = (VIEW_KEY, IMPORTS_KEY)


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
    """The spec of a registered name; an import path ``module:attr`` is resolved and registered on the fly
    (:func:`import_path_spec`), in whichever process asks first (the driver, or a remote env runner)."""
    spec = _REGISTRY.get(name)
    if spec is not None:
        return spec
    if isinstance(name, str) and ":" in name:
        return register_env(import_path_spec(name), overwrite=True)
    raise UnknownNameError(
        "env", name, _REGISTRY,
        hint="an import path 'module:GymId' or 'module:TeamEnvClass' works too; `marlx envs` lists the names",
    )


def is_registered(name: str) -> bool:
    return name in _REGISTRY


def import_path_spec(name: str, strict: bool = True) -> EnvSpec | None:
    """``module:attr`` -> a spec. ``module`` is imported; if ``attr`` is then a gymnasium id, the env is made
    by the gymnasium multi-agent adapter (:mod:`marlx.envs.gym_team`); else ``attr`` must be a TeamEnv class
    or a factory returning one. ``strict=False`` (per-agent RLlib algorithms, which can take any gymnasium env
    class) returns None instead of raising when ``attr`` is neither a gymnasium id of a known multi-agent
    family nor a TeamEnv class.
    """
    import gymnasium as gym

    from marlx.envs.team import TeamEnv

    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        if not strict:
            return None
        raise MarlxError(f"env {name!r}: cannot import module {module_name!r} ({e})") from None
    if attr in gym.envs.registry:
        if not strict:
            from marlx.envs.gym_team import KNOWN_FAMILIES

            entry = gym.spec(attr).entry_point
            if not (isinstance(entry, str) and entry.split(".")[0] in KNOWN_FAMILIES):
                return None
        return EnvSpec(name, "marlx.envs.gym_team:make_gym_team", defaults={"env_id": name},
                       description=f"gymnasium multi-agent env {attr} (module {module_name})")
    target = getattr(module, attr, None)
    is_class = isinstance(target, type)
    if (is_class and issubclass(target, TeamEnv)) or (strict and callable(target) and not is_class):
        return EnvSpec(name, name, description=f"{attr} from {module_name}")
    if not strict:
        return None
    what = f"{attr!r} is a {type(target).__name__}" if target is not None else f"it has no attribute {attr!r}"
    raise MarlxError(
        f"env {name!r}: importing {module_name!r} registered no gymnasium id {attr!r}, and {what}; "
        "give a gymnasium id, a TeamEnv subclass or a function returning a TeamEnv"
    )


def import_modules(modules, where: str = "imports") -> list[str]:
    """Import the user's modules (e.g. ones that call :func:`register_env`); one clear error if one fails."""
    if isinstance(modules, str):
        modules = [modules]
    if not isinstance(modules, (list, tuple)) or not all(isinstance(m, str) for m in modules):
        raise MarlxError(f"{where} must be a list of module names, e.g. imports: [my_pkg.envs], got {modules!r}")
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise MarlxError(f"{where}: cannot import {module!r} ({e}); is its package installed or on PYTHONPATH?") from None
    return list(modules)


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
        env = factory(**kwargs)
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            raise _bad_kwarg_error(name, e, factory) from None
        raise
    if not spec.entry_point.startswith("marlx."):
        from marlx.envs.team import TeamEnv

        if not isinstance(env, TeamEnv):
            raise MarlxError(f"env {name!r}: {spec.entry_point} returned a {type(env).__name__}, not a marlx TeamEnv")
    return env


def _bad_kwarg_error(name: str, error: TypeError, factory: Callable) -> ConfigKeyError:
    """Turn "got an unexpected keyword argument 'x'" into a ConfigKeyError naming the valid keys."""
    bad = str(error).split("'")[-2] if "'" in str(error) else str(error)
    params = [p for p in inspect.signature(factory).parameters if p not in ("self", "kwargs")]
    return ConfigKeyError(bad, f"env_config of {name!r}", params)


def make_rllib_env(name: str, env_config: dict | None = None):
    """Env creator used by Ray Tune's registry: the team view, or its MultiAgentEnv view."""
    config = dict(env_config or {})
    import_modules(config.pop(IMPORTS_KEY, []), where=f"env_config.{IMPORTS_KEY}")  # on remote env runners too
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
            "builtin/two_step",
            "marlx.envs.builtin.two_step:TwoStepGameEnv",
            description="QMIX paper's two-step cooperative matrix game (optimal return 8, safe branch 7)",
        ),
        *family_specs(
            "mpe", "marlx.envs.pettingzoo:make_mpe",
            {"simple_spread": "MPE cooperative navigation (3 agents cover 3 landmarks, dense reward)",
             "simple_reference": "MPE reference game (2 agents, communication and movement in one discrete action)"},
            key="scenario", requires=("mpe2",), install="pip install mpe2==1.1.1",
        ),
    ]


def _benchmark_specs() -> list[EnvSpec]:
    """GRF, SMAX, SMAC, LBF and RWARE names; those modules import their simulators only when an env is made."""
    from marlx.envs.grf import grf_specs
    from marlx.envs.gym_team import gym_team_specs
    from marlx.envs.smac import smac_specs
    from marlx.envs.smax import smax_specs

    return [*grf_specs(), *smax_specs(), *smac_specs(), *gym_team_specs()]


for _spec in [*_builtin_specs(), *_benchmark_specs()]:
    register_env(_spec)
