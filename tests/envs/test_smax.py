"""SMAX (JaxMARL) team adapters, run for real on the CPU.

Every test uses map 3m so that the one jitted step is compiled once for the unbatched env and once
for the batched one (each compile costs 10-60 s on a busy 2-core machine).
"""

import numpy as np
import pytest

from marlx.envs.smax import configure_jax_for_cpu

configure_jax_for_cpu()  # before jax is first imported (importorskip below imports it)
pytest.importorskip("jaxmarl")

from marlx.envs import make_env  # noqa: E402
from marlx.envs.registry import env_names, get_spec  # noqa: E402
from marlx.envs.smax import SMAX_MAPS, STOP_ACTION, SMAXTeamEnv, SMAXVectorTeamEnv  # noqa: E402

MARINE_RANGE = 5.0  # SMAX unit_type_attack_ranges[marine]
MARINE_COOLDOWN = 0.61  # SMAX unit_type_weapon_cooldowns[marine]
MAP_SIZE = 32.0  # 3m's map_width and map_height
N_MOVE = 5  # 4 moves + stop, then one attack action per enemy


def random_actions(rng, avail):
    return np.array([rng.choice(np.flatnonzero(a)) for a in avail])


def focus_fire(avail):
    """Attack the lowest-index enemy in range, else move east (toward the enemies)."""
    acts = []
    for a in avail:
        attacks = np.flatnonzero(a[N_MOVE:])
        acts.append(N_MOVE + attacks[0] if attacks.size else (1 if a[1] else STOP_ACTION))
    return np.array(acts)


@pytest.fixture(scope="module")
def env():
    return SMAXTeamEnv("3m")


@pytest.fixture(scope="module")
def sparse_env(env):
    return SMAXTeamEnv("3m", reward="sparse")  # same map and options: shares env's compiled step


def test_every_jaxmarl_map_is_registered():
    from jaxmarl.environments.smax.smax_env import MAP_NAME_TO_SCENARIO

    assert set(SMAX_MAPS) == set(MAP_NAME_TO_SCENARIO)
    for name, (allies, enemies) in SMAX_MAPS.items():
        scenario = MAP_NAME_TO_SCENARIO[name]
        assert (scenario.num_allies, scenario.num_enemies) == (allies, enemies)
        assert f"smax/{name}" in env_names()
        assert get_spec(f"smax/{name}").installed()


def test_shapes_spaces_and_state_names(env):
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs["obs"].shape == (3, env.obs_dim) and obs["state"].shape == (env.state_dim,)
    assert obs["avail"].shape == (3, 3 + N_MOVE) and obs["positions"].shape == (3, 2)
    assert len(env.state_names) == env.state_dim
    assert env.action_space.nvec.tolist() == [8, 8, 8]
    assert info["success"] is False
    # The registry builds the same env (and both views share the compiled core).
    made = make_env("smax/3m")
    assert made.core is env.core


def _unit_features(env, state):
    """(health, x, y) of every unit from the named world state, x and y back in map units (the state holds
    ``(x - 16) / 32`` for live units, SMAC's scaling)."""
    names = env.state_names
    n_units = 6
    get = lambda u, f: state[names.index(f"unit{u}_{f}")]  # noqa: E731
    return np.array([[get(u, "health"), get(u, "position_x") * MAP_SIZE + MAP_SIZE / 2,
                      get(u, "position_y") * MAP_SIZE + MAP_SIZE / 2] for u in range(n_units)])


