"""RLlib callbacks that every marlx run uses: team success rate and episode facts from ``info``.

Team envs put ``success`` (and env-specific counters) in the last step's ``info``. RLlib only reports
returns and lengths, so this callback logs ``success_rate`` (windowed mean over the last 100 episodes), which
appears in results as ``env_runners/success_rate``. Envs without a success rule (MPE, CartPole, a generic
gymnasium env) put no ``success`` in their info: then no ``success_rate`` is logged at all, and the progress line
shows none (a rate of 0 would read as "never succeeds").
"""

from __future__ import annotations

from ray.rllib.callbacks.callbacks import RLlibCallback

SUCCESS_METRIC = "success_rate"


def episode_success(episode) -> bool | None:
    """The ``success`` flag of an episode's last info (single-agent team or multi-agent view); None when the env
    reports none."""
    try:
        last = episode.get_infos(-1)
    except (IndexError, KeyError, TypeError):
        return None
    if isinstance(last, dict) and "success" in last:
        return bool(last["success"])
    if isinstance(last, dict):  # multi-agent: {agent_id: info}
        flags = [bool(v["success"]) for v in last.values() if isinstance(v, dict) and "success" in v]
        return any(flags) if flags else None
    return None


class TeamMetricsCallback(RLlibCallback):
    """Logs the success rate of finished episodes."""

    def on_episode_end(self, *, episode, metrics_logger=None, **kwargs) -> None:
        success = episode_success(episode)
        if metrics_logger is not None and success is not None:
            metrics_logger.log_value(SUCCESS_METRIC, float(success), reduce="mean", window=100)
