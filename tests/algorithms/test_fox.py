"""FoX as an RLlib algorithm: trains with both bonuses, counts only training data, checkpoints its counter
and VAE, and supports the positions option."""

import numpy as np
import pytest
import torch

from marlx.algorithms.fox import FoXConfig
from marlx.intrinsic.fox import FOX_COUNT_BONUS, FOX_KEYS, FoXCount
from marlx.intrinsic.fox_formation import FormationKeyer
from marlx.runtime.episode import TeamEpisode
from marlx.runtime.replay import TeamEpisodeReplay

TASK = {"size": 4, "box_start_row": 1, "episode_limit": 12}


def fox_config(**training):
    opts = dict(batch_size_episodes=8, learning_starts_episodes=8, vae_samples_per_update=25, **training)
    return (
        FoXConfig()
        .environment("builtin/push_box", env_config=TASK)
        .env_runners(num_envs_per_env_runner=4)
        .training(**opts)
        .evaluation(evaluation_interval=None, evaluation_duration=4, evaluation_duration_unit="episodes")
        .debugging(seed=0)
    )


def test_count_component_counts_every_collected_step_and_serves_bonus_of_next_formation():
    count = FoXCount({"formation_round": 3, "beta1": 0.1, "count_at": "sampling"}, None, None, where="driver")
    rng = np.random.default_rng(0)
    obs = {"obs": rng.normal(size=(4, 2, 3)).astype(np.float32), "state": np.zeros((4, 1), np.float32),
           "avail": np.ones((4, 2, 5), np.float32)}
    ep = TeamEpisode(obs=obs, actions=np.zeros((3, 2), np.int64), executed_actions=np.zeros((3, 2), np.int64),
                     rewards=np.zeros(3, np.float32), terminated=True)
    count.observe([ep, ep])
    assert count.counter.total == 8 and len(count.counter) == 4  # 4 distinct formations, each seen twice
    replay = TeamEpisodeReplay(capacity=10, seed=0)
    replay.add([ep, ep])
    batch = replay.sample(2)
    count.annotate(batch)
    keys = FormationKeyer(3, 3, 0, "msb").keys(obs["obs"].astype(np.float64))
    np.testing.assert_allclose(batch[FOX_KEYS][0], keys.astype(np.float32))
    np.testing.assert_allclose(batch[FOX_COUNT_BONUS][0], 0.1 / np.sqrt(2) * np.ones(3), rtol=1e-6)
    restored = FoXCount({}, None, None, where="driver")
    restored.set_state(count.get_state())
    assert restored.counter.total == 8


@pytest.mark.slow
def test_fox_trains_with_bonuses_and_evaluation_does_not_count(ray_session, tmp_path):
    algo = fox_config().build_algo()
    try:
        for _ in range(3):
            result = algo.train()
        learner = result["learners"]["default_policy"]
        for key in ("intrinsic/fox_count_mean", "intrinsic/fox_awareness_mean", "intrinsic/fox_awareness/vae_L1",
                    "fox_local_l1", "td_loss"):
            assert key in learner, key
        # awareness: beta2 * sum over 3 agents of values in [0, 1] (some agent's max is scaled by a factor > 0)
        assert 0 < learner["intrinsic/fox_awareness_mean"] <= 0.02 * 3
        counter = algo.formation_counter
        # count bonus: beta1 / sqrt(N) with N stored when the step was collected (never above today's count)
        count = next(c for c in algo.intrinsic if c.name == "fox_count")
        batch = algo.replay.sample(8)
        count.annotate(batch)
        mask = batch["mask"].astype(bool)
        visits = batch["fox_visit_next"][mask]
        assert visits.min() >= 1
        np.testing.assert_allclose(batch[FOX_COUNT_BONUS][mask], 0.01 / np.sqrt(visits), rtol=1e-6)
        now = counter.lookup(count._keys(count._vectors(batch))[0][:, 1:])[mask]
        assert (visits <= now).all() and (visits < now).any()
        total, distinct = counter.total, len(counter)
        assert total == algo.replay.steps_added + algo.replay.episodes_added  # T+1 formations per episode
        algo.evaluate()
        assert (counter.total, len(counter)) == (total, distinct)

        learner_obj = algo.learner_group._learner
        vae = learner_obj.vaes["default_policy"]
        decoder_before = [p.detach().clone() for p in vae.decoder.parameters()]
        path = algo.save_to_path(str(tmp_path / "ckpt"))
        restored = fox_config().build_algo()
        try:
            restored.restore_from_path(path)
            assert restored.formation_counter.total == total and len(restored.formation_counter) == distinct
            vae2 = restored.learner_group._learner.vaes["default_policy"]
            for a, b in zip(decoder_before, vae2.decoder.parameters()):
                torch.testing.assert_close(a, b)
            enc1 = algo.get_module().formation_encoder.mu.weight
            enc2 = restored.get_module().formation_encoder.mu.weight
            torch.testing.assert_close(enc1, enc2)
        finally:
            restored.stop()
    finally:
        algo.stop()


