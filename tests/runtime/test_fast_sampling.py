"""The runner's fast action-selection path gives exactly what the module's RLlib forward gives.

:class:`~marlx.modules.qmix_module.QMIXSampler` replaces ``QMIXRLModule._forward_exploration`` on env runners for
speed; with the same weights and the same torch RNG state, a seeded run must produce identical actions, kept Q
values, recurrent states, stored observations and replay contents, in training (epsilon-greedy) and evaluation.
"""

import numpy as np
import pytest
import torch
from ray.rllib.core import COMPONENT_RL_MODULE

from marlx.algorithms.fox.module import FoXRLModule
from marlx.algorithms.qmix import QMIXConfig
from marlx.modules.qmix_module import QMIXSampler
from marlx.runtime.replay import TeamEpisodeReplay
from marlx.runtime.runner import TeamEnvRunner


def _runner(fast: bool, use_rnn: bool, num_envs: int) -> TeamEnvRunner:
    cfg = (QMIXConfig().environment("builtin/push_box", env_config={"size": 4})
           .env_runners(num_envs_per_env_runner=num_envs)
           # epsilon crosses from 1 to 0.05 within the run: both the random and the greedy branch are taken
           .training(rnn_hidden_dim=16, use_rnn=use_rnn, epsilon_anneal_time=600,
                     keep_outputs=["q_values"], keep_state_out=True, fast_sampling=fast)
           .debugging(seed=3))
    torch.manual_seed(0)
    return TeamEnvRunner(config=cfg, worker_index=0)


def _play(runner: TeamEnvRunner, weights: dict) -> tuple[list, list, dict]:
    runner.set_state({COMPONENT_RL_MODULE: weights})
    torch.manual_seed(1234)
    train = [ep for _ in range(6) for ep in runner.sample()]
    evaluation = runner.sample(num_episodes=5, explore=False)
    return train, evaluation, {k: v.copy() for k, v in runner._state.items()}


def _assert_same_episodes(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x.env_index, x.start_t, x.terminated, x.truncated) == (y.env_index, y.start_t, y.terminated,
                                                                       y.truncated)
        np.testing.assert_array_equal(x.actions, y.actions)
        np.testing.assert_array_equal(x.executed_actions, y.executed_actions)
        np.testing.assert_array_equal(x.rewards, y.rewards)
        assert x.obs.keys() == y.obs.keys() and x.extras.keys() == y.extras.keys()
        for k in x.obs:
            np.testing.assert_array_equal(x.obs[k], y.obs[k])
        for k in x.extras:  # q_values, state_out/h, state_out/prev_actions: bit for bit
            assert x.extras[k].dtype == y.extras[k].dtype
            np.testing.assert_array_equal(x.extras[k], y.extras[k])


@pytest.mark.parametrize("use_rnn", [True, False], ids=["rnn", "mlp"])
@pytest.mark.parametrize("num_envs", [1, 4])
def test_fast_sampler_gives_the_forward_passes_actions_and_outputs(use_rnn, num_envs):
    fast, slow = _runner(True, use_rnn, num_envs), _runner(False, use_rnn, num_envs)
    assert isinstance(fast._sampler, QMIXSampler) and slow._sampler is None
    weights = slow.module.get_state()
    fast_train, fast_eval, fast_state = _play(fast, weights)
    slow_train, slow_eval, slow_state = _play(slow, weights)
    _assert_same_episodes(fast_train, slow_train)
    _assert_same_episodes(fast_eval, slow_eval)
    for k in slow_state:
        np.testing.assert_array_equal(fast_state[k], slow_state[k])
    # both branches of epsilon-greedy were taken, and some actions were unavailable (masked) at some step
    acts = np.concatenate([e.actions for e in slow_train])
    q = np.concatenate([e.extras["q_values"] for e in slow_train])
    avail = np.concatenate([e.obs["avail"][:-1] for e in slow_train])
    greedy = np.where(avail > 0, q, -np.inf).argmax(-1)
    assert 0.1 < (acts == greedy).mean() < 0.99
    assert (avail == 0).any()
    # the replay holds the same contents
    replays = []
    for eps in (fast_train, slow_train):
        replay = TeamEpisodeReplay(capacity=64, extra_columns=["q_values"])
        replay.add(eps)
        replays.append(replay)
    assert replays[0].data.keys() == replays[1].data.keys()
    np.testing.assert_array_equal(replays[0].lengths, replays[1].lengths)
    for k in replays[0].data:
        np.testing.assert_array_equal(replays[0].data[k], replays[1].data[k])


def test_weights_sent_to_the_runner_reach_the_fast_sampler():
    runner = _runner(True, True, 2)
    weights = runner.module.get_state()
    weights = {k: torch.zeros_like(torch.as_tensor(v)) for k, v in weights.items()}
    runner.set_state({COMPONENT_RL_MODULE: weights, "weights_seq_no": 1})
    for ep in runner.sample():
        assert not ep.extras["q_values"].any() and not ep.extras["state_out/h"].any()


def test_subclass_with_its_own_agent_step_samples_through_its_forward():
    """FoX changes the agent's step: its module offers no fast sampler (its forward is what it samples with)."""
    from marlx.algorithms.fox import FoXConfig

    cfg = FoXConfig().environment("builtin/push_box", env_config={"size": 4}).training(rnn_hidden_dim=8)
    runner = TeamEnvRunner(config=cfg, worker_index=0)
    assert isinstance(runner.module, FoXRLModule) and runner._sampler is None
    assert runner.sample()  # and it samples
