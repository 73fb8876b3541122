"""Classic RLlib experiment files -> validated ``AlgorithmConfig`` objects and Ray Tune run settings.

The file format is the one of RLlib's ``tuned_examples`` (``rllib train file X.yaml`` before Ray 2.60)::

    my-experiment:
      run: QMIX                 # RLlib name, marlx name, or import path "pkg.module:Class"
      env: builtin/push_box     # marlx registry name or gymnasium id
      stop: {training_iteration: 20}
      checkpoint_config: {checkpoint_frequency: 5, checkpoint_at_end: true}
      config: {lr: 0.0005, env_config: {size: 5}, optim: {sam: {rho: 0.05}}}

Everything that can be wrong with a file is found here, before Ray starts, and reported as one
:class:`~marlx.errors.MarlxError` line naming the problem and the fix.
"""

from __future__ import annotations

import copy
import functools
import importlib
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from marlx.errors import ConfigKeyError, MarlxError, UnknownNameError

EXPERIMENT_KEYS = {
    "run": "algorithm name or import path (required)",
    "env": "environment name (or put it in config.env)",
    "stop": "stop criteria, e.g. {training_iteration: 10}",
    "config": "algorithm config overrides",
    "checkpoint_config": "{checkpoint_frequency: N, checkpoint_at_end: true, num_to_keep: K}",
    "storage_path": "folder for run outputs (default ./runs)",
    "num_samples": "trials to sample from the search space (or tune.num_samples)",
    "seeds": "list of seeds, e.g. [0, 1, 2]: one trial per seed (a Tune grid over config.seed)",
    "tune": "Ray Tune search settings: metric, mode, scope, scheduler, search_alg, num_samples, ...",
    "stop_reward": "shorthand for stop: {env_runners/episode_return_mean: X}",
    "local_dir": "old name of storage_path",
    "imports": "modules imported first, e.g. [my_pkg.envs] (their register_env calls; also on remote env runners)",
}
#: A file-level key (next to the experiments): modules every experiment of the file imports first.
FILE_IMPORTS_KEY = "imports"

# Keys that RLlib's update_from_dict understands although they are no attributes of the config.
_SPECIAL_CONFIG_KEYS = {"multiagent", "callbacks_class", "env_config", "model", "optimizer", "replay_buffer_config",
                        "model_config"}
# Keys that the RLlib CLI accepted and Ray 2.60 renamed (rllib-notes.md).
RENAMED_CONFIG_KEYS = {
    "num_sgd_iter": "num_epochs",
    "sgd_minibatch_size": "minibatch_size",
    "num_rollout_workers": "num_env_runners",
    "num_workers": "num_env_runners",
    "num_envs_per_worker": "num_envs_per_env_runner",
}
# marlx's own config sections, consumed here.
MARLX_CONFIG_KEYS = {"optim"}
STOP_ALIASES = {
    "episode_reward_mean": "env_runners/episode_return_mean",
    "episode_return_mean": "env_runners/episode_return_mean",
    "success_rate": "env_runners/success_rate",
    "timesteps_total": "num_env_steps_sampled_lifetime",
    "env_steps": "num_env_steps_sampled_lifetime",
}


@dataclass
class Experiment:
    """One experiment of a file, resolved."""

    name: str
    algo_name: str
    algo_class: type
    env: str | None
    config: Any  # AlgorithmConfig
    #: param-space path (tuple) -> Tune domain, e.g. ("env_config", "size") -> {"grid_search": [4, 5]}
    search_space: dict = field(default_factory=dict)
    #: param-space path -> the YAML path (``env_config.size``, ``optim.sam.rho``) and its YAML form, for tables
    space_paths: dict = field(default_factory=dict)
    #: YAML path -> the space as written in the file (stored with a search, compared on resume)
    space_yaml: dict = field(default_factory=dict)
    stop: dict = field(default_factory=dict)
    checkpoint_config: dict = field(default_factory=dict)
    storage_path: str = ""
    num_samples: int = 1
    notices: list[str] = field(default_factory=list)
    tune: Any = None  # search_space.TuneSettings

    def param_space(self) -> dict:
        """The config as Tune's param space, with the search-space domains at their (nested) paths."""
        from marlx.cli.search_space import set_path

        space = self.config.to_dict()
        for path, domain in self.search_space.items():
            set_path(space, path, domain)
        return space

    @property
    def is_search(self) -> bool:
        """A search (a results table, a best trial) rather than one training run."""
        return bool(self.search_space) or self.tune is not None


