"""Wolfpack's attacker models and their training signals: transformer shapes and masks, window helpers, the ΔQ
label with an exact linear planner against its analytic sum, and the Q-difference loss alignment."""

import numpy as np
import pytest
import torch

from marlx.attacks.labels import (attacked_values, left_padded_windows, normal_sums, pick_windows, planning_loss,
                                  qdiff_loss)
from marlx.attacks.transformers import PlanningTransformer, QDifferenceTransformer


def test_qdiff_transformer_is_causal_and_all_agents_matches_per_agent_calls():
    torch.manual_seed(0)
    model = QDifferenceTransformer(state_dim=6, n_agents=3).eval()
    times = torch.arange(20).view(1, 20)
    states = torch.randn(1, 20, 6)
    onehot = torch.eye(3)[1].expand(1, 20, 3)
    out = model(times, states, onehot)
    assert out.shape == (1, 20, 20)
    changed = states.clone()
    changed[:, 15:] += 1.0
    out2 = model(times, changed, onehot)
    assert torch.allclose(out[:, :15], out2[:, :15], atol=1e-6) and not torch.allclose(out[:, 15:], out2[:, 15:])
    every = model.all_agents(times, states)
    assert every.shape == (1, 3, 20)
    assert torch.allclose(every[0, 1], out[0, -1], atol=1e-6)
    assert model(torch.full((1, 20), 1000), states, onehot).shape == (1, 20, 20)  # time steps past 300 clamp
    assert model.head.in_features == 64 + 3 and model.blocks[0].mlp[0].out_features == 256


def test_planning_transformer_shapes_and_full_attention():
    torch.manual_seed(0)
    model = PlanningTransformer(state_dim=6, obs_dim=5, n_agents=3, n_actions=4, hidden_dim=8).eval()
    s, h, a = torch.randn(2, 20, 6), torch.randn(2, 20, 3, 8), torch.randn(2, 20, 3, 4)
    next_state, embed = model(s, h, a)
    assert next_state.shape == (2, 20, 6) and embed.shape == (2, 20, 64)
    assert model.all_next_obs(embed).shape == (2, 20, 3, 5)
    layer = model.decoder.layers[0]
    assert layer.linear1.out_features == 2048 and layer.self_attn.embed_dim == 192  # PyTorch defaults, d = 3·64
    s2 = s.clone()
    s2[:, -1] += 1.0
    assert not torch.allclose(model(s2, h, a)[0][:, 0], next_state[:, 0])  # no mask: position 0 sees the last


@pytest.mark.parametrize("layers", [1, 2])
def test_planning_forward_last_equals_the_full_forward_at_the_last_position(layers):
    torch.manual_seed(1)
    model = PlanningTransformer(state_dim=6, obs_dim=5, n_agents=3, n_actions=4, hidden_dim=8, layers=layers).eval()
    s, h, a = torch.randn(7, 20, 6), torch.randn(7, 20, 3, 8), torch.randn(7, 20, 3, 4)
    full_state, full_embed = model(s, h, a)
    last_state, last_embed = model.forward_last(s, h, a)
    assert last_state.shape == (7, 6) and last_embed.shape == (7, 64)
    assert torch.allclose(last_state, full_state[:, -1], atol=1e-5)
    assert torch.allclose(last_embed, full_embed[:, -1], atol=1e-5)
    # gradients flow the same way too
    g_full = torch.autograd.grad(model(s, h, a)[0][:, -1].sum(), model.state_embed.weight)[0]
    g_last = torch.autograd.grad(model.forward_last(s, h, a)[0].sum(), model.state_embed.weight)[0]
    assert torch.allclose(g_full, g_last, atol=1e-4)


def test_window_helpers():
    x = torch.arange(1, 6, dtype=torch.float32).view(1, 5)
    w = left_padded_windows(x, 3)
    assert w[0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5]]
    assert pick_windows(x, torch.tensor([2]), 3).tolist() == [[3, 4, 5]]
    q_tot = torch.tensor([[1.0, 2, 3, 4, 5, 6]])
    assert normal_sums(q_tot, 3).tolist() == [[10, 14, 18, 15, 11, 6]]  # cut at the batch end