@pytest.mark.slow
def test_fox_released_options_train_positions_priorities_and_vae_schedule(ray_session):
    algo = fox_config(formation_source="positions", released_grad_accumulation=True, beta2=0.0,
                      prioritised_replay_alpha=0.3, vae_schedule="episodes", vae_every_episodes=4, vae_steps=25,
                      vae_joint_clip=True, target_encoder="live", count_terminal_formation=False).build_algo()
    try:
        for _ in range(3):  # 4 episodes per iteration; the first update at 8 episodes
            result = algo.train()
        count = next(c for c in algo.intrinsic if c.name == "fox_count")
        assert count.keyer.dim == 2  # keys from (x, y) positions
        assert count.counter.total == algo.replay.steps_added  # T formations per episode: F_T is not counted
        learner = result["learners"]["default_policy"]
        assert learner["intrinsic/fox_awareness/vae_steps"] == 25  # 4 new episodes = one block of 25 steps
        vae = algo.learner_group._learner.vaes["default_policy"]
        assert vae.steps_taken == 50 and vae.joint_clip and vae.released_grad_accumulation
        # the second update's sample took the first update's TD errors as priorities (new episodes stay at 1)
        prio = algo.replay.priorities[: len(algo.replay)]
        assert len(prio) == 12 and (prio[:8] != 1.0).all() and (prio[8:] == 1.0).all()
        assert np.isfinite(prio).all() and (prio >= 0).all()
    finally:
        algo.stop()


def test_invalid_fox_options_are_rejected():
    with pytest.raises(ValueError, match="formation_source"):
        fox_config(formation_source="pixels").validate()


def test_formation_head_samples_z_by_default_and_mean_is_deterministic():
    from marlx.algorithms.fox.module import FormationAwareAgent
    from marlx.modules.agent import RNNAgent

    torch.manual_seed(0)
    x, h = torch.randn(6, 10), torch.zeros(6, 64)
    sampled = FormationAwareAgent(RNNAgent(10, 5, 64), n_agents=3, n_actions=5, latent_dim=8, vae_hidden=16, local_hidden=0)
    q1, q2 = sampled(x, h)[0], sampled(x, h)[0]
    assert not torch.allclose(q1, q2)
    sampled.sample_latent = False
    torch.testing.assert_close(sampled(x, h)[0], sampled(x, h)[0])
    # gradients of the TD loss never reach the encoder
    sampled(x, h)[0].sum().backward()
    assert all(p.grad is None for p in sampled.encoder.parameters())
    assert sampled.formation_head.weight.grad is not None and sampled.local_w2.grad is not None


def _episode(obs_rows):
    T = len(obs_rows) - 1
    n = obs_rows.shape[1]
    obs = {"obs": obs_rows.astype(np.float32), "state": np.zeros((T + 1, 1), np.float32),
           "avail": np.ones((T + 1, n, 5), np.float32)}
    return TeamEpisode(obs=obs, actions=np.zeros((T, n), np.int64), executed_actions=np.zeros((T, n), np.int64),
                       rewards=np.zeros(T, np.float32), terminated=True)


def test_count_component_warns_once_when_a_batch_has_a_single_formation_key():
    rng = np.random.default_rng(0)
    # simple115-like rows: one shared vector per step, agents differ only in a one-hot -> one key for every step
    rows = np.repeat(rng.normal(size=(20, 1, 8)), 3, axis=1)
    rows[:, np.arange(3), np.arange(3)] += 1.0
    count = FoXCount({}, None, None, where="driver")
    with pytest.warns(RuntimeWarning, match="same key.*representation: ego"):
        count.observe([_episode(rows)])
    assert len(count.counter) == 1 and count.counter.total == 20
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        count.observe([_episode(rows)])  # once only
        informative = FoXCount({}, None, None, where="driver")
        informative.observe([_episode(rng.normal(size=(20, 3, 8)))])
    assert len(informative.counter) == 20
    # 300 formations with 3 distinct keys (GRF simple115 gave 4 over 1,500 random steps): warned too
    few = FoXCount({}, None, None, where="driver")
    three = rng.normal(size=(3, 3, 8))
    with pytest.warns(RuntimeWarning, match="only 3 distinct keys"):
        few.observe([_episode(three[np.arange(300) % 3])])


def test_fox_on_grf_refuses_observations_without_formation_information():
    base = FoXConfig().environment("grf/academy_3_vs_1_with_keeper", env_config={"reward": "sparse"})
    with pytest.raises(ValueError, match="representation 'simple115v2'.*representation: ego"):
        base.validate()
    ok = FoXConfig().environment("grf/academy_3_vs_1_with_keeper", env_config={"representation": "ego"})
    ok.validate()
    FoXConfig().environment("grf/academy_3_vs_1_with_keeper").training(formation_source="positions").validate()


@pytest.mark.parametrize("name", ["grf_3v1.yaml", "grf_3v1_short.yaml"])
def test_fox_grf_presets_use_ego_and_one_update_per_episode(name):
    import os

    import yaml

    path = os.path.join(os.path.dirname(__file__), "..", "..", "tuned_examples", "fox", name)
    (exp,) = yaml.safe_load(open(path)).values()
    cfg = exp["config"]
    assert cfg["env_config"]["representation"] == "ego"
    assert cfg["num_updates_per_iteration"] == "per_episode"  # Q2: FoX's runner updates once per episode


@pytest.mark.slow
def test_fox_on_grf_ego_visits_many_formations(ray_session):
    pytest.importorskip("gfootball")
    cfg = (FoXConfig()
           .environment("grf/academy_3_vs_1_with_keeper",
                        env_config={"reward": "sparse", "representation": "ego", "state_representation": "ego"})
           .env_runners(num_envs_per_env_runner=2)
           .training(batch_size_episodes=2, learning_starts_episodes=2, vae_samples_per_update=8)
           .evaluation(evaluation_interval=None)
           .debugging(seed=0))
    algo = cfg.build_algo()
    try:
        for _ in range(2):
            result = algo.train()
        counter = algo.formation_counter
        assert len(counter) > 0.5 * counter.total > 5  # distinct formations, not one key for every step (F2)
        assert "intrinsic/fox_awareness/vae_L1" in result["learners"]["default_policy"]
    finally:
        algo.stop()
