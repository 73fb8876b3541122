"""Run folders -> trials with their per-iteration results, grouped by experiment and seed.

A run folder is what ``marlx train`` / Ray Tune writes: ``<storage>/<experiment>/<trial>/`` with ``result.json``
(one JSON object per training iteration) and ``params.json`` (the trial's config). A folder without
``result.json`` but with TensorBoard event files is read from those (tags ``ray/tune/<key>``). Any folder above
trial folders works: every trial below it is found.

Trials of one experiment whose configs differ only in ``seed`` form one group (the seeds of a ``seeds: [...]``
experiment); trials that differ in other keys (a grid search) form one group per setting.
"""

from __future__ import annotations

import glob
import json
import math
import os
from dataclasses import dataclass, field

from marlx.errors import MarlxError

RESULT_FILE, PARAMS_FILE = "result.json", "params.json"
#: Short metric names -> result keys tried in order.
METRIC_ALIASES = {
    "return": "episode_return_mean",
    "episode_reward_mean": "episode_return_mean",
    "length": "episode_len_mean",
}
#: Short x-axis names -> result keys tried in order.
X_ALIASES = {
    "env_steps": ("num_env_steps_sampled_lifetime", "env_runners/num_env_steps_sampled_lifetime"),
    "iteration": ("training_iteration",),
    "time": ("time_total_s",),
}
ENV_STEPS_KEYS = X_ALIASES["env_steps"]
EVAL_EPISODES_KEY = "evaluation/env_runners/num_episodes_lifetime"


def evaluated_at(iteration, evaluation_interval) -> bool | None:
    """Whether RLlib evaluated in ``training_iteration`` ``iteration``, by its own rule (``Algorithm.step``:
    ``evaluation_interval and iteration % evaluation_interval == 0``); None when the interval is unknown.

    Not from the result's ``evaluation/env_runners/num_episodes_lifetime``: Ray 2.60 reports the latest merged
    value there in an evaluation iteration (the episodes of that evaluation, e.g. 4, 4, 4) and the accumulated
    total in the iterations between evaluations, where the last evaluation's results are repeated
    (``tests/results/test_evaluation_rows.py`` shows it on a real run). A count that must grow therefore finds
    one evaluation with ``evaluation_interval: 1`` and lags one iteration behind otherwise.
    """
    if not isinstance(evaluation_interval, (int, float)) or isinstance(evaluation_interval, bool):
        return None
    if not evaluation_interval or not isinstance(iteration, (int, float)):
        return False
    return int(iteration) % int(evaluation_interval) == 0
#: Config keys that identify a trial, not a setting (never split a seed group).
IDENTITY_KEYS = {"seed"}


def flatten(d: dict, prefix: str = "", skip: tuple[str, ...] = ()) -> dict:
    out = {}
    for k, v in d.items():
        if k in skip and not prefix:
            continue
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out


@dataclass
class Trial:
    """One trial folder: its experiment, config and result rows (flattened ``a/b`` keys)."""

    path: str
    experiment: str
    params: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)

    @property
    def seed(self):
        return self.params.get("seed")

    def series(self, x_key: str, y_key: str) -> tuple[list[float], list[float]]:
        """``(x, y)`` of the rows that have both as finite numbers, in file order.

        RLlib repeats the last evaluation's results in the iterations between evaluations: for an
        ``evaluation/`` metric only the rows of iterations that evaluated are kept (:func:`evaluated_at`, from the
        trial's ``evaluation_interval``; without a params file, the rows where the evaluated-episode count grew).
        """
        xs, ys = [], []
        evaluated = 0.0
        interval = self.params.get("evaluation_interval")
        for r in self.rows:
            x, y = r.get(x_key), r.get(y_key)
            if y_key.startswith("evaluation/"):
                at = evaluated_at(r.get("training_iteration"), interval)
                if at is False:
                    continue
                if at is None and _number(r.get(EVAL_EPISODES_KEY)):
                    if r[EVAL_EPISODES_KEY] <= evaluated:
                        continue
                    evaluated = r[EVAL_EPISODES_KEY]
            if _number(x) and _number(y):
                xs.append(float(x))
                ys.append(float(y))
        return xs, ys

    def last(self, key: str):
        for r in reversed(self.rows):
            if _number(r.get(key)):
                return float(r[key])
        return None


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _read_result_json(path: str) -> list[dict]:
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(flatten(json.loads(line), skip=("config",)))
                except json.JSONDecodeError:
                    continue  # a line cut short by an interrupted run
    return rows