def load_experiment_file(path: str) -> dict:
    if not os.path.exists(path):
        raise MarlxError(f"experiment file {path!r} does not exist")
    with open(path) as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise MarlxError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict) or not data:
        raise MarlxError(f"{path} must map experiment names to {{run, env, stop, config}} blocks")
    return data


def _import_path(name: str):
    module, _, attr = name.partition(":") if ":" in name else name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        return None


def rllib_algorithm_names() -> list[str]:
    from ray.rllib.algorithms.registry import ALGORITHMS as RLLIB_ALGORITHMS

    return sorted(RLLIB_ALGORITHMS)


def resolve_algorithm(name: str) -> type:
    """``run:`` value -> Algorithm class: marlx names, RLlib built-in names, import paths."""
    from marlx.algorithms import algorithm_names, get_algorithm_class

    if not isinstance(name, str) or not name:
        raise MarlxError("experiment key 'run' must name an algorithm, e.g. run: QMIX")
    if name in algorithm_names():
        return get_algorithm_class(name)
    if name in rllib_algorithm_names():
        from ray.tune.registry import get_trainable_cls

        return get_trainable_cls(name)
    if "." in name or ":" in name:
        cls = _import_path(name)
        if cls is None:
            raise MarlxError(f"cannot import algorithm {name!r}; use 'package.module:Class'")
        from ray.rllib.algorithms.algorithm import Algorithm

        if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
            raise MarlxError(f"run: {name!r} is not an RLlib Algorithm class")
        return cls
    raise UnknownNameError(
        "algorithm", name, algorithm_names() + rllib_algorithm_names(),
        hint="an import path 'package.module:Class' works too",
    )


def resolve_env(name: str, team: bool = False) -> str:
    """``env:`` value -> the name RLlib gets. marlx registry names and gymnasium ids pass; ``module:attr`` is a
    gymnasium id registered by ``module`` (made by marlx's multi-agent adapter) or a TeamEnv class or factory,
    registered on the fly. ``team``: the algorithm needs a team env (then nothing else is accepted)."""
    from marlx.envs.registry import env_names, get_spec, import_path_spec, is_registered, register_env

    if not isinstance(name, str) or not name:
        raise MarlxError("experiment key 'env' must name an environment, e.g. env: builtin/push_box")
    if not is_registered(name) and ":" in name:
        spec = import_path_spec(name, strict=team)
        if spec is not None:
            register_env(spec, overwrite=True)
    if is_registered(name):
        spec = get_spec(name)
        missing = spec.missing()
        if missing:
            from marlx.errors import MissingDependencyError

            raise MissingDependencyError(f"env {name!r}", missing[0], spec.install)
        return name
    import gymnasium as gym

    if name in gym.envs.registry:  # a team algorithm refuses it with its own message
        return name
    if not team and ":" in name and _import_path(name) is not None:  # an env class by import path
        return name
    hint = "`marlx envs` lists them; 'module:GymId' or 'module:TeamEnvClass' works too"
    if not team:
        hint += "; gymnasium ids (e.g. CartPole-v1) too"
    raise UnknownNameError("env", name, env_names(), hint=hint)


def is_team_algorithm(cls: type) -> bool:
    return bool(getattr(cls, "marlx_team_algorithm", False))


