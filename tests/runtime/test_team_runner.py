"""The team env runner samples what PyMARL's parallel runner samples (issue: team runtime).

Each test fails on RLlib's ``SingleAgentEnvRunner`` in ``complete_episodes`` mode (Ray 2.60), which marlx used
before: it re-seeds every sub-env with the same seed at each ``sample()`` call and returns the first
``num_envs`` episodes to finish (short episodes over-represented).
"""

import numpy as np
import pytest
import torch
from ray.tune.registry import register_env
from scipy import stats

from marlx.algorithms.qmix import QMIXConfig
from marlx.attacks.base import Attack, register_attack
from marlx.envs.team import TeamEnv
from marlx.runtime.columns import ATTACKED, Q_VALUES
from marlx.runtime.runner import TeamEnvRunner


class CoinLengthEnv(TeamEnv):
    """Each episode lasts ``short`` or ``long`` steps with probability 1/2 (drawn at reset from the env's RNG).

    ``success`` is set on short episodes when ``short_is_success``, so a length-biased sampler also biases the
    success rate.
    """

    n_agents, n_actions, obs_dim, state_dim = 2, 3, 2, 3

    def __init__(self, short: int = 2, long: int = 12, p_short: float = 0.5):
        self.short, self.long, self.p_short = short, long, p_short
        self.episode_limit = long + 1
        super().__init__()

    def _reset(self, rng, options):
        self.length = self.short if rng.random() < self.p_short else self.long
        self.start = float(rng.random())
        return {}

    def _step(self, actions):
        done = self._t + 1 >= self.length
        return 1.0, done, {"success": bool(done and self.length == self.short)}

    def get_obs(self):
        return np.full((2, 2), self.start + self._t, np.float32)

    def get_state(self):
        return np.array([self.start, self._t, self.length], np.float32)


register_env("test/coin_length", lambda cfg: CoinLengthEnv(**cfg))


def runner_config(env="test/coin_length", env_config=None, num_envs=8, seed=None, **kw):
    cfg = (QMIXConfig().environment(env, env_config=env_config or {})
           .env_runners(num_envs_per_env_runner=num_envs)
           .training(rnn_hidden_dim=8, mixing_embed_dim=4, hypernet_embed=8)
           .debugging(seed=seed))
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def make_runner(**kw) -> TeamEnvRunner:
    return TeamEnvRunner(config=runner_config(**kw), worker_index=0)


def test_whole_episodes_without_length_bias():
    """2- or 12-step episodes with probability 1/2: the runner returns both with their true frequency."""
    runner = make_runner(num_envs=8)
    lengths = []
    for _ in range(30):
        eps = runner.sample()
        assert len(eps) == 8 and sorted(e.env_index for e in eps) == list(range(8))  # one per sub-env
        assert all(e.is_done and e.start_t == 0 for e in eps)
        lengths += [len(e) for e in eps]
    short = sum(1 for n in lengths if n == 2)
    assert set(lengths) == {2, 12} and len(lengths) == 240
    # RLlib's complete_episodes sampler stored 363 short : 117 long here; the true ratio is 1:1
    assert stats.binomtest(short, len(lengths), 0.5).pvalue > 1e-3
    # env steps counted = env steps returned
    metrics = runner.get_metrics()
    assert metrics["num_env_steps_sampled_lifetime"] == sum(lengths)
    assert metrics["num_episodes_lifetime"] == 240


def test_seeded_sub_envs_are_seeded_once_and_differ():
    """With a seed: many distinct start states over iterations, sub-envs differ, and the run is reproducible."""
    runs = []
    for _ in range(2):
        runner = make_runner(env="builtin/push_box", env_config={"size": 6}, num_envs=8, seed=0)
        starts = []
        for _ in range(30):
            eps = runner.sample()
            starts += [e.initial_state_key() for e in sorted(eps, key=lambda e: e.env_index)]
        runs.append(starts)
    starts = runs[0]
    assert len(starts) == 240
    # RLlib re-seeded every iteration: 8 distinct start states in 240 episodes
    assert len(set(starts)) > 100
    assert len(set(starts[:8])) == 8  # the 8 sub-envs start differently
    assert runs[0][:16] == runs[1][:16]  # same seed -> same episodes
    other = make_runner(env="builtin/push_box", env_config={"size": 6}, num_envs=8, seed=1).sample()
    assert {e.initial_state_key() for e in other} != set(starts[:8])


@pytest.mark.parametrize("num_envs", [1, 8])
def test_evaluation_plays_exactly_n_episodes_unbiased(num_envs):
    """``sample(num_episodes=N)``: exactly N episodes; success (short episodes, p=0.3) is estimated unbiasedly."""
    runner = make_runner(num_envs=num_envs, env_config={"short": 2, "long": 12, "p_short": 0.3}, seed=5)
    for n in (1, 5, 13):
        eps = runner.sample(num_episodes=n, explore=False)
        assert len(eps) == n
        counts = np.bincount([e.env_index for e in eps], minlength=num_envs)
        assert counts.max() - counts.min() <= 1  # split evenly over sub-envs
    eps = runner.sample(num_episodes=400, explore=False)
    assert len(eps) == 400
    wins = sum(e.success for e in eps)
    # a first-to-finish sampler would over-count the short (successful) episodes
    assert stats.binomtest(wins, 400, 0.3).pvalue > 1e-3


