"""Follow-up selection: the one-step Adam identity, KL(before || after) on hand-made Q tables, top-m, the L2 variant,
and the whole selection on a hand-made linear agent whose update is known in closed form."""

import numpy as np
import pytest
import torch
from torch import nn

from marlx.attacks.followup import (clamp_group_size, kl_followup, kl_scores, l2_scores, one_step_adam, top_m,
                                    zscore_softmax)


def test_one_step_adam_equals_torch_adam_and_the_sign_step():
    torch.manual_seed(0)
    p = torch.randn(5, 3)
    g = torch.randn(5, 3) * torch.tensor([1e-3, 1.0, 1e3])
    g[0, 0] = 0.0
    ref = p.clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=5e-4, betas=(0.3, 0.7))  # betas do not matter for one step
    ref.grad = g.clone()
    opt.step()
    ours = one_step_adam({"w": p}, {"w": g}, lr=5e-4)["w"]
    assert torch.allclose(ours, ref.detach(), atol=1e-9, rtol=0)
    assert torch.allclose(ours, p - 5e-4 * torch.sign(g), atol=1e-8)  # |g| >> eps: lr * sign(g)
    assert ours[0, 0] == p[0, 0]  # zero gradient: no move


def test_kl_scores_on_a_hand_made_table():
    before = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0], [5.0, 1.0, 1.0]])
    after = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0], [5.0, 1.0, 1.0001]])
    # the z-score makes the table scale- and shift-free: row 0 scaled and shifted is the same distribution
    assert torch.allclose(zscore_softmax(before[0] * 7 + 3), zscore_softmax(before[0]))
    kl = kl_scores(before, after)
    z = lambda q: (q - q.mean()) / q.std()  # noqa: E731
    p, r = torch.softmax(z(before[1]), -1), torch.softmax(z(after[1]), -1)
    assert kl[0] == pytest.approx(0.0, abs=1e-7)
    assert kl[1] == pytest.approx(float((p * (p / r).log()).sum()), rel=1e-6)
    assert 0 < kl[2] < kl[1]
    # hand numbers: z(0,0,1) = (-1/√3, -1/√3, 2/√3)
    a = np.exp([-1 / np.sqrt(3), -1 / np.sqrt(3), 2 / np.sqrt(3)])
    p_hand = a / a.sum()
    r_hand = p_hand[[0, 2, 1]]
    assert kl[1] == pytest.approx(float((p_hand * np.log(p_hand / r_hand)).sum()), rel=1e-6)


def test_top_m_excludes_the_initial_agent_and_breaks_ties_by_index():
    scores = np.array([[0.1, 0.9, 0.5, 0.5], [3.0, 2.0, 1.0, 0.0]])
    assert top_m(scores, np.array([1, 0]), 2).tolist() == [[2, 3], [1, 2]]
    assert top_m(scores, np.array([4, 4]), 2).tolist() == [[1, 2], [0, 1]]  # 4 = no initial agent
    assert top_m(scores, np.array([0, 3]), 2, largest=False).tolist() == [[2, 3], [2, 1]]
    assert clamp_group_size(2, 3) == 2 and clamp_group_size(3, 3) == 2 and clamp_group_size(2, 1) == 0


def test_l2_scores_use_observations():
    obs = np.array([[[0.0, 0.0], [1.0, 0.0], [3.0, 4.0]]])
    assert l2_scores(obs, np.array([0])).tolist() == [[0.0, 1.0, 25.0]]


class LinearAgent(nn.Module):
    """``Q_j(a) = W[a, j] + s_j · U[a]`` from inputs ``[onehot(j), s_j]``; the hidden state passes through."""

    def __init__(self, n, n_actions, w, u):
        super().__init__()
        self.n = n
        self.W = nn.Parameter(torch.as_tensor(w, dtype=torch.float32))
        self.U = nn.Parameter(torch.as_tensor(u, dtype=torch.float32))

    def forward(self, x, h):
        return x[:, : self.n] @ self.W.T + x[:, self.n:] * self.U, h


def test_kl_followup_matches_the_closed_form_update():
    n, a, lr = 4, 3, 0.05
    w = np.array([[0.0, 1.0, 0.5, 0.2], [1.0, 0.0, 0.1, 0.9], [2.0, 0.3, 0.0, 0.4]])  # [A, n]
    u = np.array([0.2, -0.1, 0.3])
    s = np.array([1.0, 0.5, 2.0, -3.0])  # each agent's sensitivity to the shared U
    agent = LinearAgent(n, a, w, u)
    x = torch.as_tensor(np.concatenate([np.eye(n), s[:, None]], 1), dtype=torch.float32)[None]  # [1, n, n+1]
    h = torch.zeros(1, n, 2)
    q = (w.T + s[:, None] * u[None])  # [n, A]
    intended, worst = q.argmax(1), q.argmin(1)
    initial = 0
    vdn = lambda chosen, state: chosen.sum(-1)  # noqa: E731
    scores = kl_followup(agent, x, h, vdn, torch.zeros(1, 2), torch.as_tensor(intended)[None],
                         torch.as_tensor(worst)[None], torch.tensor([initial]), lr)
    # closed form: Q_tot^normal is detached, so the gradient of (Q_tot^attack - Q_tot^normal)^2 = 2δ·dQ_tot^attack
    # with δ = Q_0(worst) - Q_0(intended) < 0 reaches every agent's executed action: W[do_j, j] and U through s_j;
    # the one-step Adam moves each touched parameter by lr·sign(-δ ...) = +lr·sign(coefficient)
    do = intended.copy()
    do[initial] = worst[initial]
    g_u = np.zeros(a)
    for j in range(n):
        g_u[do[j]] += s[j]
    du = lr * np.sign(g_u)
    dw = np.zeros((a, n))
    dw[do, np.arange(n)] = lr
    q_after = q + s[:, None] * du[None] + dw.T

    def kl_np(p_q, r_q):
        z = lambda v: (v - v.mean()) / v.std(ddof=1)  # noqa: E731
        p, r = np.exp(z(p_q)) / np.exp(z(p_q)).sum(), np.exp(z(r_q)) / np.exp(z(r_q)).sum()
        return float((p * np.log(p / r)).sum())

    expected = [kl_np(q[j], q_after[j]) for j in range(1, n)]
    assert scores[0, 1:].numpy() == pytest.approx(expected, rel=1e-3)
    group = top_m(scores.numpy(), np.array([initial]), 2)[0].tolist()
    assert group == [int(j) + 1 for j in np.argsort(expected)[::-1][:2]]
