"""The decisive correctness test of value decomposition: the two-step game of the QMIX paper (Rashid et al. 2018,
§6.1, Table 2), trained as the paper does on uniformly random joint actions (epsilon 1 throughout, gamma 0.99).

QMIX's monotonic mixer represents state 2B's payoff [[0, 1], [1, 8]], so its greedy policy takes branch 2B and
gets 8, and its Q_tot of the first step is close to gamma * 8 = 7.92. VDN's additive fit of state 2B values its
best joint action at about 6.5 < 7, so its greedy policy takes the safe branch 2A (return 7). Random play gets
4.75 on average. (With epsilon annealed towards greedy play VDN can also reach 8; that is not what this tests.)
"""

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns

from marlx.algorithms.qmix import QMIXConfig, VDNConfig
from marlx.envs.builtin.two_step import STATE_1, STATE_2A, STATE_2B, TwoStepGameEnv
from marlx.envs.registry import make_env

GAMMA = 0.99


def test_two_step_game_pays_the_papers_matrices():
    env = make_env("builtin/two_step")
    assert isinstance(env, TwoStepGameEnv)
    for a0 in (0, 1):
        for a1 in (0, 1):
            for b0 in (0, 1):
                for b1 in (0, 1):
                    obs, _ = env.reset(seed=0)
                    assert obs["obs"].tolist() == [[1, 0, 0], [1, 0, 0]] and obs["state"].tolist() == [1, 0, 0]
                    obs, r, term, trunc, _ = env.step([a0, a1])
                    assert (r, term, trunc) == (0.0, False, False)
                    assert obs["state"].argmax() == (STATE_2A if a0 == 0 else STATE_2B)
                    obs, r, term, trunc, info = env.step([b0, b1])
                    expected = 7.0 if a0 == 0 else [[0.0, 1.0], [1.0, 8.0]][b0][b1]
                    assert (r, term, trunc, info["success"]) == (expected, True, False, expected == 8.0)


def greedy_episode(module):
    """One greedy episode of the learner's module: ``(return, joint actions)``."""
    env = TwoStepGameEnv()
    obs, _ = env.reset(seed=0)
    state = {k: v[None] for k, v in module.get_initial_state().items()}
    total, actions = 0.0, []
    while True:
        out = module._forward_inference({Columns.OBS: {k: torch.as_tensor(v)[None] for k, v in obs.items()},
                                         Columns.STATE_IN: state})
        state, a = out[Columns.STATE_OUT], out[Columns.ACTIONS][0].numpy()
        actions.append(a.tolist())
        obs, r, term, trunc, _ = env.step(a)
        total += r
        if term or trunc:
            return total, actions


def first_step_q_tot(module) -> np.ndarray:
    """``Q_tot(state 1, a0, a1)`` of the online agent and mixer, ``[2, 2]``."""
    s = torch.zeros(1, 3)
    s[0, STATE_1] = 1.0
    obs = {"obs": s.repeat(2, 1)[None], "state": s, "avail": torch.ones(1, 2, 2)}
    with torch.no_grad():
        q, _ = module.agent_q_values(obs, None, torch.zeros(1, 2, module.hidden_dim))
        return np.array([[float(module.mix(torch.stack([q[0, 0, a0], q[0, 1, a1]])[None], s)[0]) for a1 in (0, 1)]
                         for a0 in (0, 1)])


def train_on_random_play(config_cls, iterations=120):
    cfg = (
        config_cls()
        .environment("builtin/two_step")
        .env_runners(num_envs_per_env_runner=8)
        .training(epsilon_start=1.0, epsilon_finish=1.0, gamma=GAMMA, batch_size_episodes=64,
                  learning_starts_episodes=64, num_updates_per_iteration=4, target_update_interval_episodes=64)
        .debugging(seed=0)
    )
    algo = cfg.build_algo()
    try:
        for _ in range(iterations):
            algo.train()
        module = algo.learner_group._learner.module["default_policy"].unwrapped()
        return greedy_episode(module), first_step_q_tot(module)
    finally:
        algo.stop()


@pytest.mark.usefixtures("ray_session")
def test_qmix_learns_the_optimal_branch_and_vdn_the_safe_one():
    (ret, actions), q_tot = train_on_random_play(QMIXConfig)
    assert actions[0][0] == 1 and ret == 8.0, (actions, q_tot)
    assert abs(q_tot.max() - GAMMA * 8.0) < 0.5, q_tot  # Q_tot of the first step close to 8 (7.92)
    assert q_tot[1].min() > q_tot[0].max(), q_tot  # branch 2B valued above branch 2A
    (ret, actions), q_tot = train_on_random_play(VDNConfig)
    assert actions[0][0] == 0 and ret == 7.0, (actions, q_tot)
    assert q_tot[0].max() > q_tot[1].max(), q_tot  # the additive fit prefers the safe branch
    assert abs(q_tot[0].max() - GAMMA * 7.0) < 0.5, q_tot
