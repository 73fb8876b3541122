"""Hyper-parameter searches: the metric aliases, the end-of-run table, the best checkpoint and ``marlx tune``.

    marlx tune tuned_examples/qmix/push_box_search.yaml [EXPERIMENT ...] [--resume] [--num-samples N]
               [--metric M] [--mode max|min] [--scheduler NAME] [--max-concurrent K] [--summary RUN_DIR]

Searches run through :func:`marlx.cli.runner.run_experiment` like every marlx run; this module adds what a search
needs on top: a metric present on every iteration, the results table (ranked by the metric, seeds merged),
``marlx_tune_summary.{csv,txt}`` and ``marlx_tune_best.json`` in the experiment folder, and the resume check.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics

from marlx.errors import MarlxError

SPEC_FILE, SUMMARY_CSV, SUMMARY_TXT, BEST_JSON = (
    "marlx_tune_spec.json", "marlx_tune_summary.csv", "marlx_tune_summary.txt", "marlx_tune_best.json")
#: Exit code of a search in which some trials errored (the table is still printed).
TRIALS_ERRORED_EXIT = 3


# -- the results table ---------------------------------------------------------------------------------------------

def _is_nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def scoped_metric(values: list[float], scope: str, mode: str) -> float:
    """A trial's metric under a ResultGrid scope: ``last``, ``avg``, ``last-5-avg``, ``last-10-avg``, ``all``
    (its best value), NaN values skipped."""
    values = [float(v) for v in values if not _is_nan(v) and math.isfinite(float(v))]
    if not values:
        return float("nan")
    if scope == "last":
        return values[-1]
    if scope == "all":
        return max(values) if mode == "max" else min(values)
    if scope != "avg":
        values = values[-int(scope.split("-")[1]):]
    return sum(values) / len(values)


def _fmt(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.2e}" if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5) else f"{value:.4g}"
    return str(value)


def trial_rows(results, exp) -> list[dict]:
    """One row per trial: search-space values, status, iterations, env steps, metric (scoped), best, time, error."""
    from marlx.cli.runner import root_cause
    from marlx.cli.search_space import get_path

    settings = exp.tune
    rows = []
    for res in results:
        df = res.metrics_dataframe
        metric = settings.metric
        values = list(df[metric]) if df is not None and metric in df.columns else []
        metrics = res.metrics or {}
        steps = metrics.get("num_env_steps_sampled_lifetime")
        if steps is None:
            steps = (metrics.get("env_runners") or {}).get("num_env_steps_sampled_lifetime", 0)
        rows.append({
            "trial": str(metrics.get("trial_id", os.path.basename(res.path or "?"))),
            "path": res.path,
            "config": {label: get_path(res.config or {}, path) for path, label in exp.space_paths.items()},
            "status": "ERROR" if res.error else _status(res, exp),
            "iters": int(metrics.get("training_iteration", 0) or 0),
            "env_steps": int(steps or 0),
            "metric": scoped_metric(values, settings.scope, settings.mode),
            "best": scoped_metric(values, "all", settings.mode),
            "time_s": float(metrics.get("time_total_s", 0.0) or 0.0),
            "error": root_cause(res.error) if res.error else "",
        })
    return rows


def _status(res, exp) -> str:
    """TERMINATED when the trial met its stop criteria, else STOPPED (by the scheduler or an interrupt)."""
    metrics = res.metrics or {}
    if metrics.get("done") or not exp.stop:
        return "TERMINATED"
    from marlx.cli.search_space import get_path

    for key, bound in exp.stop.items():
        value = get_path(metrics, tuple(key.split("/")))
        if isinstance(value, (int, float)) and value >= bound:
            return "TERMINATED"
    return "STOPPED"


def sort_rows(rows: list[dict], mode: str) -> list[dict]:
    """By metric (best first), NaN last."""
    sign = -1.0 if mode == "max" else 1.0
    return sorted(rows, key=lambda r: (_is_nan(r["metric"]), sign * r["metric"] if not _is_nan(r["metric"]) else 0.0))


def group_rows(rows: list[dict], seed_label: str = "seed") -> list[dict]:
    """Merge rows whose config differs only in ``seed``: metric and best become means, with std and n kept."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        key = json.dumps({k: v for k, v in row["config"].items() if k != seed_label}, sort_keys=True, default=str)
        groups.setdefault(key, []).append(row)
    out = []
    for members in groups.values():
        first = dict(members[0])
        metrics = [r["metric"] for r in members if not _is_nan(r["metric"])]
        first["trial"] = ",".join(r["trial"] for r in members)
        first["config"] = {**first["config"], seed_label: ",".join(str(r["config"].get(seed_label)) for r in members)}
        first["metric"] = statistics.fmean(metrics) if metrics else float("nan")
        first["metric_std"] = statistics.pstdev(metrics) if len(metrics) > 1 else 0.0
        first["n"] = len(members)
        bests = [r["best"] for r in members if not _is_nan(r["best"])]
        first["best"] = statistics.fmean(bests) if bests else float("nan")
        first["status"] = "/".join(sorted({r["status"] for r in members}))
        first["iters"] = max(r["iters"] for r in members)
        first["env_steps"] = sum(r["env_steps"] for r in members)
        first["time_s"] = sum(r["time_s"] for r in members)
        first["members"] = members
        out.append(first)
    return out


