"""Learning curves: each group's seeds as their mean with a 95% bootstrap band (``marlx plot``, benchmarks)."""

from __future__ import annotations

import numpy as np

from marlx.results.stats import bootstrap_band

#: Points of the common x grid that seeds are interpolated onto.
GRID_POINTS = 100

Curve = tuple  # (xs, ys) of one seed


def seed_grid(curves: list[Curve], points: int = GRID_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Seeds' curves on one x grid: ``-> (grid [points], values [seeds, points])``, NaN outside a seed's range."""
    curves = [(np.asarray(x, np.float64), np.asarray(y, np.float64)) for x, y in curves if len(x)]
    if not curves:
        return np.zeros(0), np.zeros((0, 0))
    lo = min(float(x.min()) for x, _ in curves)
    hi = max(float(x.max()) for x, _ in curves)
    grid = np.linspace(lo, hi, points) if hi > lo else np.array([lo])
    values = np.array([np.interp(grid, x, y, left=np.nan, right=np.nan) for x, y in curves])
    return grid, values


def seed_mean(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``values [seeds, points]`` (from :func:`seed_grid`) -> mean and 95% bootstrap band, NaN at every point where
    some seed has no value (a mean of fewer seeds than the legend states is not drawn)."""
    mean, low, high = bootstrap_band(values)
    incomplete = np.isnan(values).any(axis=0)
    mean[incomplete] = low[incomplete] = high[incomplete] = np.nan
    return mean, low, high


def plot_curves(curves_by_label: dict[str, list[Curve]], path: str, xlabel: str, ylabel: str,
                title: str | None = None, hlines: dict[str, float] | None = None, ylim=None) -> str:
    """One line per label (mean over its seeds) with the 95% bootstrap interval of that mean as a band.

    The line and band are drawn only where every seed of the label has a value (interpolated between its points),
    so that each point is the mean of all the seeds the legend counts: seeds whose last evaluations fall at
    slightly different env steps do not end the line on one seed's value.

    Args:
        curves_by_label: label -> one ``(xs, ys)`` per seed.
        path: PNG to write.
        hlines: reference levels drawn dashed, e.g. ``{"random play": 0.02}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        for label, curves in curves_by_label.items():
            grid, values = seed_grid(curves)
            if not grid.size:
                continue
            mean, low, high = seed_mean(values)
            n = values.shape[0]
            (line,) = ax.plot(grid, mean, label=f"{label} (mean of {n} seed{'s' if n != 1 else ''})")
            if n > 1:
                ax.fill_between(grid, low, high, alpha=0.2, color=line.get_color(), linewidth=0)
        for name, level in (hlines or {}).items():
            ax.axhline(level, color="grey", ls="--", label=name)
        ax.set(xlabel=xlabel, ylabel=ylabel)
        if ylim is not None:
            ax.set_ylim(*ylim)
        if title:
            ax.set_title(title, fontsize=8)
        ax.legend(loc="best", fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def plot_runs(paths: list[str], metric: str = "success_rate", x: str = "env_steps", out: str = "curves.png") -> dict:
    """``marlx plot``: learning curves of the run folders ``paths``; returns what was drawn."""
    from marlx.results.runs import find_trials, group_trials, resolve_key

    trials = find_trials(paths)
    y_key, x_key = resolve_key(trials, metric), resolve_key(trials, x, what="x")
    groups = group_trials(trials)
    curves = {g.label: [t.series(x_key, y_key) for t in g.trials] for g in groups}
    ylim = (-0.02, 1.02) if y_key.endswith("success_rate") else None
    plot_curves(curves, out, xlabel=x_key, ylabel=y_key, ylim=ylim)
    return {"out": out, "metric": y_key, "x": x_key, "groups": {g.label: len(g.trials) for g in groups}}
