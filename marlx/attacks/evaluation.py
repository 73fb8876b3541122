"""Natural and attacked episodes of one policy side by side (``marlx evaluate --attack``, WALL's evaluation).

The attack is the env runner's (built from its config's ``attack`` entry); natural episodes are played on the same
runners with the attack taken out for the call (:func:`play_episodes`), so both share the module weights.
"""

from __future__ import annotations

import numpy as np

from marlx.runtime.columns import ATTACKED


def summarize(episodes: list, n_agents: int | None = None) -> dict:
    """Return, success and length means of finished team episodes, plus attack statistics.

    ``attacked_steps_*``: steps at which the attack changed at least one action; ``hits_per_agent``: mean number of
    attacked steps per episode of every agent.
    """
    if not episodes:
        return {"episodes": 0}
    n = n_agents or episodes[0].n_agents
    hits = np.zeros(n)
    steps = []
    for ep in episodes:
        att = ep.extras.get(ATTACKED)
        if att is not None and len(ep):
            att = np.asarray(att).reshape(len(ep), -1)
            hits += att.sum(0)[:n]
        steps.append(ep.attacked_steps)
    return {
        "episodes": len(episodes),
        "return_mean": float(np.mean([ep.get_return() for ep in episodes])),
        "success_rate": float(np.mean([ep.success for ep in episodes])),
        "length_mean": float(np.mean([len(ep) for ep in episodes])),
        "attacked_steps_mean": float(np.mean(steps)),
        "attacked_steps_max": int(np.max(steps)),
        "hits_per_agent": (hits / len(episodes)).round(4).tolist(),
    }


def play_episodes(runner, num_episodes: int, attacked: bool) -> list:
    """``num_episodes`` greedy episodes on ``runner`` (a TeamEnvRunner), with or without its attack.

    The runner's metrics of these episodes are reduced and dropped, so they never mix into RLlib's evaluation.
    """
    stashed = runner.attack
    if not attacked:
        runner.attack = None
    try:
        episodes = runner.sample(num_episodes=int(num_episodes), explore=False)
        runner.get_metrics()
    finally:
        runner.attack = stashed
    return episodes


def natural_and_attacked(env_runner_group, num_episodes: int, which=("natural", "attacked")) -> dict:
    """Play ``num_episodes`` natural and ``num_episodes`` attacked episodes over the group's runners."""
    runners = max(1, env_runner_group.num_remote_env_runners())
    per = [num_episodes // runners + (1 if i < num_episodes % runners else 0) for i in range(runners)]
    out = {}
    for key in which:
        attacked = key == "attacked"
        if env_runner_group.num_remote_env_runners() == 0:
            eps = play_episodes(env_runner_group.local_env_runner, num_episodes, attacked)
        else:
            results = env_runner_group.foreach_env_runner(
                lambda r, a=attacked: play_episodes(r, per[max(0, r.worker_index - 1)], a), local_env_runner=False)
            eps = [e for chunk in results for e in chunk]
        out[key] = summarize(eps)
    return out