def format_table(exp, rows: list[dict]) -> list[str]:
    settings = exp.tune
    labels = list(exp.space_paths.values())
    short = [label.split(".")[-1][:12] for label in labels]
    head = ["rank", "trial"] + short + ["status", "iters", "env_steps", "metric", "best", "time_s"]
    table = [head]
    for rank, row in enumerate(rows, start=1):
        metric = _fmt(row["metric"])
        if row.get("n", 1) > 1:
            metric += f" ± {_fmt(row['metric_std'])} (n={row['n']})"
        table.append([str(rank), row["trial"]] + [_fmt(row["config"].get(label)) for label in labels]
                     + [row["status"], str(row["iters"]), str(row["env_steps"]), metric, _fmt(row["best"]),
                        f"{row['time_s']:.0f}"])
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    lines = ["  ".join(cell.rjust(w) if i in (0,) else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths))).rstrip()
             for r in table]
    for row in rows:
        for member in row.get("members", [row]):
            if member["error"]:
                lines.append(f"  {member['trial']} ERROR: {member['error']} (details in {member['path']}/error.txt)")
    counts: dict[str, int] = {}
    for row in rows:
        for member in row.get("members", [row]):
            counts[member["status"]] = counts.get(member["status"], 0) + 1
    n = sum(counts.values())
    by = f" by {settings.scheduler[0]}" if settings.scheduler[0] and counts.get("STOPPED") else ""
    status = ", ".join(f"{c} {s}" + (by if s == "STOPPED" else "") for s, c in sorted(counts.items()))
    title = (f"{exp.name}: {n} trials ({status}), metric {settings.metric} "
             f"({settings.mode}, {settings.scope})")
    return [title] + lines


def best_checkpoint(results, best_row: dict, metric: str, mode: str) -> tuple[str | None, str]:
    """The best trial's checkpoint scored by ``metric``, else its latest, and which one it is."""
    for res in results:
        if res.path == best_row["path"]:
            try:
                ckpt = res.get_best_checkpoint(metric, mode)
            except (RuntimeError, KeyError, ValueError, TypeError):
                ckpt = None
            if ckpt is not None:
                return ckpt.path, f"by {metric}"
            return (res.checkpoint.path if res.checkpoint else None), f"latest; no checkpoint carries {metric}"
    return None, "none"


