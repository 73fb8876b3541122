"""The ``marlx/...`` metrics of every training result: what ``tune.metric`` aliases such as ``success_rate`` name."""

from __future__ import annotations

import math
from typing import Any

from ray.rllib.callbacks.callbacks import RLlibCallback


class TuneMetricsCallback(RLlibCallback):
    """Writes ``marlx/...`` keys into every training result: the latest success rate and return, the last value
    carried forward (NaN before the first episode ends), so Tune's strict metric check and ASHA work from
    iteration 1 even on iterations without evaluation or without a finished episode.

    ``marlx/success_rate`` is the greedy evaluation success rate when the algorithm evaluates
    (``evaluation_interval``), else the training one; ``marlx/return`` likewise.
    """

    KEYS = {
        "train_success_rate": ("env_runners", "success_rate"),
        "eval_success_rate": ("evaluation", "env_runners", "success_rate"),
        "train_return": ("env_runners", "episode_return_mean"),
        "eval_return": ("evaluation", "env_runners", "episode_return_mean"),
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._last = {key: float("nan") for key in self.KEYS}

    def on_train_result(self, *, algorithm, metrics_logger=None, result: dict, **kwargs) -> None:
        evaluates = bool(getattr(algorithm.config, "evaluation_interval", None))
        result["marlx"] = carry_forward(self._last, result, evaluates)


def carry_forward(last: dict, result: dict, evaluates: bool) -> dict:
    """Update ``last`` from ``result`` (see :class:`TuneMetricsCallback`) and return the ``marlx`` result section."""
    for key, path in TuneMetricsCallback.KEYS.items():
        node: Any = result
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, (int, float)) and not (isinstance(node, float) and math.isnan(node)):
            last[key] = float(node)
    pick = "eval" if evaluates else "train"
    return {
        "success_rate": last[f"{pick}_success_rate"],
        "return": last[f"{pick}_return"],
        "eval_success_rate": last["eval_success_rate"],
        "train_success_rate": last["train_success_rate"],
    }