def test_fragments_continue_episodes_across_calls():
    """Fragment mode: fixed steps per sub-env, chunks stitched by episode id rebuild the whole episodes."""
    runner = make_runner(num_envs=3, sample_mode="fragments", rollout_fragment_length=5, seed=2)
    chunks = []
    for _ in range(8):
        out = runner.sample()
        assert sum(len(c) for c in out) == 15  # 5 steps x 3 sub-envs
        chunks += out
    by_id = {}
    for c in chunks:
        by_id.setdefault(c.id_, []).append(c)
    finished = [v for v in by_id.values() if v[-1].is_done]
    assert finished
    for parts in finished:
        assert [p.start_t for p in parts] == list(np.cumsum([0] + [len(p) for p in parts[:-1]]))
        total = sum(len(p) for p in parts)
        assert total in (2, 12)
        # the bootstrap observation of a chunk is the first observation of the next one
        for a, b in zip(parts, parts[1:]):
            np.testing.assert_array_equal(a.obs["state"][-1], b.obs["state"][0])
            assert set(a.state_in) == set(b.state_in) == {"h", "prev_actions"}
        assert all(not p.is_done for p in parts[:-1])


@register_attack("test_replace_agent0")
class ReplaceAgent0(Attack):
    """Agent 0 always executes the highest-index available action; counts how often it began an episode."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.began = np.zeros(self.num_envs, int)

    def begin_episode(self, env_index):
        self.began[env_index] += 1

    def __call__(self, ctx):
        assert ctx.outputs[Q_VALUES].shape == (len(ctx.env_indices), self.n_agents, self.n_actions)
        executed = ctx.actions.copy()
        executed[:, 0] = self.n_actions - 1
        return executed, {"agent0_forced": np.ones(len(ctx.env_indices), bool)}


def test_attack_seam_stores_intended_and_executed_actions():
    runner = make_runner(env="builtin/push_box", env_config={"size": 4}, num_envs=4, seed=1,
                         attack={"name": "test_replace_agent0"})
    eps = runner.sample()
    assert runner.attack.began.tolist() == [1, 1, 1, 1]
    for ep in eps:
        assert (ep.executed_actions[:, 0] == 4).all()
        np.testing.assert_array_equal(ep.executed_actions[:, 1], ep.actions[:, 1])
        np.testing.assert_array_equal(ep.extras[ATTACKED][:, 0], ep.actions[:, 0] != 4)
        assert not ep.extras[ATTACKED][:, 1].any()
        assert ep.extras["agent0_forced"].all() and ep.extras["agent0_forced"].shape == (len(ep),)
    # intended actions stay the module's (epsilon 1 at step 0: uniformly random, so agent 0 is not always 4)
    assert any((ep.actions[:, 0] != 4).any() for ep in eps)


def test_unknown_attack_is_one_clear_error():
    cfg = runner_config(attack={"name": "wolfpak"})
    with pytest.raises(ValueError, match="attack"):
        cfg.validate()


def test_batched_smax_env_returns_whole_episodes():
    """A batched vector env (SMAX, NEXT_STEP autoreset): whole episodes, exact counts in evaluation."""
    pytest.importorskip("jaxmarl")
    runner = make_runner(env="smax/3m", num_envs=4, seed=0, gym_env_vectorize_mode="vector_entry_point")
    assert runner.env.batched
    for _ in range(2):
        eps = runner.sample()
        assert {e.env_index for e in eps} == {0, 1, 2, 3}  # at least one per sub-env
        for e in eps:
            assert e.is_done and e.start_t == 0 and e.obs["obs"].shape[0] == len(e) + 1
            # each episode starts from a fresh reset: the first state is not the last of another episode
            assert np.isfinite(e.obs["state"]).all()
    eps = runner.sample(num_episodes=6, explore=False)
    assert len(eps) == 6 and np.bincount([e.env_index for e in eps], minlength=4).tolist() == [2, 2, 1, 1]


def test_module_outputs_kept_per_step_when_asked():
    """``keep_outputs``: QMIX keeps none by default; asked for, Q values come per step; the state too."""
    assert make_runner(num_envs=2).sample()[0].extras == {}
    runner = make_runner(num_envs=2, keep_outputs=["q_values"], keep_state_out=True)
    for ep in runner.sample():
        assert ep.extras[Q_VALUES].shape == (len(ep), 2, 3)
        assert ep.extras["state_out/h"].shape == (len(ep), 2, 8)
        # the greedy choice of the kept Q values is what the module did where epsilon did not explore
        np.testing.assert_array_equal(ep.extras["state_out/prev_actions"], ep.actions.astype(np.float32))
