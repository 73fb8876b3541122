"""SMAC (StarCraft II) team adapter, tested against a small FAKE StarCraft2Env.

StarCraft II cannot run on these machines, so these tests install, as ``smac.env.StarCraft2Env``, a
tiny stand-in that follows the documented API of oxwhirl/smac's StarCraft2Env (constructor options,
``get_env_info``, ``reset() -> (obs, state)``, ``step(actions) -> (reward, terminated, info)`` with
``battle_won`` and, with ``continuing_episode``, ``episode_limit``; ``get_obs``, ``get_state``,
``get_avail_actions`` with 0 = no-op (dead only), 1 = stop, 2-5 = moves, 6+ = attack;
``get_unit_by_id(i).pos.x/.y/.health``; the game seeded at launch). The game itself is a toy: allies
on a line shoot one enemy in range. What is tested is the adapter's use of that API, not StarCraft.
"""

import importlib.machinery
import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest

from marlx.envs import make_env
from marlx.envs.registry import get_spec
from marlx.envs.smac import SMAC_MAPS, SMACTeamEnv, import_starcraft2env
from marlx.errors import MarlxError, MissingDependencyError


class FakeStarCraft2Env:
    """Documented StarCraft2Env API over a toy battle (see the module docstring)."""

    launches: list = []  # (map_name, seed) of every game launched, across instances

    def __init__(self, map_name="8m", step_mul=8, difficulty="7", seed=None, continuing_episode=False,
                 reward_sparse=False, reward_win=200, reward_scale=True, **kwargs):
        self.map_name, self.difficulty, self._seed = map_name, difficulty, seed
        self.continuing_episode, self.reward_sparse, self.reward_win = continuing_episode, reward_sparse, reward_win
        self.n_agents, self.n_enemies = 2, 1
        self.episode_limit = 6
        self.n_actions = 6 + self.n_enemies
        self._episode_count = 0
        self._launched = False
        self.closed = False

    # -- lifecycle --
    def _launch(self):
        FakeStarCraft2Env.launches.append((self.map_name, self._seed))
        self._rng = np.random.default_rng(self._seed)
        self._launched = True

    def reset(self):
        if not self._launched:
            self._launch()
        self._episode_steps = 0
        self.ally_x = self._rng.uniform(0, 3, self.n_agents)
        self.ally_hp = np.full(self.n_agents, 45.0)
        self.enemy_x, self.enemy_hp = 6.0, 60.0
        return self.get_obs(), self.get_state()

    def close(self):
        self.closed = True

    def seed(self):
        return self._seed

    def get_env_info(self):
        return {"state_shape": 3 * self.n_agents + 2, "obs_shape": 4, "n_actions": self.n_actions,
                "n_agents": self.n_agents, "episode_limit": self.episode_limit}

    # -- game --
    def get_avail_agent_actions(self, a_id):
        avail = [0] * self.n_actions
        if self.ally_hp[a_id] <= 0:
            avail[0] = 1
            return avail
        avail[1:6] = [1] * 5
        avail[6] = int(self.enemy_hp > 0 and abs(self.enemy_x - self.ally_x[a_id]) <= 2.0)
        return avail

    def get_avail_actions(self):
        return [self.get_avail_agent_actions(i) for i in range(self.n_agents)]

    def step(self, actions):
        actions = [int(a) for a in actions]
        for a_id, action in enumerate(actions):
            assert self.get_avail_agent_actions(a_id)[action] == 1, (a_id, action)
        before = self.enemy_hp
        for a_id, action in enumerate(actions):
            if action == 4:
                self.ally_x[a_id] += 1.0  # east, toward the enemy
            elif action == 5:
                self.ally_x[a_id] -= 1.0
            elif action == 6:
                self.enemy_hp -= 20.0 + self._rng.integers(0, 3)
        # The enemy shoots the closest live ally in range.
        live = np.flatnonzero(self.ally_hp > 0)
        close = [i for i in live if abs(self.enemy_x - self.ally_x[i]) <= 2.0]
        if self.enemy_hp > 0 and close:
            self.ally_hp[close[0]] = max(0.0, self.ally_hp[close[0]] - 25.0)
        self._episode_steps += 1
        reward = 0.0 if self.reward_sparse else max(0.0, before - max(self.enemy_hp, 0.0))
        info = {"battle_won": False}
        terminated = False
        if self.enemy_hp <= 0:
            terminated, info["battle_won"] = True, True
            reward = 1 if self.reward_sparse else reward + self.reward_win
        elif (self.ally_hp <= 0).all():
            terminated = True
            reward = -1 if self.reward_sparse else reward
        elif self._episode_steps >= self.episode_limit:
            terminated = True
            if self.continuing_episode:
                info["episode_limit"] = True
        return reward, terminated, info

    def get_obs(self):
        return [np.array([self.ally_x[i], self.ally_hp[i] / 45, self.enemy_x - self.ally_x[i], self.enemy_hp / 60],
                         np.float32) for i in range(self.n_agents)]

    def get_state(self):
        return np.concatenate([self.ally_x, self.ally_hp / 45, [a[6] for a in self.get_avail_actions()],
                               [self.enemy_x, self.enemy_hp / 60]]).astype(np.float32)

    def get_unit_by_id(self, a_id):
        return SimpleNamespace(pos=SimpleNamespace(x=float(self.ally_x[a_id]), y=0.0), health=self.ally_hp[a_id])


def _package(name, **attrs):
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    module.__path__ = []
    module.__dict__.update(attrs)
    return module