def build_config(algo_class: type, env: str | None, config: dict, where: str = "config", check_env: bool = True,
                 imports: list | tuple = ()):
    """A validated AlgorithmConfig for ``algo_class`` from a classic config dict without search spaces
    (:func:`build_search` resolves those). ``check_env`` builds the env once to check its options. ``imports``:
    modules imported for this experiment; a marlx env's config carries them so that remote env runners import them.

    Returns ``(config, notices)``.
    """
    from marlx._rllib import translate_config_key
    from marlx.callbacks import TeamMetricsCallback
    from marlx.cli.tune_metrics import TuneMetricsCallback
    from marlx.envs.registry import IMPORTS_KEY, VIEW_KEY, VIEWS, is_registered
    from marlx.optim.rllib_hooks import apply_optim

    if not isinstance(config, dict):
        raise MarlxError(f"{where} must be a mapping of config keys, got {type(config).__name__}")
    config = copy.deepcopy(config)
    algo_config = algo_class.get_default_config()
    notices: list[str] = []
    fixed, marlx_sections = {}, {}
    for key, value in config.items():
        if key in RENAMED_CONFIG_KEYS:
            new = RENAMED_CONFIG_KEYS[key]
            notices.append(f"{where}.{key} is called {new} in Ray 2.60; using {new}")
            key = new
        if key in MARLX_CONFIG_KEYS:
            marlx_sections[key] = value
            continue
        translated = translate_config_key(algo_config, key)  # the same key translation update_from_dict applies
        if not (hasattr(algo_config, translated) or translated in _SPECIAL_CONFIG_KEYS):
            valid = [k for k in vars(algo_config) if not k.startswith("_")] + sorted(MARLX_CONFIG_KEYS)
            raise ConfigKeyError(key, f"{where} (of {algo_class.__name__})", valid)
        if translated not in _SPECIAL_CONFIG_KEYS and key != "env":
            value = check_value_type(getattr(algo_config, translated, None), value, f"{where}.{key}", notices,
                                     declared=declared_types(type(algo_config)).get(translated))
        fixed[key] = value
    env = fixed.pop("env", env)
    model_config = fixed.pop("model_config", None)  # a read-only property: set through rl_module()
    if "env_config" in fixed and not isinstance(fixed["env_config"], dict):
        raise MarlxError(f"{where}.env_config must be a mapping of env options")
    algo_config.update_from_dict(fixed)
    if model_config is not None:
        if not isinstance(model_config, dict):
            raise MarlxError(f"{where}.model_config must be a mapping")
        algo_config.rl_module(model_config=model_config)
    if env is not None:
        env = resolve_env(env, team=is_team_algorithm(algo_class))
    if is_team_algorithm(algo_class) and (env is None or not is_registered(env)):
        from marlx.envs.registry import env_names

        raise MarlxError(
            f"{algo_class.__name__} trains on marlx team envs; env {env!r} is not one. "
            f"Use a registered name (`marlx envs`), e.g. {', '.join(env_names()[:3])}"
        )
    if env is not None:
        env_config = dict(algo_config.env_config or {})
        view = env_config.get(VIEW_KEY, "team")
        if view not in VIEWS or (is_team_algorithm(algo_class) and view != "team"):
            raise MarlxError(f"{where}.env_config.{VIEW_KEY} must be one of {VIEWS} ('team' for {algo_class.__name__}), got {view!r}")
        if is_registered(env) and not is_team_algorithm(algo_class):
            # A per-agent RLlib algorithm on a marlx team env: its MultiAgentEnv view, one shared policy.
            env_config.setdefault(VIEW_KEY, "multi_agent")
            if env_config[VIEW_KEY] == "multi_agent" and not algo_config.is_multi_agent:
                algo_config.multi_agent(policies={"shared"}, policy_mapping_fn=_shared_policy)
        if imports and is_registered(env):
            env_config[IMPORTS_KEY] = list(imports)
        algo_config.environment(env, env_config=env_config)
        if check_env:
            _check_env_config(env, env_config)
    existing = _callback_classes(algo_config)
    missing = [cb for cb in (TeamMetricsCallback, TuneMetricsCallback) if cb not in existing]
    if missing:
        algo_config.callbacks(callbacks_class=existing + missing)
    if "optim" in marlx_sections:
        if not isinstance(marlx_sections["optim"], dict):
            raise MarlxError(f"{where}.optim must map technique names to their options, e.g. optim: {{sam: {{rho: 0.05}}}}")
        apply_optim(algo_config, marlx_sections["optim"])
    try:  # the algorithm's own checks, here in the driver rather than inside a Ray actor
        algo_config.validate()
    except (ValueError, TypeError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__  # RLlib adds a how-to-suppress line
        raise MarlxError(f"{where} (of {algo_class.__name__}) is invalid: {first}") from None
    return algo_config, notices


#: Strings that RLlib accepts in place of a number (``rollout_fragment_length: auto``, ``evaluation_duration: auto``).
NUMBER_KEYWORDS = ("auto",)


def _describe(value) -> str:
    kind = {str: "the string", bool: "the boolean", int: "the integer", float: "the number", list: "the list",
            dict: "the mapping"}.get(type(value), f"a {type(value).__name__}")
    return f"{kind} {value!r}"


#: Type names of annotations (``self.x: int | str = 1``) that :func:`check_value_type` understands.
_DECLARED = {"int": "number", "float": "number", "str": "str", "bool": "bool", "dict": "dict", "Dict": "dict",
             "list": "list", "List": "list", "tuple": "list", "Tuple": "list", "None": "none"}
_IGNORED_NAMES = {"Optional", "Union"}


@functools.lru_cache(maxsize=None)
def declared_types(config_class: type) -> dict:
    """Attribute -> annotation text of ``self.attr: T = ...`` in the ``__init__`` of ``config_class`` and its bases
    (the most derived wins); Python keeps no such annotations at run time, so they are read from the source."""
    import ast
    import inspect
    import textwrap

    out: dict = {}
    for klass in config_class.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(init)))
        except (OSError, TypeError, SyntaxError):
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Attribute)
                    and isinstance(node.target.value, ast.Name) and node.target.value.id == "self"):
                out.setdefault(node.target.attr, ast.unparse(node.annotation))
    return out