def test_state_is_scaled_as_smac_scales_it(env):
    """The default state is JaxMARL's world_state with SMAC's scaling, checked value by value against the raw one
    (``state_normalise=False``) on the same seed and actions: positions ``(x - 16) / 32``, remaining cooldown over
    the marine's 0.61 s (JaxMARL's negative cooldowns clipped at 0), dead units all zero, the rest unchanged."""
    raw_env = SMAXTeamEnv("3m", state_normalise=False)
    assert raw_env.core is not env.core
    names = env.state_names
    col = {f: [names.index(f"unit{u}_{f}") for u in range(6)] for f in ("health", "position_x", "position_y",
                                                                          "weapon_cooldown")}
    obs, _ = env.reset(seed=4)
    raw, _ = raw_env.reset(seed=4)
    rng = np.random.default_rng(4)
    saw = {"dead": False, "negative_raw_cooldown": False, "cooling": False}
    for _ in range(120):
        s, r = obs["state"], raw["state"]
        np.testing.assert_array_equal(obs["obs"], raw["obs"])
        alive = r[col["health"]] > 0
        for u in range(6):
            if not alive[u]:
                saw["dead"] = True
                own = [i for i, n in enumerate(names) if n.startswith(f"unit{u}_") and not n.endswith(("_team", "_type"))]
                assert len(own) == 10 and not s[own].any()
                continue
            assert s[col["position_x"][u]] == pytest.approx((r[col["position_x"][u]] - 16.0) / 32.0, abs=1e-5)
            assert s[col["position_y"][u]] == pytest.approx((r[col["position_y"][u]] - 16.0) / 32.0, abs=1e-5)
            cd = r[col["weapon_cooldown"][u]]
            saw["negative_raw_cooldown"] |= bool(cd < 0)
            saw["cooling"] |= bool(cd > 0)
            assert s[col["weapon_cooldown"][u]] == pytest.approx(max(cd, 0.0) / MARINE_COOLDOWN, abs=1e-5)
            assert s[col["health"][u]] == r[col["health"][u]]
        np.testing.assert_array_equal(s[-12:], r[-12:])  # teams and unit types
        assert np.abs(s).max() <= 1.0 + 2 / 16 / MARINE_COOLDOWN  # cooldown can exceed its type's by 2/16 s
        actions = random_actions(rng, obs["avail"])
        obs, rew, term, trunc, _ = env.step(actions)
        raw, raw_rew, *_ = raw_env.step(actions)
        assert rew == raw_rew
        if term or trunc:
            obs, _ = env.reset()
            raw, _ = raw_env.reset()
    assert all(saw.values()), saw


def test_masks_follow_range_and_death(env):
    rng = np.random.default_rng(1)
    obs, _ = env.reset(seed=1)
    saw_dead = saw_attack = False
    for _ in range(300):
        units = _unit_features(env, obs["state"])
        alive = units[:, 0] > 0
        for i in range(3):
            avail = obs["avail"][i]
            assert avail[STOP_ACTION] == 1
            if not alive[i]:
                saw_dead = True
                assert avail.sum() == 1, "a dead ally can only stop"
                continue
            assert avail[:4].all()
            for j in range(3):
                in_range = alive[3 + j] and np.linalg.norm(units[3 + j, 1:] - units[i, 1:]) < MARINE_RANGE
                assert avail[N_MOVE + j] == float(in_range), (i, j)
                saw_attack |= bool(in_range)
            np.testing.assert_allclose(obs["positions"][i], units[i, 1:], atol=1e-5)
        obs, _, term, trunc, _ = env.step(random_actions(rng, obs["avail"]))
        if term or trunc:
            obs, _ = env.reset()
    assert saw_dead and saw_attack


def _play(env, seed, n_steps, policy_seed):
    rng = np.random.default_rng(policy_seed)
    obs, _ = env.reset(seed=seed)
    trace = [obs["obs"].copy()]
    for _ in range(n_steps):
        obs, r, term, trunc, info = env.step(random_actions(rng, obs["avail"]))
        trace += [obs["obs"].copy(), r, term, trunc, info["success"]]
        if term or trunc:
            obs, _ = env.reset()
            trace.append(obs["obs"].copy())
    return trace


