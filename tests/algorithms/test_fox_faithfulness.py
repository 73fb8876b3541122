"""FoX's options that follow the released code (review shared/reviews/qmix_fox_faithfulness.md, F1-F12), each
checked with values: count timing, terminal formation, awareness target and normalisation, VAE schedule and
clip, the TD gradient into the GRU, the live target encoder, inputs and head shapes, prioritised replay."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from marlx.algorithms.fox import FoXConfig
from marlx.algorithms.fox.module import FormationAwareAgent, FoXRLModule
from marlx.intrinsic.fox import FOX_COUNT_BONUS, FOX_HIDDEN, FOX_VISIT_NEXT, FoXAwareness, FoXCount
from marlx.intrinsic.fox_vae import AwarenessNormaliser, FormationVAE
from marlx.modules.agent import RNNAgent
from marlx.runtime.columns import MASK
from marlx.runtime.episode import TeamEpisode
from marlx.runtime.replay import PrioritisedTeamEpisodeReplay, TeamEpisodeReplay

N, D, A = 3, 4, 5


def episode(obs_rows):
    obs_rows = np.asarray(obs_rows, np.float32)
    T = len(obs_rows) - 1
    obs = {"obs": obs_rows, "state": np.zeros((T + 1, 2), np.float32), "avail": np.ones((T + 1, N, A), np.float32)}
    return TeamEpisode(obs=obs, actions=np.zeros((T, N), np.int64), executed_actions=np.zeros((T, N), np.int64),
                       rewards=np.zeros(T, np.float32), terminated=True)


RNG = np.random.default_rng(0)
F_SHARED = RNG.normal(size=(N, D))  # one formation that every episode ends in


def ten_episodes():
    return [episode([RNG.normal(size=(N, D)), F_SHARED]) for _ in range(10)]


@pytest.mark.parametrize("count_at, expected", [("collection", 0.1 / 1.0), ("sampling", 0.1 / np.sqrt(10))])
def test_count_bonus_is_read_at_collection_or_at_sampling(count_at, expected):
    # Episode A reaches F once; nine later episodes reach F too. The released runner stores N = 1 with A's step.
    count = FoXCount({"beta1": 0.1, "count_at": count_at}, None, None, where="driver")
    replay = TeamEpisodeReplay(20, seed=0, extra_columns=[FOX_VISIT_NEXT] if count_at == "collection" else [])
    for ep in ten_episodes():
        count.observe([ep])
        replay.add([ep])
    batch = replay.gather(np.array([0, 9]))  # A and the last episode
    count.annotate(batch)
    assert batch[FOX_COUNT_BONUS][0, 0] == pytest.approx(expected)
    assert batch[FOX_COUNT_BONUS][1, 0] == pytest.approx(0.1 / np.sqrt(10))  # the 10th visit either way


def test_uncounted_terminal_formation_gives_zero_count_bonus():
    eps = [episode(RNG.normal(size=(4, N, D))) for _ in range(2)]
    count = FoXCount({"beta1": 0.1, "count_terminal_formation": False}, None, None, where="driver")
    count.observe(eps)
    assert count.counter.total == 2 * 3  # T formations per episode of T = 3 steps (released), not T + 1
    replay = TeamEpisodeReplay(5, seed=0, extra_columns=[FOX_VISIT_NEXT])
    replay.add(eps)
    batch = replay.sample(2)
    count.annotate(batch)
    np.testing.assert_allclose(batch[FOX_COUNT_BONUS], [[0.1, 0.1, 0.0]] * 2)  # F_1, F_2 new; F_3 never counted
    smac = FoXCount({"beta1": 0.1, "count_terminal_formation": False, "count_at": "sampling",
                     "bonus_normalisation": "smac"}, None, None, where="driver")
    smac.observe(eps)
    batch = replay.sample(2)
    smac.annotate(batch)
    np.testing.assert_allclose(batch[FOX_COUNT_BONUS], [[0.0, 0.0, -0.1]] * 2)  # released SMAC: -beta1 * max


def constant_decoder_vae():
    vae = FormationVAE(n_agents=1, hidden_dim=8, vae_hidden=16, latent_dim=4)
    last = vae.decoder[-2]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)  # sigmoid(0) = 0.5 whatever z is
    return vae


def test_awareness_log_q_against_raw_or_scaled_keys_equals_hand_computation():
    vae = constant_decoder_vae()
    h = torch.randn(2, 8)
    keys = torch.tensor([[1.0, 2.0, 0.0, 3.0], [0.5, 0.5, 0.5, 0.5]])
    b, log_q = vae.awareness_log_ratio(h, h, h, keys, n_samples=5, target="raw")
    # log q = -sum (0.5 - F)^2: -(0.25 + 2.25 + 0.25 + 6.25) = -9 and 0; log p is the same, so b = 0
    torch.testing.assert_close(log_q, torch.tensor([-9.0, 0.0]))
    torch.testing.assert_close(b, torch.zeros(2))
    _, log_q_scaled = vae.awareness_log_ratio(h, h, h, keys, n_samples=5, target="scaled")
    expected = -((0.5 - keys / 1000) ** 2).sum(-1)
    torch.testing.assert_close(log_q_scaled, expected)
    b_s, log_q_s = vae.awareness_log_ratio(h, h, h, keys, n_samples=5, per_sample=True)
    assert b_s.shape == (5, 2) and log_q_s.shape == (5, 2)


def _awareness_scale_after_training(target):
    torch.manual_seed(0)
    vae = FormationVAE(n_agents=3)
    g = torch.Generator().manual_seed(0)
    keys = torch.randint(0, 512, (64, 12), generator=g).float()
    keys[:, 0::4] = torch.rand(64, 3, generator=g)
    h = torch.tanh(keys / 1000.0 @ torch.randn(12, 64, generator=g) * 3)
    norm = AwarenessNormaliser("grf", per_agent=False, before_mean=False)
    factors = []
    for step in range(301):
        if step % 50 == 0:
            b, log_q = vae.awareness_log_ratio(h, h.roll(1, 0), h.roll(2, 0), keys, n_samples=4, target=target)
            out = norm(b, log_q)
            factors.append(float(out.max()))  # the min-max top (1) times |mean log q| / running max
        vae.train_step(h, h.roll(1, 0), h.roll(2, 0), keys)
    return factors


def test_awareness_scale_stays_with_raw_keys_and_fades_with_scaled_keys():
    # Default configuration (kl 1.0, normaliser on). Raw F: |mean log q| ~ ||F||^2 barely moves as the VAE learns.
    raw = _awareness_scale_after_training("raw")
    scaled = _awareness_scale_after_training("scaled")
    assert min(raw) > 0.9, raw
    assert scaled[-1] < 0.5, scaled


def test_per_agent_normalisation_maps_each_agent_to_unit_range():
    b = torch.tensor([[1.0, 100.0], [2.0, 300.0], [3.0, 200.0]])  # [steps, agents]: agents on different scales
    log_q = torch.full_like(b, -4.0)
    per_agent = AwarenessNormaliser("grf", per_agent=True, before_mean=False)(b, log_q)
    torch.testing.assert_close(per_agent, torch.tensor([[0.0, 0.0], [0.5, 1.0], [1.0, 0.5]]))
    joint = AwarenessNormaliser("grf", per_agent=False, before_mean=False)(b, log_q)
    torch.testing.assert_close(joint[:, 0], (b[:, 0] - 1.0) / 299.0)
    # before the mean: samples [S=2, steps=2, agents=1]; min-max over all 4 values, then the mean over samples
    bs = torch.tensor([[[0.0], [4.0]], [[2.0], [2.0]]])
    out = AwarenessNormaliser("grf", per_agent=True, before_mean=True)(bs, torch.full_like(bs, -1.0),
                                                                        mask=torch.ones(2, 1))
    torch.testing.assert_close(out, torch.tensor([[0.25], [0.75]]))
    # the running max is per agent: agent 1's |log q| halves, agent 0's does not
    norm = AwarenessNormaliser("grf", per_agent=True, before_mean=False)
    norm(b, torch.full_like(b, -4.0))
    out = norm(b, torch.tensor([[-4.0, -2.0]] * 3))
    torch.testing.assert_close(out, per_agent * torch.tensor([1.0, 0.5]))
    assert norm.get_state()["running_max"] == [4.0, 4.0]


def team_spaces(n=N, d=D, a=A):
    obs = gym.spaces.Dict({"obs": gym.spaces.Box(-1, 1, (n, d), np.float32),
                           "state": gym.spaces.Box(-1, 1, (6,), np.float32),
                           "avail": gym.spaces.Box(0, 1, (n, a), np.float32)})
    return obs, gym.spaces.MultiDiscrete([a] * n)


def fox_module(**model):
    cfg = FoXConfig().training(**model)
    model_config = {k: getattr(cfg, k) for k in ("rnn_hidden_dim", "obs_last_action", "obs_agent_id", "mixer",
                                                   "vae_latent_dim", "vae_hidden_dim", "local_head_hidden",
                                                   "formation_latent", "formation_head_grad_to_gru",
                                                   "target_encoder")}
    obs_space, act_space = team_spaces()
    torch.manual_seed(0)
    return FoXRLModule(observation_space=obs_space, action_space=act_space, model_config=model_config)


def padded_batch(B=2, T=5, seed=0):
    g = np.random.default_rng(seed)
    return {"obs": torch.tensor(g.normal(size=(B, T + 1, N, D)), dtype=torch.float32),
            "state": torch.zeros(B, T + 1, 6), "avail": torch.ones(B, T + 1, N, A),
            "actions": torch.tensor(g.integers(A, size=(B, T, N))), MASK: torch.ones(B, T)}


def test_fox_inputs_have_no_agent_id_and_local_heads_are_linear():
    assert FoXConfig().obs_agent_id is False and FoXConfig().local_head_hidden == 0
    module = fox_module()
    assert module.agent.base.fc1.in_features == D + A  # obs + last action, no agent id
    local = [p for name, p in module.agent.named_parameters() if name.startswith("local_")]
    assert sum(p.numel() for p in local) == N * (64 * A + A)
    mlp = fox_module(local_head_hidden=16)
    assert sum(p.numel() for n, p in mlp.agent.named_parameters() if n.startswith("local_")) == \
        N * (64 * 16 + 16 + 16 * A + A)


@pytest.mark.parametrize("to_gru", [True, False])
def test_td_gradient_through_the_formation_head_reaches_the_gru(to_gru):
    torch.manual_seed(0)
    agent = FormationAwareAgent(RNNAgent(D, A, 8), N, A, latent_dim=4, vae_hidden=8, local_hidden=0,
                                sample_latent=False, grad_to_gru=to_gru)
    x, h0 = torch.randn(6, D), torch.randn(6, 8)

    def rnn_grad(head_weight):
        agent.zero_grad(set_to_none=True)
        with torch.no_grad():
            agent.formation_head.weight.copy_(head_weight)
        agent(x, h0)[0].sum().backward()
        assert all(p.grad is None for p in agent.encoder.parameters())  # the encoder gets no TD gradient
        return agent.base.rnn.weight_ih.grad.clone()

    with_head = rnn_grad(torch.randn(A, 4))
    without = rnn_grad(torch.zeros(A, 4))
    assert (not torch.allclose(with_head, without)) == to_gru


@pytest.mark.parametrize("target_encoder", ["copy", "live"])
def test_target_unroll_reads_the_live_encoder_only_when_asked(target_encoder):
    module = fox_module(target_encoder=target_encoder, formation_latent="mean")
    batch = padded_batch()
    obs = module.team_obs(batch)
    before = module.unroll(obs, batch["actions"], target=True).detach()
    with torch.no_grad():
        for p in module.agent.encoder.parameters():  # what a VAE step does to the online encoder
            p.add_(0.5)
    after = module.unroll(obs, batch["actions"], target=True).detach()
    assert (not torch.allclose(before, after)) == (target_encoder == "live")


def test_released_vae_schedule_does_25_single_sample_steps_per_16_episodes():
    module = fox_module()
    comp = FoXAwareness({"vae_schedule": "episodes", "vae_every_episodes": 16, "vae_steps": 25}, None, None)
    vae = comp.build_vae(module)
    batch = padded_batch(B=4)
    T = batch["actions"].shape[1]
    batch |= {"fox_keys": torch.rand(4, T + 1, 4 * N), "fox_far": torch.zeros(4, T + 1, N, dtype=torch.long),
              "fox_near": torch.ones(4, T + 1, N, dtype=torch.long)}
    fwd = {FOX_HIDDEN: torch.randn(4, T + 1, N, 64)}
    steps = []
    for episodes in (32, 40, 48, 96, 100):  # episodes collected before each RL update
        comp.episodes_sampled = episodes
        before = vae.steps_taken
        comp.update(batch, fwd, module)
        steps.append(vae.steps_taken - before)
    # first update: the latest block only; then one block per 16 new episodes
    assert steps == [25, 0, 25, 75, 0]
    per_update = FoXAwareness({}, None, None)
    per_update.build_vae(fox_module())
    assert per_update.vae_steps_due() == (1, 25)


def test_joint_vae_clip_bounds_the_norm_of_all_parts_together():
    h, keys = torch.randn(16, 64), torch.rand(16, 12) * 500
    norms = {}
    for joint in (True, False):
        torch.manual_seed(0)
        vae = FormationVAE(n_agents=3, grad_clip=1e-3, joint_clip=joint)
        for opt in vae.optimizers.values():
            opt.step = lambda *a, **k: None
        vae.train_step(h, h, h, keys)
        grads = [p.grad for m in (vae.encoder, vae.decoder, vae.decoder_tau) for p in m.parameters() if p.grad is not None]
        norms[joint] = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
    assert norms[True] == pytest.approx(1e-3, rel=1e-3)
    assert norms[False] == pytest.approx(np.sqrt(3) * 1e-3, rel=1e-3)  # each of the 3 parts clipped to 1e-3


def test_prioritised_replay_samples_by_priority_power_alpha_and_takes_td_errors():
    replay = PrioritisedTeamEpisodeReplay(capacity=3, seed=0, alpha=0.5)
    replay.add([episode(RNG.normal(size=(3, N, D))) for _ in range(3)])
    np.testing.assert_allclose(replay.probabilities(), [1 / 3] * 3)  # new episodes: priority 1
    replay.update_priorities(np.array([0, 1]), np.array([16.0, 4.0]))
    np.testing.assert_allclose(replay.probabilities(), np.array([4.0, 2.0, 1.0]) / 7.0)  # p ** 0.5
    counts = np.zeros(3)
    for _ in range(2000):
        replay.sample(1)
        counts[replay.last_indices[0]] += 1
    np.testing.assert_allclose(counts / counts.sum(), [4 / 7, 2 / 7, 1 / 7], atol=0.03)
    # the learner's TD errors of a batch become the priorities of its episodes before the next draw
    replay.last_indices = None
    replay.priority_source = lambda: np.array([9.0, 1.0])
    replay.sample(2)
    first = replay.last_indices.copy()
    replay.add([episode(RNG.normal(size=(2, N, D)))])  # overwrites slot 0: it keeps priority 1
    replay.sample(2)
    expected = {0: 1.0, 1: 4.0, 2: 1.0}
    expected.update({int(i): v for i, v in zip(first, [9.0, 1.0]) if int(i) != 0})
    np.testing.assert_allclose(replay.priorities, [expected[i] for i in range(3)])


def test_new_fox_options_are_validated():
    for key, bad in (("count_at", "later"), ("awareness_target", "half"), ("vae_schedule", "daily"),
                     ("target_encoder", "old"), ("hash_bit_order", "middle")):
        with pytest.raises(ValueError, match=key):
            FoXConfig().environment("builtin/push_box").training(**{key: bad}).validate()
    with pytest.raises(ValueError, match="prioritised_replay_alpha"):
        FoXConfig().environment("builtin/push_box").training(prioritised_replay_alpha=-1.0).validate()
