"""Google Research Football team adapter, run for real (skipped when gfootball is not installed)."""

import os
import warnings

import numpy as np
import pytest

pytest.importorskip("gfootball")

from marlx.envs import make_env  # noqa: E402
from marlx.envs.grf import GRF_SCENARIOS, SPARSE_EPISODE_LIMIT, GRFTeamEnv  # noqa: E402
from marlx.envs.registry import get_spec  # noqa: E402

RIGHT, SHOT = 5, 12  # gfootball's default action set

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
warnings.filterwarnings("ignore", module="gym")


@pytest.fixture(scope="module")
def sparse_3v1():
    env = GRFTeamEnv("academy_3_vs_1_with_keeper", reward="sparse")
    yield env
    env.close()


def test_every_gfootball_scenario_is_registered():
    import gfootball
    from gfootball.env import config as gf_config

    folder = os.path.join(os.path.dirname(gfootball.__file__), "scenarios")
    shipped = {f[:-3] for f in os.listdir(folder) if f.endswith(".py") and f != "__init__.py"}
    assert set(GRF_SCENARIOS) == shipped - {"test_example_multiagent"}
    for name, n in GRF_SCENARIOS.items():
        assert get_spec(f"grf/{name}").installed()
        scenario = gf_config.Config({"level": name}).ScenarioConfig()
        assert 1 <= n <= max(1, len(scenario.left_team) - 1), name  # never more than the field players


def test_shapes_state_and_positions_from_raw_observations(sparse_3v1):
    env = sparse_3v1
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs["obs"].shape == (3, 115) and obs["state"].shape == (104,) and len(env.state_names) == 104
    assert obs["avail"].shape == (3, 19) and obs["avail"].all()
    assert env.episode_limit == SPARSE_EPISODE_LIMIT
    for _ in range(5):
        raw = env._raw
        # The state is simple115v2 without the "active player" one-hot, the same for every agent.
        for i in range(3):
            np.testing.assert_allclose(obs["state"][:97], obs["obs"][i][:97])
            np.testing.assert_allclose(obs["state"][97:], obs["obs"][i][108:])
            assert obs["obs"][i][97 + raw[i]["active"]] == 1.0
            np.testing.assert_allclose(obs["positions"][i], raw[i]["left_team"][raw[i]["active"]], atol=1e-6)
        np.testing.assert_allclose(obs["state"][88:91], raw[0]["ball"], atol=1e-6)
        assert env.state_names[88] == "ball_x"
        obs, *_ = env.step(np.full(3, RIGHT))


def test_sparse_goal_gives_100_and_success():
    env = make_env("grf/academy_empty_goal_close", reward="sparse")
    obs, _ = env.reset(seed=0)
    rewards = []
    for _ in range(env.episode_limit):
        obs, r, term, trunc, info = env.step(np.array([SHOT]))
        rewards.append(r)
        if term or trunc:
            break
    assert term and not trunc and info["success"] and info["score"] == (1, 0)
    assert rewards[-1] == 100.0 and set(rewards[:-1]) <= {0.0}
    env.close()


@pytest.mark.parametrize("policy", ["run_back", "random"])
def test_sparse_other_ends_give_minus_one(sparse_3v1, policy):
    env = sparse_3v1
    rng = np.random.default_rng(0)
    half_rule_fired = False
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        for t in range(env.episode_limit):
            action = np.full(3, 1) if policy == "run_back" else rng.integers(0, 19, 3)
            obs, r, term, trunc, info = env.step(action)
            if not (term or trunc):
                assert r == 0.0
                assert not env._in_our_half(), "the half-line rule must end the episode"
                continue
            assert r == -1.0 and not info["success"]
            raw = env._raw[0]
            players = env._team_players()
            assert players == [1, 2, 3]  # CDS: left_team[-3:], the keeper (index 0) excluded
            in_half = raw["ball"][0] < 0 or (raw["left_team"][players, 0] < 0).any()
            half_rule_fired |= bool(in_half)
            break
    if policy == "run_back":  # everybody runs to our goal: the half-line rule ends it
        assert half_rule_fired


def test_sparse_time_limit_truncates_with_minus_one():
    env = GRFTeamEnv("academy_3_vs_1_with_keeper", reward="sparse", episode_limit=3)
    env.reset(seed=0)
    for t in range(3):
        _, r, term, trunc, _ = env.step(np.zeros(3, int))  # idle: nothing ends the episode this early
        assert (term, trunc, r) == (False, t == 2, -1.0 if t == 2 else 0.0)
    env.close()


def test_sparse_time_limit_terminates_when_asked():
    # F14: the released FoX/CDS env makes the 150-step limit a termination (reward -1, no bootstrap)
    env = GRFTeamEnv("academy_3_vs_1_with_keeper", reward="sparse", episode_limit=3, time_limit_terminates=True)
    env.reset(seed=0)
    for t in range(3):
        _, r, term, trunc, _ = env.step(np.zeros(3, int))
        assert (term, trunc, r) == (t == 2, False, -1.0 if t == 2 else 0.0)
    env.close()


def test_scoring_modes_and_team_reward():
    env = GRFTeamEnv("academy_empty_goal_close", reward="scoring")
    assert env.episode_limit == 400  # the scenario's game_duration
    env.reset(seed=0)
    for _ in range(60):
        _, r, term, trunc, info = env.step(np.array([SHOT]))
        if term or trunc:
            break
    assert term and r == 1.0 and info["success"]
    env.close()
    env = GRFTeamEnv("academy_3_vs_1_with_keeper", reward="scoring,checkpoints", team_reward="sum")
    env.reset(seed=0)
    total = 0.0
    for _ in range(10):
        _, r, term, trunc, _ = env.step(np.full(3, RIGHT))
        total += r
        if term or trunc:
            break
    assert total > 0.0  # running toward the goal with the ball collects checkpoint rewards
    env.close()


def _trace(env, seed, steps=40):
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(1)
    out = [obs["obs"]]
    for _ in range(steps):
        obs, r, term, trunc, _ = env.step(rng.integers(0, 19, 3))
        out += [obs["obs"], r]
        if term or trunc:
            obs, _ = env.reset()
            out.append(obs["obs"])
    return out


def test_seeding_replays_episodes(sparse_3v1):
    a, b = _trace(sparse_3v1, 11), _trace(sparse_3v1, 11)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    c = _trace(sparse_3v1, 12)
    assert len(a) != len(c) or any(not np.array_equal(x, y) for x, y in zip(a, c))