def _declared_kinds(declared: str | None) -> set | None:
    """``"int | str"`` -> ``{"number", "str"}``; None when absent or naming a type beyond the simple ones."""
    if not declared:
        return None
    import re

    names = set(re.findall(r"[A-Za-z_][A-Za-z_0-9.]*", declared)) - _IGNORED_NAMES
    if not names or any(n not in _DECLARED for n in names):
        return None
    return {_DECLARED[n] for n in names}


_KIND_WORDS = {"number": "a number", "str": "a string", "bool": "true or false", "dict": "a mapping", "list": "a list",
               "none": "null"}


def _value_kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "str"
    if isinstance(value, dict):
        return "dict"
    if isinstance(value, (list, tuple)):
        return "list"
    return type(value).__name__


def check_value_type(default, value, where: str, notices: list | None = None, declared: str | None = None):
    """``value`` checked against the type of the config attribute's ``default`` (generic: any config class);
    returns the value to use. A wrong type is one MarlxError line naming the key, the expected type and the value.

    Rules: None is always accepted (RLlib's "unset"); a default of None or of another type (a class, a space)
    accepts anything. A bool default takes a bool; a number default takes an int or float, one of
    :data:`NUMBER_KEYWORDS`, a float default also a schedule ``[[t, value], ...]``, and a number written as a string
    (YAML reads ``1e-3`` as one) is converted with a notice; a str default takes a str; a dict a mapping; a list
    or tuple a list; a default of ``"auto"`` also takes a number. ``declared``: the attribute's annotation in the
    config class (``int | str``, see :func:`declared_types`); when it names only simple types it decides instead.
    """
    if value is None:
        return value
    kinds = _declared_kinds(declared)
    if kinds is not None:
        if _value_kind(value) in kinds or (isinstance(value, str) and value in NUMBER_KEYWORDS and "number" in kinds):
            return value
        if "str" not in kinds and "number" in kinds and isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
            if number is not None:
                if notices is not None:
                    notices.append(f"{where}: the string {value!r} is read as the number {number!r}")
                return int(number) if number.is_integer() and "float" not in declared else number
        words = dict(_KIND_WORDS, number="an integer" if "float" not in declared else "a number")
        expected = " or ".join(words[k] for k in sorted(kinds - {"none"}, key=list(_KIND_WORDS).index))
        raise MarlxError(f"{where} must be {expected} (its default is {default!r}), got {_describe(value)}")
    if default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        expected = "true or false"
    elif isinstance(default, (int, float)):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value in NUMBER_KEYWORDS:
            return value
        if isinstance(default, float) and isinstance(value, list) and value and all(
                isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
            return value  # a schedule [[timestep, value], ...]
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
            if number is not None and not (isinstance(default, int) and not number.is_integer()):
                number = int(number) if isinstance(default, int) and not isinstance(default, bool) else number
                if notices is not None:
                    notices.append(f"{where}: the string {value!r} is read as the number {number!r}")
                return number
        expected = "an integer" if isinstance(default, int) else "a number"
        if isinstance(default, float):
            expected += " (or a schedule [[timestep, value], ...])"
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
        if default in NUMBER_KEYWORDS and isinstance(value, (int, float)) and not isinstance(value, bool):
            return value  # "auto" or a number, e.g. num_cpus_per_learner
        expected = "a string"
    elif isinstance(default, dict):
        if isinstance(value, dict):
            return value
        expected = "a mapping"
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return value
        expected = "a list"
    else:
        return value
    raise MarlxError(f"{where} must be {expected} (its default is {default!r}), got {_describe(value)}")


#: marlx sections consumed by build_config -> where they land in the RLlib config dict (Tune's param space).
MARLX_SECTION_PATHS = {"optim": ("learner_config_dict", "optim")}
#: Config keys whose values are whole sections: a search space goes on one of their options.
_SECTION_KEYS = {"env_config", "optim", "learner_config_dict"}


def param_path(algo_class: type, path: tuple, where: str) -> tuple:
    """A YAML config path (``("optim", "sam", "rho")``) under ``where`` -> its path in ``AlgorithmConfig.to_dict()``;
    unknown keys raise a ConfigKeyError with close matches."""
    from marlx._rllib import translate_config_key

    key = RENAMED_CONFIG_KEYS.get(path[0], path[0])
    here = f"{where}.{'.'.join(map(str, path))}"
    if key == "env":
        raise MarlxError(f"{here}: env cannot be searched; write one experiment per env")
    if len(path) == 1 and key in _SECTION_KEYS:
        raise MarlxError(f"{here}: search one option of {key}, e.g. {key}: {{size: {{grid_search: [4, 5]}}}}, "
                         f"not the whole section")
    if key in MARLX_SECTION_PATHS:
        return MARLX_SECTION_PATHS[key] + tuple(path[1:])
    if key in MARLX_CONFIG_KEYS:
        raise MarlxError(f"{here}: search spaces inside {key}: are not supported; fix its values")
    if key == "model_config":  # a read-only property; the dict lives in _model_config
        return ("_model_config",) + tuple(path[1:])
    default = algo_class.get_default_config()
    translated = translate_config_key(default, key)
    if not (hasattr(default, translated) or translated in _SPECIAL_CONFIG_KEYS):
        valid = [k for k in vars(default) if not k.startswith("_")] + sorted(MARLX_CONFIG_KEYS)
        raise ConfigKeyError(key, f"{where} (of {algo_class.__name__})", valid)
    _check_nested_path(algo_class, path, where)
    return (translated,) + tuple(path[1:])


def _check_nested_path(algo_class: type, path: tuple, where: str) -> None:
    """A nested path under a fixed-shape RLlib dict (e.g. replay_buffer_config.capacity) must exist in it."""
    if len(path) < 2 or path[0] in _SECTION_KEYS or path[0] in MARLX_CONFIG_KEYS:
        return  # env options are checked by building the env, optim options by the technique
    from marlx._rllib import translate_config_key

    default = algo_class.get_default_config()
    node = default.to_dict().get(translate_config_key(default, RENAMED_CONFIG_KEYS.get(path[0], path[0])))
    for depth, key in enumerate(path[1:], start=1):
        if not isinstance(node, dict) or not node:
            return  # a free-form dict (or a value RLlib accepts in its place)
        if key not in node:
            raise ConfigKeyError(key, f"{where}.{'.'.join(map(str, path[:depth]))}", list(node))
        node = node[key]


def build_search(algo_class: type, env: str | None, config: dict, where: str, env_checks: int = 8,
                 imports: list | tuple = ()):
    """A config with search spaces -> ``(config, search_space, space_paths, space_yaml, notices)``.

    Every path is checked, then Tune's variant generator samples the space once (each grid point, random domains
    drawn once) and every variant goes through :func:`build_config` (the algorithm's own ``validate()``), so a bad
    combination fails here as one line. The env is built for the first ``env_checks`` distinct env configs.
    """
    from marlx.cli.search_space import convert, describe, dotted, get_path, variants

    notices: list[str] = []
    space, spaces = convert(config, where, notices)
    if not spaces:
        algo_config, more = build_config(algo_class, env, config, where=where, imports=imports)
        return algo_config, {}, {}, {}, notices + more
    search_space, space_paths, space_yaml = {}, {}, {}
    for path, domain in spaces.items():
        target = param_path(algo_class, path, where)
        search_space[target] = domain
        space_paths[target] = dotted(path)
        space_yaml[dotted(path)] = get_path(config, path)
    first, checked_envs = None, []
    for resolved, variant in variants(space, where):
        env_config = variant.get("env_config")
        check_env = env_config not in checked_envs and len(checked_envs) < env_checks
        if check_env:
            checked_envs.append(env_config)
        try:
            algo_config, more = build_config(algo_class, env, variant, where=where, check_env=check_env, imports=imports)
        except ConfigKeyError:
            raise  # a misspelt key: the same in every variant
        except MarlxError as e:
            raise MarlxError(f"{e} (search variant {describe(resolved)})") from None
        if first is None:
            first = (algo_config, more)
    algo_config, more = first
    return algo_config, search_space, space_paths, space_yaml, notices + more


def _shared_policy(agent_id, *args, **kwargs):
    return "shared"


def _callback_classes(algo_config) -> list:
    cb = algo_config.callbacks_class
    if cb is None:
        return []
    if isinstance(cb, (list, tuple)):
        return list(cb)
    from ray.rllib.callbacks.callbacks import RLlibCallback

    return [] if cb is RLlibCallback else [cb]


def _check_env_config(env: str, env_config: dict) -> None:
    """Create the env once in the driver so that a bad env_config key fails here, clearly."""
    from marlx.envs.registry import MARLX_ENV_KEYS, is_registered, make_env

    if is_registered(env):
        try:
            make_env(env, **{k: v for k, v in env_config.items() if k not in MARLX_ENV_KEYS}).close()
        except MarlxError:
            raise
        except (ValueError, TypeError) as e:
            raise MarlxError(f"env_config of {env!r} is invalid: {e}") from None


#: Stop keys known without a "/" path (Tune's and RLlib's top-level result keys).
STOP_KEYS = {"training_iteration", "time_total_s", "num_env_steps_sampled_lifetime", "num_env_steps_trained_lifetime",
             "num_episodes_lifetime", "timesteps_total"}
CHECKPOINT_KEYS = {"checkpoint_frequency": "every N iterations", "checkpoint_at_end": "true/false",
                   "num_to_keep": "keep the newest K"}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def check_stop(stop: dict, where: str) -> dict:
    """Stop criteria with aliases resolved; a typo would make Tune run forever, so unknown keys fail here."""
    out = {}
    for key, value in _flatten(stop).items():
        key = STOP_ALIASES.get(key, key)
        if "/" not in key and key not in STOP_KEYS:
            raise ConfigKeyError(key, f"{where}: stop", sorted(STOP_KEYS | set(STOP_ALIASES)))
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MarlxError(f"{where}: stop value of {key!r} must be a number, got {value!r}")
        out[key] = value
    return out


def check_checkpoint_config(ckpt: dict, where: str) -> dict:
    if "checkpoint_freq" in ckpt:  # the classic name
        ckpt["checkpoint_frequency"] = ckpt.pop("checkpoint_freq")
    for key, value in ckpt.items():
        if key not in CHECKPOINT_KEYS:
            raise ConfigKeyError(key, f"{where}: checkpoint_config", CHECKPOINT_KEYS)
        if key != "checkpoint_at_end" and value is not None and (not isinstance(value, int) or value < 1):
            raise MarlxError(f"{where}: checkpoint_config.{key} must be a positive integer, got {value!r}")
    return ckpt


def apply_overrides(data: dict, stop: dict | None = None, config: dict | None = None,
                    checkpoint_freq: int | None = None) -> dict:
    """Command-line overrides for every experiment of a loaded file (``--stop``, ``--config``, ``--checkpoint-freq``).

    ``stop`` replaces each experiment's stop criteria, ``config`` entries override the file's config entries (top-level
    keys), ``checkpoint_freq`` sets ``checkpoint_config.checkpoint_frequency``. ``data`` is changed in place and returned.
    """
    for block in data.values():
        if not isinstance(block, dict):
            continue  # parse_experiments reports it
        if stop:
            block["stop"] = dict(stop)
        if config:
            base = block.get("config")
            block["config"] = {**(base if isinstance(base, dict) else {}), **config}
        if checkpoint_freq:
            base = block.get("checkpoint_config")
            block["checkpoint_config"] = {**(base if isinstance(base, dict) else {}), "checkpoint_frequency": checkpoint_freq}
    return data


def seed_grid(seeds: Any, where: str) -> dict:
    """``seeds: [0, 1, 2]`` -> Tune's ``{"grid_search": [0, 1, 2]}`` over ``seed`` (``marlx report`` groups them)."""
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                            for s in seeds):
        raise MarlxError(f"{where}: seeds must be a non-empty list of integers, e.g. seeds: [0, 1, 2]; got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise MarlxError(f"{where}: seeds {seeds} repeat a seed; list each once")
    return {"grid_search": list(seeds)}


def _tune_settings(block: dict, algo_class: type, env, search: dict, ckpt: dict, num_samples: int, where: str):
    from marlx.cli.search_space import parse_tune_block
    from marlx.envs.registry import is_registered

    tune_block = block.get("tune")
    if isinstance(tune_block, dict) and "num_samples" in tune_block and "num_samples" in block:
        raise MarlxError(f"{where}: num_samples is given twice (top level and tune:); keep tune.num_samples")
    if isinstance(tune_block, dict) and "num_samples" not in tune_block and "num_samples" in block:
        tune_block = {**tune_block, "num_samples": num_samples}
    elif tune_block is None and num_samples != 1:
        tune_block = {"num_samples": num_samples}
    kinds = [next(iter(d)) if isinstance(d, dict) else "domain" for d in search.values()]
    return parse_tune_block(
        tune_block, where,
        default_metric="success_rate" if env is not None and is_registered(env) else "return",
        checkpoint_config={"checkpoint_frequency": 10, **ckpt},
        map_path=lambda path, w: param_path(algo_class, tuple(path), w),
        has_grid="grid_search" in kinds, has_eval="eval" in kinds,
    )


def apply_tune_overrides(data: dict, always: bool = False, **overrides) -> dict:
    """Command-line ``tune:`` settings (``num_samples``, ``metric``, ``mode``, ``scheduler``, ``max_concurrent_trials``)
    for every experiment of a loaded file: each given value replaces the file's; ``data`` changes in place.
    ``scheduler`` may come with ``scheduler_config`` (a dict of its options, the classic ``--scheduler-config``).
    ``always`` gives every experiment a ``tune:`` block (it is then run as a search, with a results table)."""
    scheduler_config = overrides.pop("scheduler_config", None) or {}
    given = {k: v for k, v in overrides.items() if v is not None}
    if scheduler_config and "scheduler" not in given:
        raise MarlxError("--scheduler-config needs --scheduler NAME")
    if "scheduler" in given:
        given["scheduler"] = {"type": given["scheduler"], **scheduler_config} if scheduler_config else given["scheduler"]
    if not given and not always:
        return data
    for block in data.values():
        if isinstance(block, dict):
            base = dict(block.get("tune") or {}) if isinstance(block.get("tune"), dict) else {}
            old = base.get("scheduler")
            block["tune"] = {**base, **given}
            if isinstance(given.get("scheduler"), str) and isinstance(old, dict) and old.get("type") == given["scheduler"]:
                block["tune"]["scheduler"] = old  # the same scheduler: the file's options stay
            if "num_samples" in given:
                block.pop("num_samples", None)
    return data


def parse_experiments(data: dict, source: str = "experiment file", storage_path: str | None = None) -> list[Experiment]:
    """Resolve every experiment of a loaded file; raises MarlxError on the first problem.

    A file-level ``imports: [module, ...]`` and an experiment's own ``imports:`` are imported before its names are
    resolved, so that ``register_env`` calls in the user's package take effect."""
    from marlx.envs.registry import import_modules

    data = dict(data)
    file_imports = import_modules(data.pop(FILE_IMPORTS_KEY), f"{source}: imports") if FILE_IMPORTS_KEY in data else []
    experiments = []
    for name, block in data.items():
        where = f"{source}: {name}"
        if not isinstance(block, dict):
            raise MarlxError(f"{where} must be a mapping with run/env/stop/config")
        for key in block:
            if key not in EXPERIMENT_KEYS:
                raise ConfigKeyError(key, f"experiment {name!r}", EXPERIMENT_KEYS)
        if "run" not in block:
            raise MarlxError(f"{where} has no 'run' key; add e.g. run: QMIX")
        for key, kind in (("config", dict), ("stop", dict), ("checkpoint_config", dict)):
            if block.get(key) is not None and not isinstance(block[key], kind):
                raise MarlxError(f"{where}: '{key}' must be a mapping, got {type(block[key]).__name__}")
        imports = file_imports + (import_modules(block["imports"], f"{where}: imports") if "imports" in block else [])
        algo_class = resolve_algorithm(block["run"])
        config_dict = dict(block.get("config") or {})
        env = block.get("env", config_dict.get("env"))
        config_dict.pop("env", None)
        seed_notes = []
        if "seeds" in block:  # a grid over config.seed like any other search space
            if "seed" in config_dict:
                seed_notes.append(f"{where}: seeds {block['seeds']} replace config.seed {config_dict['seed']}")
            config_dict["seed"] = seed_grid(block["seeds"], where)
        config, search, space_paths, space_yaml, notices = build_search(algo_class, env, config_dict,
                                                                         where=f"{name}.config", imports=imports)
        notices += seed_notes
        stop = dict(block.get("stop") or {})
        if "stop_reward" in block:
            stop["env_runners/episode_return_mean"] = block["stop_reward"]
        stop = check_stop(stop, where)
        ckpt = check_checkpoint_config(dict(block.get("checkpoint_config") or {}), where)
        try:
            num_samples = int(block.get("num_samples", 1))
        except (TypeError, ValueError):
            raise MarlxError(f"{where}: num_samples must be an integer, got {block['num_samples']!r}") from None
        tune = None
        if "tune" in block or search:
            tune = _tune_settings(block, algo_class, env, search, ckpt, num_samples, where)
            num_samples = tune.num_samples
        storage = storage_path or block.get("storage_path") or block.get("local_dir") or "runs"
        experiments.append(
            Experiment(
                name=name,
                algo_name=block["run"],
                algo_class=algo_class,
                env=env,
                config=config,
                search_space=search,
                space_paths=space_paths,
                space_yaml=space_yaml,
                tune=tune,
                stop=stop,
                checkpoint_config=ckpt,
                storage_path=os.path.abspath(os.path.expanduser(storage)),
                num_samples=num_samples,
                notices=notices,
            )
        )
    return experiments
