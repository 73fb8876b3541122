"""Ray Tune search spaces written in YAML, anywhere under an experiment's ``config``.

A single-key mapping whose key is one of :data:`SPACE_FORMS` is a search space::

    lr: {loguniform: [1.0e-4, 3.0e-3]}
    td_lambda: {grid_search: [0.0, 0.6]}
    env_config: {size: 4, box_start_row: {grid_search: [1, 2]}}    # nested works
    seed: {grid_search: [0, 1, 2]}
    hidden: {literal: {choice: [1, 2]}}                           # a real dict that looks like a space

Each form becomes the ``ray.tune`` domain of the same name (``grid_search`` and Tune's own ``eval`` stay in Tune's
dict form). Bounds are checked here, before Ray starts, so a bad space is one line, not a Tune traceback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

from marlx.errors import MarlxError, UnknownNameError

#: form -> (number of arguments or None for a list of options, argument kind, meaning)
SPACE_FORMS = {
    "grid_search": (None, "any", "every value, one trial each (repeated num_samples times)"),
    "choice": (None, "any", "one value drawn per trial"),
    "uniform": (2, "float", "[lo, hi]"),
    "quniform": (3, "float", "[lo, hi, q]: uniform rounded to a multiple of q"),
    "loguniform": (2, "float", "[lo, hi], lo > 0"),
    "qloguniform": (3, "float", "[lo, hi, q], lo > 0"),
    "randint": (2, "int", "[lo, hi): an integer"),
    "qrandint": (3, "int", "[lo, hi, q]: an integer multiple of q, hi included"),
    "lograndint": (2, "int", "[lo, hi), lo >= 1: log-uniform integer"),
    "randn": (2, "float", "[mean, sd], sd > 0: normal"),
    "eval": (None, "str", "a Python expression with random, np and spec in scope (Tune's form)"),
}
#: Keys that look like a space but are marlx's own: ``literal`` escapes a value, ``grid`` is an old alias.
ESCAPE_KEY, OLD_GRID_KEY = "literal", "grid"


class Literal:
    """A value Tune must not interpret (a dict such as ``{grid_search: ...}`` given under ``literal:``)."""

    def __init__(self, value: Any):
        self.value = value

    def __call__(self, spec=None) -> Any:
        return self.value


def is_space(value: Any) -> bool:
    """Whether ``value`` is a YAML search space (or an escape) rather than a plain value."""
    from ray.tune.search.sample import Domain

    if isinstance(value, Domain):
        return True
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in (*SPACE_FORMS, ESCAPE_KEY, OLD_GRID_KEY)


def _numbers(form: str, args: Any, where: str) -> list:
    n, kind, meaning = SPACE_FORMS[form]
    example = "[1.0e-4, 1.0e-2]" if kind == "float" else "[1, 10]"
    if not isinstance(args, (list, tuple)) or len(args) != n:
        raise MarlxError(f"{where}: {form} takes {meaning}, e.g. {{{form}: {example if n == 2 else '[0, 10, 2]'}}}; got {args!r}")
    for a in args:
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a):
            raise MarlxError(f"{where}: {form} bounds must be finite numbers, got {args!r}")
        if kind == "int" and not float(a).is_integer():
            raise MarlxError(f"{where}: {form} takes integers, got {args!r}; use uniform for real numbers")
    return [int(a) for a in args] if kind == "int" else [float(a) for a in args]


def to_domain(value: dict, where: str, notices: list[str] | None = None):
    """A YAML search space -> what Tune's ``param_space`` takes (a Domain, ``{grid_search: ..}`` or ``{eval: ..}``)."""
    from ray import tune
    from ray.tune.search.sample import Domain

    if isinstance(value, Domain):
        return value
    (form, args), = value.items()
    if form == ESCAPE_KEY:
        tune_form = isinstance(args, dict) and len(args) == 1 and next(iter(args)) in ("grid_search", "eval")
        return tune.sample_from(Literal(args)) if tune_form or isinstance(args, Domain) else args
    if form == OLD_GRID_KEY:
        if notices is not None:
            notices.append(f"{where}: 'grid' is an old name; write grid_search (used as grid_search)")
        form = "grid_search"
    if form in ("grid_search", "choice"):
        if not isinstance(args, (list, tuple)) or not args:
            raise MarlxError(f"{where}: {form} takes a non-empty list of values, e.g. {{{form}: [0.0, 0.6]}}; got {args!r}")
        return {"grid_search": list(args)} if form == "grid_search" else tune.choice(list(args))
    if form == "eval":
        if not isinstance(args, str) or not args.strip():
            raise MarlxError(f"{where}: eval takes a Python expression string, e.g. {{eval: \"10 ** np.random.uniform(-5, -3)\"}}")
        try:
            compile(args, where, "eval")
        except SyntaxError as e:
            raise MarlxError(f"{where}: eval expression {args!r} is not valid Python: {e.msg}") from None
        return {"eval": args}
    nums = _numbers(form, args, where)
    lo, hi = nums[0], nums[1]
    if form == "randn":
        if hi <= 0:
            raise MarlxError(f"{where}: randn takes [mean, sd] with sd > 0, got {args!r}")
        return tune.randn(lo, hi)
    if not lo < hi:
        raise MarlxError(f"{where}: {form} needs lo < hi, got {args!r}")
    if form in ("loguniform", "qloguniform") and lo <= 0:
        raise MarlxError(f"{where}: {form} needs lo > 0 (it samples log(x)), got {args!r}; use uniform for ranges with 0")
    if form == "lograndint" and lo < 1:
        raise MarlxError(f"{where}: lograndint needs lo >= 1, got {args!r}")
    if len(nums) == 3 and nums[2] <= 0:
        raise MarlxError(f"{where}: {form} needs q > 0, got {args!r}")
    try:
        return getattr(tune, form)(*nums)
    except (ValueError, AssertionError) as e:  # e.g. quniform bounds that are no multiples of q
        raise MarlxError(f"{where}: {form} {args!r} is invalid: {str(e).splitlines()[0]}") from None


