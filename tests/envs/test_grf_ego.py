"""GRF's ego-centric observation (CDS/FoX, ``representation: ego``) and the formation keys FoX builds from it.

The first tests need no gfootball: they build the observation from a constructed raw observation dict. The
others run the real engine and are skipped when gfootball is not installed (CI builds it).
"""

import numpy as np
import pytest

from marlx.envs.grf import ego_dim, ego_observation
from marlx.intrinsic.fox_formation import FormationKeyer

# A raw gfootball observation of academy_3_vs_1_with_keeper: our keeper + 3 attackers, their keeper + 1 defender.
RAW = {
    "left_team": np.array([[-1.0, 0.0], [0.6, 0.0], [0.7, 0.2], [0.7, -0.2]]),
    "left_team_direction": np.array([[0.0, 0.0], [0.01, 0.0], [0.0, 0.02], [-0.01, 0.01]]),
    "right_team": np.array([[-1.0, 0.0], [-0.75, 0.1]]),  # gfootball mirrors the right team: their keeper at x=-1
    "right_team_direction": np.array([[0.0, 0.0], [0.0, -0.01]]),
    "ball": np.array([0.62, 0.0, 0.1]),
    "ball_direction": np.array([0.0, 0.001, -0.002]),
}


def test_ego_observation_of_3v1_equals_hand_computed_rows():
    obs = ego_observation(RAW, n_agents=3)
    assert obs.shape == (3, 26) and ego_dim(3, 2) == 26 and obs.dtype == np.float32
    # agent 1 is left_team[2] = (0.7, 0.2); its team mates are left_team[1] and left_team[3], in team order
    expected_1 = [
        0.7, 0.2,                      # own position
        -0.1, -0.2, 0.0, -0.4,         # (0.6, 0) - ego, (0.7, -0.2) - ego
        0.0, 0.02,                     # own direction
        0.01, 0.0, -0.01, 0.01,        # team mates' directions
        -1.7, -0.2, -1.45, -0.1,       # right players relative to ego
        0.0, 0.0, 0.0, -0.01,          # right players' directions
        -0.08, -0.2, 0.1,              # ball (x, y) - ego, ball z
        0.0, 0.001, -0.002,            # ball direction
    ]
    np.testing.assert_allclose(obs[1], expected_1, atol=1e-6)
    np.testing.assert_allclose(obs[0, :6], [0.6, 0.0, 0.1, 0.2, 0.1, -0.2], atol=1e-6)
    np.testing.assert_allclose(obs[2, 2:6], [-0.1, 0.2, 0.0, 0.4], atol=1e-6)
    # fewer opponents (the FoX counterattack env keeps the first 3 right players): 4n + 4m + 6
    assert ego_observation(RAW, n_agents=3, n_opponents=1).shape == (3, 22)
    assert ego_observation(RAW, n_agents=1).shape == (1, ego_dim(1, 2)) == (1, 18)


def test_ego_rows_give_formation_keys_that_simple115_rows_cannot():
    keyer = FormationKeyer(26, round_decimals=3, seed=0)
    rng = np.random.default_rng(0)
    keys = set()
    for _ in range(50):
        raw = {k: v + rng.normal(scale=0.05, size=v.shape) for k, v in RAW.items()}
        keys.add(keyer.keys(ego_observation(raw, 3).astype(np.float64)).tobytes())
    assert len(keys) == 50
    # simple115-style rows: the same vector except a one-hot of the active player -> one key whatever the state
    onehot_keys = set()
    for _ in range(50):
        base = rng.normal(size=26)
        rows = np.tile(base, (3, 1))
        rows[np.arange(3), np.arange(3)] += 1.0
        onehot_keys.add(keyer.keys(rows).tobytes())
    assert len(onehot_keys) == 1


def _random_keys(representation, steps=100):
    pytest.importorskip("gfootball")
    from marlx.envs.grf import GRFTeamEnv

    env = GRFTeamEnv("academy_3_vs_1_with_keeper", reward="sparse", representation=representation,
                     state_representation="ego" if representation == "ego" else "simple115v2")
    try:
        rng = np.random.default_rng(0)
        obs, _ = env.reset(seed=0)
        keyer = FormationKeyer(env.obs_dim, round_decimals=3, seed=0)
        keys = set()
        for _ in range(steps):
            if representation == "ego":
                np.testing.assert_allclose(obs["obs"], ego_observation(env._raw[0], 3), atol=1e-6)
                from marlx.envs.grf import ego_state

                np.testing.assert_allclose(obs["state"], ego_state(env._raw[0], 3), atol=1e-6)
            keys.add(keyer.keys(obs["obs"].astype(np.float64)).tobytes())
            obs, _, term, trunc, _ = env.step(rng.integers(env.n_actions, size=3))
            if term or trunc:
                obs, _ = env.reset()
        return env, keys
    finally:
        env.close()


def test_real_grf_ego_observation_matches_raw_and_gives_many_formations():
    env, keys = _random_keys("ego")
    assert env.obs_dim == 26 and env.observation_space["obs"].shape == (3, 26)
    assert env.state_dim == 26 and len(env.state_names) == 26
    assert len(keys) > 50, len(keys)


def test_real_grf_simple115_gives_few_formations():
    # The degenerate case FoX warns about: rows that differ only in the active-player one-hot.
    _, keys = _random_keys("simple115v2")
    _, ego = _random_keys("ego")
    assert len(ego) > 5 * len(keys)


def test_ego_state_of_3v1_equals_hand_computed_vector():
    from marlx.envs.grf import ego_state, ego_state_names

    state = ego_state(RAW, n_agents=3)
    expected = [0.6, 0.0, 0.7, 0.2, 0.7, -0.2,            # our 3 attackers (left_team[-3:])
                0.01, 0.0, 0.0, 0.02, -0.01, 0.01,         # their directions
                -1.0, 0.0, -0.75, 0.1,                      # right team
                0.0, 0.0, 0.0, -0.01,                       # right directions
                0.62, 0.0, 0.1, 0.0, 0.001, -0.002]         # ball, ball direction
    np.testing.assert_allclose(state, expected, atol=1e-6)
    names = ego_state_names(3, 2)
    assert len(names) == 26 and names[12] == "opponent_0_x" and names[20] == "ball_x"
