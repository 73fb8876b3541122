"""RLlib callbacks that every marlx run uses: team success rate and episode facts from ``info``.

Team envs put ``success`` (and env-specific counters) in the last step's ``info``. RLlib only reports
returns and lengths, so this callback logs ``success_rate`` (windowed mean over the last 100 episodes), which
appears in results as ``env_runners/success_rate``.
"""

from __future__ import annotations

from ray.rllib.callbacks.callbacks import RLlibCallback

SUCCESS_METRIC = "success_rate"


def episode_success(episode) -> bool:
    """The ``success`` flag of an episode's last info (single-agent team or multi-agent view)."""
    try:
        last = episode.get_infos(-1)
    except (IndexError, KeyError, TypeError):
        return False
    if isinstance(last, dict) and "success" in last:
        return bool(last["success"])
    if isinstance(last, dict):  # multi-agent: {agent_id: info}
        return any(isinstance(v, dict) and bool(v.get("success")) for v in last.values())
    return False


class TeamMetricsCallback(RLlibCallback):
    """Logs the success rate of finished episodes."""

    def on_episode_end(self, *, episode, metrics_logger=None, **kwargs) -> None:
        if metrics_logger is not None:
            metrics_logger.log_value(SUCCESS_METRIC, float(episode_success(episode)), reduce="mean", window=100)
