"""``marlx report``: per experiment and seed group, final and best metric with 95% bootstrap intervals, the
interquartile mean across seeds, env steps to a threshold and env steps/s, as a Markdown table (plus the curves)."""

from __future__ import annotations

import math
import os

import numpy as np

from marlx.results.runs import ENV_STEPS_KEYS, Group, Trial, find_trials, group_trials, resolve_key
from marlx.results.stats import bootstrap_ci, iqm


def steps_to_threshold(xs: list[float], ys: list[float], threshold: float) -> float | None:
    """The first x at which the metric reached ``threshold`` (None if it never did)."""
    for x, y in zip(xs, ys):
        if y >= threshold:
            return x
    return None


def env_steps_per_s(t: Trial) -> float | None:
    steps = next((v for v in (t.last(k) for k in ENV_STEPS_KEYS) if v is not None), None)
    seconds = t.last("time_total_s")
    return steps / seconds if steps is not None and seconds else None


def summarise_group(g: Group, x_key: str, y_key: str, threshold: float | None) -> dict:
    """The numbers of one row of the report (per-seed values kept, for checks)."""
    series = [t.series(x_key, y_key) for t in g.trials]
    series = [(x, y) for x, y in series if y]
    final = [y[-1] for _, y in series]
    best = [max(y) for _, y in series]
    row = {
        "group": g.label,
        "seeds": [t.seed for t in g.trials],
        "final": final, "final_mean": float(np.mean(final)) if final else math.nan,
        "final_ci": bootstrap_ci(final), "final_iqm": iqm(final), "final_iqm_ci": bootstrap_ci(final, iqm),
        "best": best, "best_mean": float(np.mean(best)) if best else math.nan, "best_ci": bootstrap_ci(best),
        "env_steps_per_s": [v for v in (env_steps_per_s(t) for t in g.trials) if v is not None],
    }
    if threshold is not None:
        reached = [steps_to_threshold(x, y, threshold) for x, y in series]
        row["steps_to_threshold"] = reached
    return row


def _fmt(v: float) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _ci(mean: float, ci: tuple[float, float]) -> str:
    return f"{_fmt(mean)} [{_fmt(ci[0])}, {_fmt(ci[1])}]"


def markdown_table(rows: list[dict], y_key: str, x_key: str, threshold: float | None) -> str:
    head = ["experiment", "seeds", f"final {y_key} (95% CI)", "final IQM (95% CI)", "best (95% CI)"]
    if threshold is not None:
        head.append(f"{x_key} to {threshold:g} (median; reached)")
    head.append("env steps/s")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["group"], str(len(r["final"])), _ci(r["final_mean"], r["final_ci"]),
                 _ci(r["final_iqm"], r["final_iqm_ci"]), _ci(r["best_mean"], r["best_ci"])]
        if threshold is not None:
            hit = [s for s in r["steps_to_threshold"] if s is not None]
            cells.append(f"{np.median(hit):.0f} ({len(hit)}/{len(r['steps_to_threshold'])})" if hit
                         else f"never (0/{len(r['steps_to_threshold'])})")
        sps = r["env_steps_per_s"]
        cells.append(f"{np.mean(sps):.0f}" if sps else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_runs(paths: list[str], metric: str = "success_rate", x: str = "env_steps", out: str = "report.md",
                threshold: float | None = None) -> dict:
    """Write the Markdown report ``out`` and its curves ``<out stem>.png``; returns the rows and the table.

    ``threshold`` defaults to 0.5 for success rates (no steps-to-threshold column for other metrics).
    """
    from marlx.results.plot import plot_curves

    trials = find_trials(paths)
    y_key, x_key = resolve_key(trials, metric), resolve_key(trials, x, what="x")
    if threshold is None and y_key.endswith("success_rate"):
        threshold = 0.5
    groups = group_trials(trials)
    rows = [summarise_group(g, x_key, y_key, threshold) for g in groups]
    table = markdown_table(rows, y_key, x_key, threshold)
    png = os.path.splitext(out)[0] + ".png"
    plot_curves({g.label: [t.series(x_key, y_key) for t in g.trials] for g in groups}, png, xlabel=x_key,
                ylabel=y_key, ylim=(-0.02, 1.02) if y_key.endswith("success_rate") else None)
    text = (f"# Report: {y_key} against {x_key}\n\nRuns: {', '.join(paths)}\n\n"
            "Final = the metric's last value per seed, best = its maximum per seed; intervals are 95% percentile "
            "bootstrap intervals over seeds; IQM = interquartile mean across seeds (rliable's estimator).\n\n"
            f"{table}\n\n![curves]({os.path.basename(png)})\n")
    with open(out, "w") as f:
        f.write(text)
    return {"out": out, "png": png, "metric": y_key, "x": x_key, "threshold": threshold, "rows": rows,
            "table": table}