def find_spaces(config: Any, where: str, path: tuple = ()) -> Iterator[tuple[tuple, dict]]:
    """Every ``(path, yaml_space)`` under ``config`` (dicts are entered; lists and escapes are not)."""
    if not isinstance(config, dict):
        return
    for key, value in config.items():
        if is_space(value):
            yield path + (key,), value
        elif isinstance(value, dict):
            yield from find_spaces(value, where, path + (key,))


def dotted(path: tuple) -> str:
    return ".".join(map(str, path))


def get_path(d: dict, path: tuple, default: Any = None) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def set_path(d: dict, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        d = d.setdefault(key, {})
    d[path[-1]] = value


def convert(config: dict, where: str, notices: list[str]) -> tuple[dict, dict]:
    """``config`` with its YAML spaces converted to Tune's forms, and ``{path: converted space}``."""
    import copy

    out = copy.deepcopy(config)
    spaces = {}
    for path, value in list(find_spaces(config, where)):
        spaces[path] = to_domain(value, f"{where}.{dotted(path)}", notices)
        set_path(out, path, spaces[path])
    return out, spaces


def variants(space: dict, where: str, limit: int = 256) -> list[tuple[dict, dict]]:
    """Up to ``limit`` resolved variants of ``space`` (each grid point once, random domains drawn once):
    ``[(resolved_vars {path: value}, resolved config)]`` as Tune's variant generator makes them."""
    from ray.tune.search.variant_generator import generate_variants

    out = []
    try:
        for resolved_vars, spec in generate_variants(space):
            out.append(({tuple(k): v for k, v in resolved_vars.items()}, spec))
            if len(out) >= limit:
                break
    except (ValueError, TypeError, KeyError, AttributeError, NameError, ZeroDivisionError, RuntimeError) as e:
        raise MarlxError(f"{where}: the search space cannot be sampled: {str(e).splitlines()[0]}") from None
    return out


def describe(resolved_vars: dict) -> str:
    return ", ".join(f"{dotted(p)}={v!r}" for p, v in resolved_vars.items())


#: Search algorithms that need a package; the value is the pip command that installs it.
SEARCHER_PACKAGES = {
    "optuna": ("optuna", "pip install 'marlx[tune]'  (or: pip install optuna)"),
    "hyperopt": ("hyperopt", "pip install hyperopt"),
    "bayesopt": ("bayes_opt", "pip install bayesian-optimization"),
    "ax": ("ax", "pip install ax-platform"),
    "nevergrad": ("nevergrad", "pip install nevergrad"),
    "zoopt": ("zoopt", "pip install zoopt"),
    "hebo": ("hebo", "pip install HEBO"),
    "bohb": ("hpbandster", "pip install hpbandster ConfigSpace"),
}
RANDOM_SEARCHERS = ("random", "variant_generator")


def searcher_names() -> list[str]:
    return list(RANDOM_SEARCHERS) + sorted(SEARCHER_PACKAGES)


def check_searcher_name(name: str, where: str) -> None:
    import importlib.util

    from marlx.errors import MissingDependencyError

    if name in RANDOM_SEARCHERS:
        return
    if name not in SEARCHER_PACKAGES:
        raise UnknownNameError("search_alg", name, searcher_names(), hint=f"in {where}")
    module, install = SEARCHER_PACKAGES[name]
    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(f"{where}: search_alg {name!r}", module, install)


# -- the `tune:` block ------------------------------------------------------------------------------------------

#: marlx metric names -> result keys written on every iteration by :class:`marlx.cli.tune.TuneMetricsCallback`.
METRIC_ALIASES = {
    "success_rate": "marlx/success_rate",
    "return": "marlx/return",
    "eval_success_rate": "marlx/eval_success_rate",
    "train_success_rate": "marlx/train_success_rate",
}
#: ResultGrid scopes: which of a trial's results its metric is (``all`` = its best iteration).
SCOPES = ("last", "avg", "last-5-avg", "last-10-avg", "all")
TUNE_KEYS = {
    "metric": "what ranks trials: success_rate, eval_success_rate, return or a result path (default: success_rate "
              "on marlx envs, else return)",
    "mode": "max or min (default max)",
    "scope": f"which results of a trial count: {', '.join(SCOPES)} (default last)",
    "num_samples": "samples per grid point (default 1)",
    "max_concurrent_trials": "trials at once (default: as many as the CPUs allow)",
    "search_alg": "random (default) or {type: optuna, ...options}",
    "scheduler": "fifo (default), asha, pbt, pb2, median_stopping_rule, hyperband, or {type: asha, ...options}",
    "group_by_seed": "the table merges trials that differ only in seed: mean ± std (default true)",
    "time_budget_s": "stop the whole search after this many seconds",
}
SCHEDULER_ALIASES = {"asha": "async_hyperband", "median": "median_stopping_rule"}
PBT_SCHEDULERS = ("pbt", "pb2", "pbt_replay")


def scheduler_names() -> list[str]:
    from ray.tune.schedulers import SCHEDULER_IMPORT

    return sorted(set(SCHEDULER_IMPORT) | set(SCHEDULER_ALIASES))


def scheduler_class(name: str) -> type:
    import inspect

    from ray.tune.schedulers import SCHEDULER_IMPORT

    cls = SCHEDULER_IMPORT[SCHEDULER_ALIASES.get(name, name)]
    return cls() if inspect.isfunction(cls) else cls


def _named_block(value: Any, what: str, where: str) -> tuple[str | None, dict]:
    """``name`` or ``{type: name, ...options}`` -> ``(name, options)``."""
    if value is None:
        return None, {}
    if isinstance(value, str):
        return value.lower(), {}
    if isinstance(value, dict) and isinstance(value.get("type"), str):
        opts = {k: v for k, v in value.items() if k != "type"}
        return value["type"].lower(), opts
    raise MarlxError(f"{where}: tune.{what} must be a name or {{type: NAME, ...options}}, got {value!r}")



@dataclass
class TuneSettings:
    """An experiment's ``tune:`` block, checked; the scheduler and searcher are built per run by :meth:`build`."""

    metric: str  #: the result key (aliases resolved)
    metric_name: str  #: as the user wrote it
    mode: str = "max"
    scope: str = "last"
    num_samples: int = 1
    max_concurrent_trials: int | None = None
    search_alg: tuple[str | None, dict] = (None, {})
    scheduler: tuple[str | None, dict] = (None, {})
    group_by_seed: bool = True
    time_budget_s: float | None = None

    def build_scheduler(self):
        name, opts = self.scheduler
        if name in (None, "fifo"):
            return None
        return scheduler_class(name)(**opts)

    def build_searcher(self):
        name, opts = self.search_alg
        if name in (None, *RANDOM_SEARCHERS):
            return None
        from ray.tune.search import create_searcher

        return create_searcher(name, **opts)

    def to_json(self) -> dict:
        return {"metric": self.metric, "mode": self.mode, "scope": self.scope, "num_samples": self.num_samples,
                "search_alg": [self.search_alg[0], repr(self.search_alg[1])],
                "scheduler": [self.scheduler[0], repr(self.scheduler[1])]}


def resolve_metric(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name:
        raise MarlxError(f"{where}: tune.metric must be a name, e.g. metric: success_rate")
    if name in METRIC_ALIASES:
        return METRIC_ALIASES[name]
    if "/" in name or name in ("training_iteration", "time_total_s", "num_env_steps_sampled_lifetime"):
        return name
    raise UnknownNameError("metric", name, list(METRIC_ALIASES), hint="or a result path such as env_runners/episode_return_mean")


def _mutations(value: Any, where: str, map_path) -> dict:
    """PBT's hyperparam_mutations / PB2's hyperparam_bounds in YAML paths -> nested dict in param-space paths."""
    if not isinstance(value, dict) or not value:
        raise MarlxError(f"{where} must map config paths to a search space or a list, e.g. {{lr: {{loguniform: [1.0e-4, 1.0e-2]}}}}")
    out: dict = {}
    for key, spec in _flatten_paths(value):
        path = map_path(key, f"{where} path")
        if is_space(spec):
            spec = to_domain(spec, f"{where}.{dotted(key)}")
            if isinstance(spec, dict):
                spec = list(spec["grid_search"]) if "grid_search" in spec else None
            if spec is None:
                raise MarlxError(f"{where}.{dotted(key)}: eval cannot be a mutation; use a list or a distribution")
        elif not isinstance(spec, (list, tuple)) or not spec:
            raise MarlxError(f"{where}.{dotted(key)} must be a non-empty list or a search space, got {spec!r}")
        set_path(out, path, list(spec) if isinstance(spec, tuple) else spec)
    return out


def _flatten_paths(d: dict, prefix: tuple = ()):
    for k, v in d.items():
        if isinstance(v, dict) and not is_space(v):
            yield from _flatten_paths(v, prefix + tuple(str(k).split(".")))
        else:
            yield prefix + tuple(str(k).split(".")), v


def parse_tune_block(block: Any, where: str, default_metric: str, checkpoint_config: dict, map_path,
                     has_grid: bool, has_eval: bool) -> TuneSettings:
    """Check a ``tune:`` block. ``map_path(yaml_path, where)`` turns a config path into its param-space path."""
    from ray._common.utils import get_function_args

    from marlx.errors import ConfigKeyError

    if block is not None and not isinstance(block, dict):
        raise MarlxError(f"{where}: tune must be a mapping of {', '.join(TUNE_KEYS)}")
    block = dict(block or {})
    for key in block:
        if key not in TUNE_KEYS:
            raise ConfigKeyError(key, f"{where}: tune", TUNE_KEYS)
    metric_name = block.get("metric", default_metric)
    settings = TuneSettings(metric=resolve_metric(metric_name, where), metric_name=metric_name)
    settings.mode = block.get("mode", "max")
    if settings.mode not in ("max", "min"):
        raise MarlxError(f"{where}: tune.mode must be max or min, got {settings.mode!r}")
    settings.scope = block.get("scope", "last")
    if settings.scope not in SCOPES:
        raise MarlxError(f"{where}: tune.scope must be one of {', '.join(SCOPES)}, got {settings.scope!r}")
    for key in ("num_samples", "max_concurrent_trials"):
        if key in block and (isinstance(block[key], bool) or not isinstance(block[key], int) or block[key] < 1):
            raise MarlxError(f"{where}: tune.{key} must be a positive integer, got {block[key]!r}")
    settings.num_samples = block.get("num_samples", 1)
    settings.max_concurrent_trials = block.get("max_concurrent_trials")
    settings.group_by_seed = bool(block.get("group_by_seed", True))
    if block.get("time_budget_s") is not None:
        settings.time_budget_s = float(block["time_budget_s"])

    name, opts = _named_block(block.get("search_alg"), "search_alg", where)
    if name is not None:
        check_searcher_name(name, where)
        if name not in RANDOM_SEARCHERS and (has_grid or has_eval):
            raise MarlxError(f"{where}: search_alg {name!r} cannot sample grid_search or eval spaces; use choice "
                             "and distributions, or search_alg: random")
        if opts and name in RANDOM_SEARCHERS:
            raise MarlxError(f"{where}: search_alg {name!r} takes no options")
        if {"metric", "mode"} & set(opts):
            raise MarlxError(f"{where}: give metric and mode in tune:, not in tune.search_alg")
    settings.search_alg = (name, opts)

    name, opts = _named_block(block.get("scheduler"), "scheduler", where)
    if name is not None:
        if name not in scheduler_names():
            raise UnknownNameError("scheduler", name, scheduler_names(), hint=f"in {where}")
        cls = scheduler_class(name)
        if {"metric", "mode"} & set(opts):
            raise MarlxError(f"{where}: give metric and mode in tune:, not in tune.scheduler")
        valid = [a for a in get_function_args(cls) if a not in ("self", "metric", "mode")]
        for key in opts:
            if key not in valid:
                raise ConfigKeyError(key, f"{where}: tune.scheduler ({name})", valid)
        if name in PBT_SCHEDULERS:
            opts = _pbt_options(name, opts, where, checkpoint_config, map_path)
        try:  # the scheduler's own checks (asserts in Ray 2.60), here in the driver
            cls(**opts)
        except (AssertionError, ValueError, TypeError) as e:
            raise MarlxError(f"{where}: tune.scheduler {name} is invalid: {e or 'bad options'}") from None
    settings.scheduler = (name, opts)
    return settings


def _pbt_options(name: str, opts: dict, where: str, checkpoint_config: dict, map_path) -> dict:
    """PBT/PB2 exploit from checkpoints: they must exist at every perturbation (measured in iterations)."""
    opts = dict(opts)
    key = "hyperparam_bounds" if name == "pb2" else "hyperparam_mutations"
    if name != "pbt_replay":
        if key not in opts:
            raise MarlxError(f"{where}: tune.scheduler {name} needs {key}, e.g. {key}: {{lr: [1.0e-4, 1.0e-2]}}")
        if name == "pb2":
            bounds = {}
            for path, spec in _flatten_paths(opts[key]):
                if not (isinstance(spec, (list, tuple)) and len(spec) == 2 and spec[0] < spec[1]):
                    raise MarlxError(f"{where}: tune.scheduler.{key}.{dotted(path)} must be [lo, hi] with lo < hi")
                set_path(bounds, map_path(path, f"{where}: tune.scheduler.{key} path"), list(spec))
            opts[key] = bounds
        else:
            opts[key] = _mutations(opts[key], f"{where}: tune.scheduler.{key}", map_path)
    time_attr = opts.setdefault("time_attr", "training_iteration")
    if time_attr != "training_iteration":
        raise MarlxError(f"{where}: tune.scheduler {name} needs time_attr: training_iteration (checkpoints are taken "
                         f"every N iterations, so perturbations must be counted in iterations too), got {time_attr!r}")
    interval = opts.setdefault("perturbation_interval", 10)
    freq = checkpoint_config.get("checkpoint_frequency", 10)
    if not isinstance(interval, int) or interval < 1 or interval % freq:
        raise MarlxError(f"{where}: tune.scheduler {name}: perturbation_interval ({interval!r}) must be a multiple of "
                         f"checkpoint_config.checkpoint_frequency ({freq}) so that a checkpoint exists at each "
                         f"perturbation; e.g. set checkpoint_frequency: {interval if isinstance(interval, int) else 1}")
    return opts