def test_seeding_replays_episodes(env):
    a, b = _play(env, 5, 60, 0), _play(env, 5, 60, 0)  # 60 steps: several episodes of 3m
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    c = _play(env, 6, 1, 0)
    assert not np.array_equal(a[0], c[0])


def test_termination_and_sparse_reward(sparse_env):
    env = sparse_env
    outcomes = set()
    for episode in range(12):
        obs, _ = env.reset(seed=100 + episode)
        rng = np.random.default_rng(episode)
        for t in range(env.episode_limit):
            acts = focus_fire(obs["avail"]) if episode % 2 == 0 else random_actions(rng, obs["avail"])
            obs, r, term, trunc, info = env.step(acts)
            if not (term or trunc):
                assert r == 0.0
                continue
            units = _unit_features(env, obs["state"])
            allies_alive, enemies_alive = units[:3, 0] > 0, units[3:, 0] > 0
            assert term and not trunc
            assert not allies_alive.any() or not enemies_alive.any()
            assert info["success"] == (allies_alive.any() and not enemies_alive.any())
            assert r == (1.0 if info["success"] else -1.0 if allies_alive.sum() == 0 and enemies_alive.any() else 0.0)
            outcomes.add(info["success"])
            break
    assert outcomes == {True, False}, "focus fire should win some battles, random play lose some"


def test_time_limit_truncates(env, sparse_env):
    for e in (env, sparse_env):
        e.reset(seed=3)
        # Put the real jitted state one step before SMAX's max_steps (same dtype: no recompile).
        inner = e._state.state
        e._state = e._state.replace(state=inner.replace(step=inner.step * 0 + e.episode_limit - 1))
        e._t = e.episode_limit - 1
        _, r, term, trunc, info = e.step(np.full(3, STOP_ACTION))
        assert trunc and not term and not info["success"]
        if e.reward_mode == "sparse":
            assert r == 0.0


def test_dense_reward_counts_damage(env):
    obs, _ = env.reset(seed=2)
    total, rewards = 0.0, []
    for _ in range(env.episode_limit):
        obs, r, term, trunc, info = env.step(focus_fire(obs["avail"]))
        rewards.append(r)
        if term or trunc:
            break
    assert min(rewards) >= 0.0 and sum(rewards) > 0.0
    total = sum(rewards)
    # Full enemy health lost is worth 1, a win adds won_battle_bonus (1).
    assert total <= 2.0 + 1e-5


def test_vector_env_matches_unbatched_envs(env):
    seeds = [21, 22, 23]
    venv = SMAXVectorTeamEnv(3, "3m")
    assert venv.core is env.core and venv.state_names == env.state_names
    vobs, vinfo = venv.reset(seed=seeds)
    assert venv.observation_space.contains(vobs)
    singles = [SMAXTeamEnv("3m") for _ in seeds]
    sobs = [s.reset(seed=seed)[0] for s, seed in zip(singles, seeds)]
    rng = np.random.default_rng(0)
    pending = [False] * 3
    ended = 0
    for _ in range(45):
        for i in range(3):
            for k in ("obs", "state", "avail", "positions"):
                np.testing.assert_allclose(vobs[k][i], sobs[i][k], atol=1e-5, err_msg=k)
        actions = np.stack([random_actions(rng, a) for a in vobs["avail"]])
        vobs, vr, vterm, vtrunc, vinfo = venv.step(actions)
        for i, single in enumerate(singles):
            if pending[i]:  # NEXT_STEP: the vector env shows the new episode now
                sobs[i], _ = single.reset()
                assert vr[i] == 0.0 and not vterm[i] and not vtrunc[i]
                pending[i] = False
                continue
            sobs[i], r, term, trunc, info = single.step(actions[i])
            assert (vr[i], vterm[i], vtrunc[i], vinfo["success"][i]) == pytest.approx((r, term, trunc, info["success"]))
            if term or trunc:
                pending[i] = True
                ended += 1
    assert ended >= 3