@pytest.fixture
def fake_smac(monkeypatch):
    """StarCraft's SMAC (the fake game) as `smac.env`."""
    FakeStarCraft2Env.launches = []
    monkeypatch.setitem(sys.modules, "smac", _package("smac"))
    monkeypatch.setitem(sys.modules, "smac.env", _package("smac.env", StarCraft2Env=FakeStarCraft2Env))
    return FakeStarCraft2Env


def march_and_shoot(avail):
    return np.array([6 if a[6] else (4 if a[4] else 0) for a in avail])


def test_every_smac_map_is_registered():
    assert len(SMAC_MAPS) == 22
    for name in SMAC_MAPS:
        spec = get_spec(f"smac/{name}")
        assert spec.requires == ("smac",) and "SC2PATH" in spec.install


def test_shapes_and_options_reach_starcraft2env(fake_smac, monkeypatch):
    monkeypatch.delenv("SC2PATH", raising=False)
    env = make_env("smac/2m_vs_1z", difficulty="A", reward_sparse=True, sc2_path="/opt/sc2", step_mul=4)
    import os

    assert os.environ["SC2PATH"] == "/opt/sc2"
    assert env.env.map_name == "2m_vs_1z" and env.env.difficulty == "A" and env.env.reward_sparse
    assert env.env.continuing_episode  # only used by SMAC to flag the time limit
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs["obs"].shape == (2, 4) and obs["state"].shape == (8,) and obs["avail"].shape == (2, 7)
    np.testing.assert_allclose(obs["positions"][:, 0], env.env.ally_x)
    env.close()
    assert env.env.closed


def test_win_terminates_with_success_and_masks_pass_through(fake_smac):
    env = SMACTeamEnv("3m", reward_sparse=True, seed=1)
    obs, _ = env.reset()
    rewards = []
    for _ in range(env.episode_limit):
        np.testing.assert_array_equal(obs["avail"], np.asarray(env.env.get_avail_actions(), np.float32))
        obs, r, term, trunc, info = env.step(march_and_shoot(obs["avail"]))
        rewards.append(r)
        if term or trunc:
            break
    assert term and not trunc and info["success"] and info["battle_won"]
    assert rewards[-1] == 1.0 and all(r == 0.0 for r in rewards[:-1])


def test_dead_agents_only_no_op_and_loss(fake_smac):
    env = SMACTeamEnv("3m", seed=2)
    obs, _ = env.reset()
    env.env.enemy_hp = 1e9  # an enemy that cannot be beaten
    env.env.ally_x[:] = 5.5  # both allies in its range
    saw_dead = False
    for _ in range(env.episode_limit):
        obs, r, term, trunc, info = env.step(np.where(obs["avail"][:, 0] == 1, 0, 1))
        dead = env.env.ally_hp <= 0
        for i in np.flatnonzero(dead):
            saw_dead = True
            assert obs["avail"][i].tolist() == [1, 0, 0, 0, 0, 0, 0]
        if term or trunc:
            break
    assert saw_dead and term and not trunc and not info["success"]


@pytest.mark.parametrize("flagged", [True, False])
def test_time_limit_truncates(fake_smac, monkeypatch, flagged):
    if not flagged:  # an older SMAC that does not flag the limit: the adapter counts steps itself
        monkeypatch.setattr(FakeStarCraft2Env, "step", _without_limit_flag(FakeStarCraft2Env.step))
    env = SMACTeamEnv("3m", seed=3)
    obs, _ = env.reset()
    for t in range(env.episode_limit):
        obs, r, term, trunc, info = env.step(np.ones(2, int))  # stop: nobody fights
        assert (term, trunc) == (False, t == env.episode_limit - 1)
    assert not info["success"]


def _without_limit_flag(step):
    def wrapped(self, actions):
        reward, terminated, info = step(self, actions)
        info.pop("episode_limit", None)
        return reward, terminated, info

    return wrapped


def _episode(env, **reset_kwargs):
    obs, _ = env.reset(**reset_kwargs)
    trace = [obs["obs"]]
    while True:
        obs, r, term, trunc, _ = env.step(march_and_shoot(obs["avail"]))
        trace += [obs["obs"], r]
        if term or trunc:
            return trace


def test_seeded_reset_relaunches_the_game(fake_smac):
    env = SMACTeamEnv("3m", seed=7)
    first = _episode(env, seed=7)
    assert FakeStarCraft2Env.launches == [("3m", 7)]  # same seed as launched: no relaunch
    _episode(env)  # unseeded: the game goes on
    assert len(FakeStarCraft2Env.launches) == 1
    other = _episode(env, seed=8)
    assert FakeStarCraft2Env.launches[-1] == ("3m", 8)
    again = _episode(env, seed=7)
    assert FakeStarCraft2Env.launches[-1] == ("3m", 7)
    assert len(first) == len(again)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_smac3_is_named_as_the_wrong_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "smac", _package("smac", version="2.3.0"))
    monkeypatch.setitem(sys.modules, "smac.facade", _package("smac.facade"))
    monkeypatch.delitem(sys.modules, "smac.env", raising=False)
    with pytest.raises(MarlxError, match="SMAC3, the hyper-parameter optimiser") as err:
        import_starcraft2env()
    assert "pip uninstall smac" in str(err.value) and "oxwhirl/smac" in str(err.value)
    with pytest.raises(MarlxError, match="SMAC3"):
        make_env("smac/3m")


def test_missing_smac_says_how_to_install(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] == "smac" else real_find_spec(name, *a))
    with pytest.raises(MissingDependencyError, match="oxwhirl/smac"):
        import_starcraft2env()