def summarize(results, exp, out=print) -> int:
    """Print the table and the best trial, write the summary files; exit code 0, or 3 when some trials errored."""
    from marlx.cli.runner import experiment_dir

    settings = exp.tune
    rows = sort_rows(trial_rows(results, exp), settings.mode)
    seed_label = next((label for label in exp.space_paths.values() if label == "seed"), None)
    shown = sort_rows(group_rows(rows, seed_label), settings.mode) if settings.group_by_seed and seed_label else rows
    lines = format_table(exp, shown)
    best = None
    if shown and not _is_nan(shown[0]["metric"]):
        group = shown[0]
        members = group.get("members", [group])
        best = sort_rows(members, settings.mode)[0]
        config = " ".join(f"{label.split('.')[-1]}={_fmt(best['config'].get(label))}" for label in exp.space_paths.values())
        line = f"best: {best['trial']}  {config}  metric={_fmt(best['metric'])}"
        if len(members) > 1:
            line += f" (seed mean {_fmt(group['metric'])} ± {_fmt(group['metric_std'])})"
        lines.append(line)
        ckpt, how = best_checkpoint(results, best, settings.metric, settings.mode)
        best["checkpoint"] = ckpt
        if ckpt:
            lines.append(f"best checkpoint: {ckpt}   ({how})")
            lines.append(f"evaluate: marlx evaluate {ckpt} --episodes 32")
        else:
            lines.append("best checkpoint: none (set checkpoint_config.checkpoint_at_end: true)")
    else:
        lines.append(f"best: none (no trial reported {settings.metric})")
    for line in lines:
        out(line)
    folder = experiment_dir(exp)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, SUMMARY_TXT), "w") as f:
        f.write("\n".join(lines) + "\n")
    labels = list(exp.space_paths.values())
    with open(os.path.join(folder, SUMMARY_CSV), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial"] + labels + ["status", "iters", "env_steps", "metric", "best", "time_s", "path", "error"])
        for row in rows:
            writer.writerow([row["trial"]] + [row["config"].get(label) for label in labels]
                            + [row["status"], row["iters"], row["env_steps"], row["metric"], row["best"],
                               round(row["time_s"], 1), row["path"], row["error"]])
    with open(os.path.join(folder, BEST_JSON), "w") as f:
        json.dump({"trial_id": best["trial"], "config": best["config"], "metric": settings.metric,
                   "value": best["metric"], "mode": settings.mode, "scope": settings.scope,
                   "checkpoint": best.get("checkpoint"), "path": best["path"]} if best else None, f, indent=1, default=str)
    return TRIALS_ERRORED_EXIT if any(r["error"] for r in rows) else 0


# -- resume check --------------------------------------------------------------------------------------------------

def search_spec(exp) -> dict:
    """What a search is, normalised: resuming with a different space, metric or scheduler is refused."""
    return {
        "run": exp.algo_name,
        "env": exp.env,
        "space": dict(sorted(exp.space_yaml.items())),
        "tune": exp.tune.to_json() if exp.tune else None,
    }


#: Spec entries that describe how to show a search, not what it is (not compared on resume).
_VIEW_KEYS = ("name", "columns", "stop", "group_by_seed")


def write_spec(exp, folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    spec = {**search_spec(exp), "name": exp.name, "stop": exp.stop, "group_by_seed": exp.tune.group_by_seed,
            "columns": [[label, list(path)] for path, label in exp.space_paths.items()]}
    with open(os.path.join(folder, SPEC_FILE), "w") as f:
        json.dump(spec, f, indent=1, sort_keys=True, default=str)


def read_spec(folder: str) -> dict:
    path = os.path.join(folder, SPEC_FILE)
    if not os.path.isfile(path):
        raise MarlxError(f"{folder} holds no marlx search ({SPEC_FILE} is missing); pass the experiment folder of a "
                         "`marlx tune` run, e.g. runs/<experiment name>")
    with open(path) as f:
        return json.load(f)


def view_from_spec(folder: str):
    """What :func:`summarize` needs about a search, from the spec stored in its experiment folder."""
    from types import SimpleNamespace

    from marlx.cli.search_space import TuneSettings

    spec = read_spec(folder)
    t = spec["tune"]
    settings = TuneSettings(metric=t["metric"], metric_name=t["metric"], mode=t["mode"], scope=t["scope"],
                            num_samples=t["num_samples"], scheduler=(t["scheduler"][0], {}),
                            group_by_seed=spec.get("group_by_seed", True))
    folder = os.path.abspath(folder)
    return SimpleNamespace(name=spec.get("name", os.path.basename(folder)), storage_path=os.path.dirname(folder),
                           stop=spec.get("stop") or {}, tune=settings, algo_name=spec["run"],
                           space_paths={tuple(path): label for label, path in spec.get("columns", [])})


def check_spec(exp, folder: str, force: bool = False) -> None:
    path = os.path.join(folder, SPEC_FILE)
    if force or not os.path.isfile(path):
        return
    with open(path) as f:
        stored = {k: v for k, v in json.load(f).items() if k not in _VIEW_KEYS}
    now = json.loads(json.dumps(search_spec(exp), sort_keys=True, default=str))
    if stored != now:
        diff = sorted(k for k in set(stored) | set(now) if stored.get(k) != now.get(k))
        raise MarlxError(f"{exp.name}: the file's {', '.join(diff)} differ from the run in {folder} that --resume "
                         "would continue; restore the file, use another --storage-path, or pass --force")


# -- the command ---------------------------------------------------------------------------------------------------

def select_experiments(data: dict, names: list[str], source: str) -> dict:
    from marlx.errors import UnknownNameError

    for name in names:
        if name not in data:
            raise UnknownNameError("experiment", name, [str(k) for k in data], hint=f"in {source}")
    return {k: v for k, v in data.items() if not names or k in names}


def summary_command(folder: str, address: str | None = None) -> int:
    """The table of a finished or interrupted search, from its experiment folder, without training."""
    from ray import tune

    from marlx.cli.runner import init_ray

    view = view_from_spec(folder)
    init_ray(address)
    from marlx.cli.experiment import resolve_algorithm

    results = tune.Tuner.restore(os.path.abspath(folder), trainable=resolve_algorithm(view.algo_name)).get_results()
    return summarize(results, view)


def tune_command(args) -> int:
    from marlx.cli.common import file_with_overrides, train_experiments
    from marlx.cli.experiment import apply_tune_overrides

    if args.summary:
        if args.resume:
            raise MarlxError("--summary prints a finished search; it cannot be combined with --resume")
        return summary_command(args.summary, args.address)
    if not args.file:
        raise MarlxError("usage: marlx tune FILE.yaml [EXPERIMENT ...]  or  marlx tune --summary RUN_DIR")
    data = select_experiments(file_with_overrides(args.file, args), args.experiments, args.file)
    apply_tune_overrides(data, always=True, num_samples=args.num_samples, metric=args.metric, mode=args.mode,
                         scheduler=args.scheduler, max_concurrent_trials=args.max_concurrent)
    return train_experiments(data, args.file, args.resume, args.address, args.storage_path, force=args.force)


def add_tune_args(p) -> None:
    """The ``marlx tune`` flags beyond the shared training ones."""
    p.add_argument("file", nargs="?", help="experiment file with search spaces, e.g. tuned_examples/qmix/push_box_search.yaml")
    p.add_argument("experiments", nargs="*", metavar="EXPERIMENT", help="run only these experiments of the file")
    p.add_argument("--num-samples", type=int, default=None, help="samples per grid point (tune.num_samples)")
    p.add_argument("--metric", default=None, help="success_rate, eval_success_rate, return or a result path")
    p.add_argument("--mode", choices=("max", "min"), default=None)
    p.add_argument("--scheduler", default=None, help="fifo, asha, pbt, ... (its options stay in the file's tune:)")
    p.add_argument("--max-concurrent", type=int, default=None, help="trials at once (tune.max_concurrent_trials)")
    p.add_argument("--summary", metavar="RUN_DIR", default=None,
                   help="print the table of a finished or interrupted search (its experiment folder); no training")
    p.add_argument("--force", action="store_true", help="with --resume: continue although the file's search differs")
