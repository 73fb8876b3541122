"""The gymnasium multi-agent adapter (EPyMARL's convention): padding, masks, team reward, truncation at the
env's own time limit, success rules of LBF and RWARE, and names resolved by import path."""

import gymnasium as gym
import numpy as np
import pytest

from marlx.envs import AVAIL, OBS, POSITIONS, STATE, get_spec, make_env
from marlx.envs.gym_team import GymTeamEnv
from marlx.errors import MarlxError

pytest.importorskip("lbforaging")
pytest.importorskip("rware")


class UnevenPair(gym.Env):
    """Two agents with different observation and action sizes, masks in info, per-agent done flags.

    Agent 0 sees Box(3), has 3 actions; agent 1 sees Box(2), has 2 actions. Rewards are [1, 2] per step;
    agent 1 is done after 2 steps, agent 0 after 4 (the episode ends when both are).
    """

    def __init__(self):
        self.observation_space = gym.spaces.Tuple((gym.spaces.Box(-9, 9, (3,)), gym.spaces.Box(-9, 9, (2,))))
        self.action_space = gym.spaces.Tuple((gym.spaces.Discrete(3), gym.spaces.Discrete(2)))
        self.received = []

    def _obs(self):
        return (np.full(3, self.t, np.float32), np.full(2, -self.t, np.float32))

    def _info(self):
        return {"action_mask": [[1, 0, 1], [0, 1]], "extra": self.t}

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return self._obs(), self._info()

    def step(self, actions):
        self.received.append(actions)
        self.t += 1
        return self._obs(), [1.0, 2.0], [self.t >= 4, self.t >= 2], False, self._info()


gym.register("marlx-test/UnevenPair-v0", entry_point=UnevenPair)


def test_uneven_agents_are_padded_masked_and_summed():
    env = GymTeamEnv("marlx-test/UnevenPair-v0", time_limit=10)
    assert (env.n_agents, env.n_actions, env.obs_dim, env.state_dim, env.position_dim) == (2, 3, 3, 6, 0)
    obs, info = env.reset(seed=0)
    assert "success" not in info and info["extra"] == 0  # an env without a success rule reports none
    obs, r, te, tr, info = env.step(np.array([2, 1]))
    assert env.env.unwrapped.received == [(2, 1)]
    np.testing.assert_array_equal(obs[OBS], [[1, 1, 1], [-1, -1, 0]])  # agent 1 zero-padded
    np.testing.assert_array_equal(obs[STATE], [1, 1, 1, -1, -1, 0])  # concatenated observations
    np.testing.assert_array_equal(obs[AVAIL], [[1, 0, 1], [0, 1, 0]])  # the padded action is unavailable
    assert (r, te, tr) == (3.0, False, False)
    for _ in range(3):
        obs, r, te, tr, info = env.step(np.array([0, 1]))
    assert (te, tr, env._t) == (True, False, 4)  # all agents done -> terminated
    mean_env = GymTeamEnv("marlx-test/UnevenPair-v0", time_limit=10, team_reward="mean")
    mean_env.reset(seed=0)
    assert mean_env.step(np.array([0, 1]))[1] == 1.5


def test_time_limit_truncates_and_sets_the_envs_own_limit():
    env = make_env("lbf/8x8-2p-2f-coop", time_limit=7)
    assert env.env.unwrapped._max_episode_steps == 7 and env.episode_limit == 7
    obs, _ = env.reset(seed=0)
    for t in range(1, 8):
        obs, r, te, tr, info = env.step(np.zeros(2, np.int64))  # nobody moves: nothing is ever loaded
        if te or tr:
            break
    # LBF itself says done at its limit; without all food collected that is a truncation, not a termination
    assert (t, te, tr, info["success"]) == (7, False, True, False)


def test_lbf_success_means_all_food_and_a_return_of_one():
    """LBF normalises rewards so that collecting all food pays exactly 1 in total over the team."""
    env = make_env("lbf/5x5-2p-1f-coop")
    rng = np.random.default_rng(0)
    outcomes = []
    for ep in range(300):
        obs, _ = env.reset(seed=ep)
        ret = 0.0
        while True:
            obs, r, te, tr, info = env.step(rng.integers(0, env.n_actions, env.n_agents))
            ret += r
            if te or tr:
                break
        outcomes.append((info["success"], te, round(ret, 6)))
        assert POSITIONS in obs and obs[POSITIONS].shape == (2, 2)
    wins = [o for o in outcomes if o[0]]
    assert wins, "random play collects the single food of 5x5-2p-1f-coop in some of 300 episodes"
    assert all(o == (True, True, 1.0) for o in wins)
    assert all(o[1:] == (False, 0.0) for o in outcomes if not o[0])


def test_rware_success_is_a_delivery():
    env = make_env("rware/tiny-2ag", time_limit=5)
    env.reset(seed=0)
    rewards = np.array([0.0, 1.0])
    assert env._success_fn(env.env.unwrapped, rewards, False) is True
    assert env._success_fn(env.env.unwrapped, np.zeros(2), False) is False
    assert env._success_fn(env.env.unwrapped, np.zeros(2), True) is True  # once delivered, the episode succeeded
    obs, _ = env.reset(seed=0)
    for _ in range(5):
        obs, r, te, tr, info = env.step(np.zeros(2, np.int64))
    assert (tr, info["success"], r) == (True, False, 0.0)


def test_import_path_names_a_gymnasium_id():
    spec = get_spec("lbforaging:Foraging-8x8-2p-2f-coop-v3")
    assert spec.entry_point == "marlx.envs.gym_team:make_gym_team"
    env = make_env("lbforaging:Foraging-8x8-2p-2f-coop-v3", time_limit=50)
    assert (env.n_agents, env.n_actions, env.obs_dim, env.episode_limit) == (2, 6, 12, 50)


def test_bad_import_paths_are_one_clear_error():
    with pytest.raises(MarlxError, match="cannot import module 'no_such_pkg'"):
        get_spec("no_such_pkg:Thing-v0")
    with pytest.raises(MarlxError, match="registered no gymnasium id 'Foraging-9x9-v9'"):
        get_spec("lbforaging:Foraging-9x9-v9")
    with pytest.raises(MarlxError, match="not a multi-agent env in EPyMARL's convention"):
        make_env("gymnasium:CartPole-v1", time_limit=10)