def _read_events(folder: str) -> list[dict]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    by_step: dict[int, dict] = {}
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        acc = EventAccumulator(path, size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            key = tag[len("ray/tune/"):] if tag.startswith("ray/tune/") else tag
            for ev in acc.Scalars(tag):
                by_step.setdefault(int(ev.step), {"training_iteration": int(ev.step)})[key] = float(ev.value)
    return [by_step[s] for s in sorted(by_step)]


def _read_params(folder: str) -> dict:
    path = os.path.join(folder, PARAMS_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            return flatten(json.load(f))
    except (json.JSONDecodeError, OSError):
        return {}


def find_trials(paths: list[str]) -> list[Trial]:
    """Every trial folder in or under ``paths``; one clear error for a path that holds none."""
    trials, seen = [], set()
    for p in paths:
        p = os.path.abspath(os.path.expanduser(p))
        if not os.path.isdir(p):
            raise MarlxError(f"{p} is not a run folder (it does not exist or is a file); pass folders under runs/")
        folders = {os.path.dirname(f) for f in glob.glob(os.path.join(p, "**", RESULT_FILE), recursive=True)}
        if not folders:
            folders = {os.path.dirname(f) for f in glob.glob(os.path.join(p, "**", "events.out.tfevents.*"),
                                                             recursive=True)}
        if not folders:
            raise MarlxError(f"{p} is not a run folder: it holds no {RESULT_FILE} and no TensorBoard events; "
                             "pass a folder written by `marlx train` (runs/<experiment> or one of its trials)")
        for folder in sorted(folders - seen):
            seen.add(folder)
            result = os.path.join(folder, RESULT_FILE)
            rows = _read_result_json(result) if os.path.isfile(result) else _read_events(folder)
            if rows:
                trials.append(Trial(folder, os.path.basename(os.path.dirname(folder)), _read_params(folder), rows))
    if not trials:
        raise MarlxError(f"no results in {', '.join(paths)}: the trials there have not finished an iteration yet")
    return trials


@dataclass
class Group:
    """Trials of one experiment and setting, one per seed."""

    label: str
    trials: list[Trial]


def group_trials(trials: list[Trial]) -> list[Group]:
    """One group per experiment and per setting of the config keys (other than ``seed``) that vary inside it."""
    by_exp: dict[str, list[Trial]] = {}
    for t in trials:
        by_exp.setdefault(t.experiment, []).append(t)
    groups = []
    for exp, members in by_exp.items():
        keys = sorted({k for t in members for k in t.params})
        varying = [k for k in keys if k not in IDENTITY_KEYS
                   and len({json.dumps(t.params.get(k), sort_keys=True, default=str) for t in members}) > 1]
        settings: dict[tuple, list[Trial]] = {}
        for t in members:
            settings.setdefault(tuple(json.dumps(t.params.get(k), default=str) for k in varying), []).append(t)
        for values, ts in settings.items():
            label = exp if not varying else exp + " (" + ", ".join(f"{k}={v}" for k, v in zip(varying, values)) + ")"
            groups.append(Group(label, sorted(ts, key=lambda t: (str(t.seed), t.path))))
    return groups


def resolve_key(trials: list[Trial], name: str, what: str = "metric") -> str:
    """The result key for ``--metric``/``--x`` ``name``: exact keys, then aliases and ``env_runners/`` prefixes."""
    keys = {k for t in trials for r in t.rows for k, v in r.items() if _number(v)}
    if what == "x":
        candidates = (name, *X_ALIASES.get(name, ()))
    else:
        short = METRIC_ALIASES.get(name, name)
        candidates = (name, short, f"env_runners/{short}", f"evaluation/env_runners/{short}")
    for c in candidates:
        if c in keys:
            return c
    import difflib

    valid = sorted(keys | (set(X_ALIASES) if what == "x" else set()))
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5) or difflib.get_close_matches(
        f"env_runners/{name}", valid, n=3, cutoff=0.5)
    common = [f"env_runners/{k}" for k in ("success_rate", "episode_return_mean", "episode_len_mean")
              if f"env_runners/{k}" in valid]
    raise MarlxError(
        f"unknown {'--x' if what == 'x' else 'metric'} {name!r} in these runs"
        + (f"; did you mean {', '.join(close)}?" if close else "")
        + (f" Short names look under env_runners/: {', '.join(k.split('/', 1)[1] for k in common)}" if common else "")
    )
