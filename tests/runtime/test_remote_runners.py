"""The team env runner as remote Ray actors: training on 2 remote runners, and a runner killed mid-run."""

import os

import pytest

from marlx.algorithms.qmix import QMIXConfig
from marlx.runtime.runner import TeamEnvRunner


def remote_config(**kw):
    return (QMIXConfig().environment("builtin/push_box", env_config={"size": 4, "episode_limit": 12})
            .env_runners(num_env_runners=2, num_envs_per_env_runner=2, sample_timeout_s=120)
            .fault_tolerance(restart_failed_env_runners=True)
            .training(batch_size_episodes=4, learning_starts_episodes=4, rnn_hidden_dim=8, mixing_embed_dim=4,
                      hypernet_embed=8, **kw)
            .debugging(seed=0))


@pytest.mark.slow
def test_two_remote_runners_and_a_killed_one(ray_session):
    algo = remote_config().build_algo()
    try:
        kinds = algo.env_runner_group.foreach_env_runner(lambda w: type(w).__name__, local_env_runner=False)
        assert kinds == [TeamEnvRunner.__name__] * 2
        seeds = algo.env_runner_group.foreach_env_runner(lambda w: tuple(w._seeds), local_env_runner=False)
        assert len({s for pair in seeds for s in pair}) == 4  # every remote sub-env has its own seed
        r = algo.train()
        # 2 runners x 2 sub-envs x one whole 12-step-max episode each
        assert r["env_runners"]["num_episodes"] == 4
        before = r["env_runners"]["num_env_steps_sampled_lifetime"]
        # kill remote runner 1 from inside (its actor process exits)
        algo.env_runner_group.foreach_env_runner(lambda w: os._exit(1), remote_worker_ids=[1],
                                                 local_env_runner=False, timeout_seconds=5)
        healthy = []
        for _ in range(12):  # RLlib restarts the actor in the background; give it a few iterations
            r = algo.train()
            healthy.append(algo.env_runner_group.num_healthy_remote_workers())
            if healthy[-1] == 2 and len(healthy) >= 3:
                break
        assert r["env_runners"]["num_env_steps_sampled_lifetime"] > before  # training went on
        assert healthy[-1] == 2, healthy  # and the runner was restarted
        assert "td_loss" in r["learners"]["default_policy"]
        # the progress line of `marlx train` reports the restart
        from marlx.cli.runner import format_progress

        restarts = r["fault_tolerance"]["num_remote_worker_restarts"]
        assert restarts >= 1
        assert format_progress(r).endswith(f"| env-runner restarts {restarts}")
    finally:
        algo.stop()
