"""Conformance of every registered, installed env with the team view; conversions both ways."""

import numpy as np
import pytest

from marlx.envs import AVAIL, OBS, POSITIONS, STATE, env_names, get_spec, make_env
from marlx.envs.convert import MultiAgentTeamEnv, TeamToMultiAgentEnv
from marlx.errors import ConfigKeyError, UnknownNameError

INSTALLED = [n for n in env_names() if get_spec(n).installed()]
# SMAX compiles for seconds per env; its own tests cover it.
FAST = [n for n in INSTALLED if not n.startswith(("smax/", "grf/", "smac/"))]


def random_joint_action(obs, rng):
    return np.array([rng.choice(np.flatnonzero(row)) for row in obs[AVAIL]])


@pytest.mark.parametrize("name", FAST)
def test_team_view_conformance(name):
    env = make_env(name)
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs), name
    assert obs[OBS].shape == (env.n_agents, env.obs_dim)
    assert obs[STATE].shape == (env.state_dim,)
    assert obs[AVAIL].shape == (env.n_agents, env.n_actions)
    assert (POSITIONS in obs) == bool(env.position_dim)
    assert env.action_space.nvec.tolist() == [env.n_actions] * env.n_agents
    assert ("success" in info) == env.reports_success
    if env.state_names is not None:
        assert len(env.state_names) == env.state_dim
    rng = np.random.default_rng(0)
    for t in range(env.episode_limit + 1):
        assert obs[AVAIL].sum(axis=1).min() >= 1, "every agent needs an available action"
        obs, reward, terminated, truncated, info = env.step(random_joint_action(obs, rng))
        assert env.observation_space.contains(obs)
        assert isinstance(reward, float) and isinstance(terminated, bool) and isinstance(truncated, bool)
        assert not (terminated and truncated)
        if terminated or truncated:
            break
    assert terminated or truncated, "episodes must end by the episode limit"
    if truncated:
        assert t + 1 == env.episode_limit


@pytest.mark.parametrize("name", FAST)
def test_seeding_gives_identical_episodes(name):
    def rollout():
        env = make_env(name)
        obs, _ = env.reset(seed=11)
        rng = np.random.default_rng(5)
        trace = [obs[STATE].copy()]
        for _ in range(20):
            obs, r, te, tr, _ = env.step(random_joint_action(obs, rng))
            trace.append(np.append(obs[STATE], r))
            if te or tr:
                break
        return trace

    a, b = rollout(), rollout()
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_team_to_multi_agent_and_back_round_trip():
    team = make_env("builtin/push_box", size=5)
    ma = TeamToMultiAgentEnv(team, add_agent_id=False)
    back = MultiAgentTeamEnv(ma, episode_limit=team.episode_limit)
    reference = make_env("builtin/push_box", size=5)
    # the same seed drives both: the wrapped env receives a seed drawn from the outer env's rng
    obs_back, _ = back.reset(seed=1)
    seed = int(np.random.default_rng(1).integers(2**31 - 1))
    obs_ref, _ = reference.reset(seed=seed)
    rng = np.random.default_rng(0)
    for _ in range(30):
        for key in (OBS, STATE, AVAIL):
            np.testing.assert_array_equal(obs_back[key], obs_ref[key])
        a = random_joint_action(obs_ref, rng)
        obs_back, r1, te1, tr1, _ = back.step(a)
        obs_ref, r2, te2, tr2, _ = reference.step(a)
        assert (r1, te1, tr1) == (r2, te2, tr2)
        if te2 or tr2:
            break


def test_multi_agent_view_spaces_and_shared_reward():
    team = make_env("builtin/predator_prey")
    ma = TeamToMultiAgentEnv(team, add_agent_id=True, action_mask=True)
    obs, infos = ma.reset(seed=0)
    assert set(obs) == set(ma.agents) == {"agent_0", "agent_1", "agent_2"}
    for aid in ma.agents:
        assert ma.observation_spaces[aid].contains(obs[aid])
        assert obs[aid]["observations"].shape == (team.obs_dim + 3,)
    obs, rew, te, tr, infos = ma.step({a: 0 for a in ma.agents})
    assert len(set(rew.values())) == 1 and "__all__" in te and "__all__" in tr


def test_unknown_env_name_lists_valid_names():
    with pytest.raises(UnknownNameError) as e:
        make_env("builtin/push_bx")
    assert "builtin/push_box" in str(e.value) and "did you mean" in str(e.value)


def test_bad_env_config_key_names_valid_keys():
    with pytest.raises(ConfigKeyError) as e:
        make_env("builtin/push_box", sise=4)
    assert "'sise'" in str(e.value) and "size" in str(e.value)


def test_multi_agent_team_env_stops_acting_for_done_agents_and_resets_them():
    import gymnasium as gym
    from ray.rllib.env.multi_agent_env import MultiAgentEnv

    class TwoAgents(MultiAgentEnv):
        """Agent b is done after one step; a after three."""

        def __init__(self):
            super().__init__()
            self.agents = self.possible_agents = ["a", "b"]
            self.observation_spaces = {k: gym.spaces.Box(0, 1, (1,), np.float32) for k in self.agents}
            self.action_spaces = {k: gym.spaces.Discrete(2) for k in self.agents}
            self.seen = []

        def reset(self, *, seed=None, options=None):
            self.t = 0
            return {k: np.zeros(1, np.float32) for k in self.agents}, {}

        def step(self, action_dict):
            self.seen.append(sorted(action_dict))
            self.t += 1
            obs = {k: np.ones(1, np.float32) for k in action_dict}
            terms = {k: (k == "b") or self.t >= 3 for k in action_dict}
            terms["__all__"] = self.t >= 3
            return obs, {k: 1.0 for k in action_dict}, terms, {"__all__": False}, {}

    inner = TwoAgents()
    team = MultiAgentTeamEnv(inner, episode_limit=10)
    for _ in range(2):
        team.reset(seed=0)
        inner.seen.clear()
        done = False
        while not done:
            _, _, te, tr, _ = team.step(np.zeros(2, np.int64))
            done = te or tr
        assert inner.seen == [["a", "b"], ["a"], ["a"]]
    assert team.get_avail_actions()[1].tolist() == [1.0, 0.0]  # a done agent may only take action 0


def test_returned_observations_do_not_change_after_later_steps():
    env = make_env("mpe/simple_spread")
    obs, _ = env.reset(seed=0)
    before = obs[OBS].copy()
    env.step(np.zeros(env.n_agents, np.int64))
    np.testing.assert_array_equal(obs[OBS], before)