def test_label_with_an_exact_linear_planner_equals_the_analytic_sum():
    n, a, length = 3, 3, 4
    s0 = torch.tensor([0.5, 2.0])  # two window positions, state_dim 1
    state_hist = torch.stack([torch.stack([s - 3 + k for k in range(length)]) for s in s0]).unsqueeze(-1)  # [2, L, 1]
    hidden_hist = torch.zeros(2, length, n, 1)
    action_hist = torch.zeros(2, length, n, a)

    def plan(states, hidden, actions):  # the true dynamics s' = s + 1; every agent observes s'
        nxt = states[:, -1] + 1.0
        return nxt, nxt.view(-1, 1, 1).expand(-1, n, 1)

    def agent_q(obs, last_onehot, hidden):  # Q_i(a) = (a + 1)·o_i + i + 0.1·[last action of i was 0]
        acts = torch.arange(a, dtype=torch.float32).view(1, 1, a)
        ids = torch.arange(n, dtype=torch.float32).view(1, n, 1)
        return (acts + 1) * obs + ids + 0.1 * last_onehot[..., :1]

    vdn = lambda chosen, state: chosen.sum(-1)  # noqa: E731
    q_now = torch.tensor([[[1.0, 5.0, 3.0], [0.0, 2.0, 4.0], [7.0, 1.0, 2.0]]]).expand(2, n, a)
    intended = torch.tensor([[1, 2, 0]]).expand(2, n)
    worst = torch.tensor([[0, 0, 1]]).expand(2, n)
    initial = torch.tensor([1, 2])
    followup = torch.tensor([[0, 2], [0, 1]])
    avail = torch.ones(2, n, a)
    out = attacked_values(plan, agent_q, vdn, q_now, intended, worst, initial, followup, state_hist, hidden_hist,
                          action_hist, avail, duration=3)
    expected = []
    for b in range(2):
        s, i, group = float(s0[b]), int(initial[b]), followup[b].tolist()
        k0 = [5.0, 4.0, 7.0]
        k0[i] = [1.0, 0.0, 1.0][i]  # the initial agent's attack-action value
        total = sum(k0)
        for k in (1, 2, 3):
            o = s + k
            do0 = intended[0].tolist()
            do0[i] = int(worst[0, i])  # k = 1 sees the attacked joint action of step τ as its last action
            last_zero = [do0[j] == 0 for j in range(n)] if k == 1 else [j in group for j in range(n)]
            for j in range(n):
                bonus = 0.1 if last_zero[j] else 0.0
                total += (1 if j in group else a) * o + j + bonus  # follow-ups argmin (a = 0), others greedy
        expected.append(total)
    assert out.tolist() == pytest.approx(expected, rel=1e-6)
    # ΔQ^WP = normal - attacked: with these numbers the attack costs value
    normal = normal_sums(torch.full((1, 4), 20.0), 3)[0, 0]
    assert float(normal - out[0]) == pytest.approx(80.0 - expected[0])


def test_unavailable_actions_are_never_chosen_in_the_rollout():
    n, a = 2, 3

    def plan(states, hidden, actions):
        return states[:, -1], torch.ones(states.shape[0], n, 1)

    def agent_q(obs, last, hidden):
        return torch.tensor([[[0.0, 1.0, 9.0], [-9.0, 1.0, 2.0]]]).expand(obs.shape[0], n, a)

    avail = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]])
    out = attacked_values(plan, agent_q, lambda c, s: c.sum(-1), torch.zeros(1, n, a), torch.tensor([[0, 1]]),
                          torch.tensor([[0, 1]]), torch.tensor([0]), torch.tensor([[1]]), torch.zeros(1, 2, 1),
                          torch.zeros(1, 2, n, 1), torch.zeros(1, 2, n, a), avail, duration=1)
    assert float(out[0]) == pytest.approx(0.0 + 1.0 + 1.0)  # k0: 0; k1: agent 0 greedy 1 (not 9), agent 1 argmin 1


def test_qdiff_loss_alignment_and_mask():
    pred = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # [B=1, L=2, P=2]
    labels = torch.tensor([[0.0, 1.0]])
    loss = qdiff_loss(pred, labels, torch.ones(1, 2))
    # i=0: ((1-0)^2 + (2-1)^2)/2 ; i=1: (3-1)^2/1 ; / mask sum 2
    assert float(loss) == pytest.approx((1.0 + 4.0) / 2)
    masked = qdiff_loss(pred, labels, torch.tensor([[1.0, 0.0]]))
    # position 1 masked: its prediction and label are zeroed
    assert float(masked) == pytest.approx((((1 - 0) ** 2 + (2 - 0) ** 2) / 2 + 0.0) / 1)


def test_planning_loss_masks_padded_steps():
    ps, ns = torch.ones(1, 2, 3), torch.zeros(1, 2, 3)
    po, no = torch.ones(1, 2, 2, 1) * 2, torch.zeros(1, 2, 2, 1)
    po[0, 1] = 100.0
    loss = planning_loss(ps, po, ns, no, torch.tensor([[1.0, 0.0]]))
    assert float(loss) == pytest.approx(1.0 + 4.0)
