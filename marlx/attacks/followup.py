"""Wolfpack's follow-up group: the agents whose policies react most to the initial agent's attack.

The released code (``runners/episode_runner.py:146-205``) copies the current agent network, takes ONE step of a
fresh ``torch.optim.Adam`` on ``(Q_tot^attack - sg(Q_tot^normal))^2`` (the initial agent's action replaced by its
attack action, mixed by the mixer), and scores every other agent ``j`` with
``KL(softmax(z(Q_j before)) || softmax(z(Q_j after)))``, ``z`` the z-score over the action axis. The top
``m`` agents by KL are the follow-up group.

A fresh Adam's first step, with bias correction, is ``p - lr * g / (|g| + eps)`` elementwise
(``m̂ = g``, ``v̂ = g²``), so :func:`one_step_adam` reproduces it without an optimiser object or a deep copy.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.func import functional_call
from torch.nn import functional as F

#: Adam's epsilon (PyTorch default), the only Adam constant a single step depends on
ADAM_EPS = 1e-8


def one_step_adam(params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], lr: float,
                  eps: float = ADAM_EPS) -> dict[str, torch.Tensor]:
    """The parameters after the first step of a fresh ``torch.optim.Adam(lr=lr, eps=eps)``: ``p - lr·g/(|g|+eps)``."""
    return {k: p - lr * grads[k] / (grads[k].abs() + eps) for k, p in params.items()}


def zscore_softmax(q: torch.Tensor) -> torch.Tensor:
    """``softmax`` of the z-scored Q values over the last (action) axis; ``std`` is torch's unbiased one."""
    z = (q - q.mean(dim=-1, keepdim=True)) / q.std(dim=-1, keepdim=True)
    # the released code divides by the std once more; z already has std 1, so that is a no-op
    return z.softmax(dim=-1)


def kl_scores(q_before: torch.Tensor, q_after: torch.Tensor) -> torch.Tensor:
    """``KL(p_before || p_after)`` per agent, summed over ALL actions (no avail mask, as released): ``[..., n]``."""
    p, r = zscore_softmax(q_before), zscore_softmax(q_after)
    return (p * (p.log() - r.log())).sum(dim=-1)


def top_m(scores: np.ndarray, excluded: np.ndarray, m: int, largest: bool = True) -> np.ndarray:
    """Per row, the ``m`` agents with the largest (or smallest) score, ``excluded[row]`` left out.

    ``scores [B, n]``, ``excluded [B]`` (an agent index, or ``n`` for "none") -> ``[B, m]`` int64, best first;
    ties go to the lower index (a stable sort, like the released list sort).
    """
    scores = np.asarray(scores, dtype=np.float64).copy()
    b, n = scores.shape
    bad = -np.inf if largest else np.inf
    rows = np.arange(b)
    valid = np.asarray(excluded) < n
    scores[rows[valid], np.asarray(excluded)[valid]] = bad
    order = np.argsort(-scores if largest else scores, axis=1, kind="stable")
    return order[:, :m].astype(np.int64)


def clamp_group_size(m: int, n_agents: int) -> int:
    """The follow-up group size: ``m``, but never more than the ``n - 1`` candidates (the released code fails)."""
    return max(0, min(int(m), n_agents - 1))


def kl_followup(
    agent: torch.nn.Module,
    inputs: torch.Tensor,
    hidden: torch.Tensor,
    mix: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    states: torch.Tensor,
    actions: torch.Tensor,
    attack_actions: torch.Tensor,
    initial: torch.Tensor,
    lr: float,
    eps: float = ADAM_EPS,
) -> torch.Tensor:
    """KL scores ``[B, n]`` of every agent after one Adam step of a copy of ``agent`` (one copy per row).

    Args:
        agent: the shared agent network, ``agent(x [N, in], h [N, H]) -> (q [N, A], h)``.
        inputs: agent inputs ``[B, n, in]`` of this step; ``hidden``: ``[B, n, H]``.
        mix: ``mix(chosen_q [B', n], states [B', S]) -> [B']`` (the mixer; not trained here).
        states: ``[B, S]``; ``actions``: the intended joint action ``[B, n]``; ``attack_actions``: ``[B, n]``.
        initial: the initial agent per row ``[B]``.
        lr: the Adam learning rate (WALL: the RL ``lr`` 5e-4).

    marlx's own agents (:class:`~marlx.modules.agent.RNNAgent`, :class:`~marlx.modules.agent.MLPAgent`) take all
    rows in one pass: each row gets its own copy of the weights (``[B, ...]``, batched matrix products), one forward
    and one backward give every row's gradient (row b's loss reaches only row b's copy); the mixer runs row by row
    as in :func:`kl_followup_rows`. The ops are those of the row-by-row computation (on this CPU build the scores are
    bitwise equal, ``tests/attacks/test_fast_paths.py``); other agent networks, and a single row, go row by row.
    """
    forward = batched_agent_forward(agent) if inputs.shape[0] > 1 else None
    if forward is None:
        return kl_followup_rows(agent, inputs, hidden, mix, states, actions, attack_actions, initial, lr, eps)
    b, n, _ = inputs.shape
    rows = torch.arange(b, device=inputs.device)
    init = initial.long().to(inputs.device)
    a = actions.long()
    a_attacked = a.clone()
    a_attacked[rows, init] = attack_actions.long()[rows, init]
    with torch.enable_grad():
        # one leaf copy of the weights per row
        params = {k: v.detach().unsqueeze(0).expand(b, *v.shape).clone().requires_grad_(True)
                  for k, v in agent.named_parameters()}
        q = forward(params, inputs, hidden)  # [B, n, A]
        chosen = q.gather(-1, a.unsqueeze(-1)).squeeze(-1)
        chosen_attacked = q.gather(-1, a_attacked.unsqueeze(-1)).squeeze(-1)
        loss = 0.0
        for row in range(b):  # the mixer row by row, as one copy sees it (a batched mixer rounds differently)
            s = states[row].view(1, -1)
            with torch.no_grad():  # a constant of the loss
                normal = mix(chosen[row].view(1, n), s)
            loss = loss + ((mix(chosen_attacked[row].view(1, n), s) - normal) ** 2).mean()
        # the sum of the rows' losses: row b's reaches only row b's copy of the weights
        names = list(params)
        grads = torch.autograd.grad(loss, [params[k] for k in names], allow_unused=True)
    grads = {k: torch.zeros_like(params[k]) if g is None else g for k, g in zip(names, grads)}
    with torch.no_grad():
        updated = one_step_adam({k: p.detach() for k, p in params.items()}, grads, lr, eps)
        return kl_scores(q.detach(), forward(updated, inputs, hidden))


def batched_agent_forward(agent: torch.nn.Module) -> Callable | None:
    """``forward(params {name: [B, ...]}, x [B, n, in], h [B, n, H]) -> q [B, n, A]`` with row b's own weights, for
    marlx's :class:`~marlx.modules.agent.RNNAgent` (``GRUCell`` as PyTorch defines it) and
    :class:`~marlx.modules.agent.MLPAgent`; ``None`` for any other network."""
    from marlx.modules.agent import MLPAgent, RNNAgent

    def linear(params, name, x):  # x [B, n, in] with per-row weight [B, out, in] and bias [B, out]
        return torch.baddbmm(params[name + ".bias"].unsqueeze(1), x, params[name + ".weight"].transpose(1, 2))

    names = {k for k, _ in agent.named_parameters()}
    if type(agent) is RNNAgent and names == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "rnn.weight_ih",
                                             "rnn.weight_hh", "rnn.bias_ih", "rnn.bias_hh"}:
        def rnn_forward(params, x, h):
            y = F.relu(linear(params, "fc1", x))
            gi = torch.baddbmm(params["rnn.bias_ih"].unsqueeze(1), y, params["rnn.weight_ih"].transpose(1, 2))
            gh = torch.baddbmm(params["rnn.bias_hh"].unsqueeze(1), h, params["rnn.weight_hh"].transpose(1, 2))
            i_r, i_z, i_n = gi.chunk(3, -1)
            h_r, h_z, h_n = gh.chunk(3, -1)
            # ATen's GRUCell on CPU, op for op: r, z = σ(h + i); n = tanh(i_n + h_n·r); h' = (h - n)·z + n
            r, z = torch.sigmoid(h_r + i_r), torch.sigmoid(h_z + i_z)
            new = torch.tanh(i_n + h_n * r)
            return linear(params, "fc2", (h - new) * z + new)
        return rnn_forward
    if type(agent) is MLPAgent and names == {"fc1.weight", "fc1.bias", "fc_hidden.weight", "fc_hidden.bias",
                                             "fc2.weight", "fc2.bias"}:
        def mlp_forward(params, x, h):
            return linear(params, "fc2", F.relu(linear(params, "fc_hidden", F.relu(linear(params, "fc1", x)))))
        return mlp_forward
    return None


def kl_followup_rows(
    agent: torch.nn.Module,
    inputs: torch.Tensor,
    hidden: torch.Tensor,
    mix: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    states: torch.Tensor,
    actions: torch.Tensor,
    attack_actions: torch.Tensor,
    initial: torch.Tensor,
    lr: float,
    eps: float = ADAM_EPS,
) -> torch.Tensor:
    """:func:`kl_followup` one row at a time, for any agent network (a leaf copy of its weights per row)."""
    names = [k for k, _ in agent.named_parameters()]
    b, n, _ = inputs.shape

    def q_of(p, x, h):
        q, _ = functional_call(agent, p, (x.reshape(n, -1), h.reshape(n, -1)))
        return q  # [n, A]

    scores = []
    with torch.enable_grad():
        for row in range(b):  # one copy per sub-env (rows are few: the envs of one runner)
            # leaf copies of the weights: plain autograd (torch.func.grad costs seconds on its first call)
            params = {k: v.detach().clone().requires_grad_(True) for k, v in agent.named_parameters()}
            x, h, s = inputs[row], hidden[row], states[row].view(1, -1)
            a = actions[row].long().view(n, 1)
            a_attacked = a.clone()
            a_attacked[int(initial[row])] = attack_actions[row, int(initial[row])].long()
            q = q_of(params, x, h)
            normal = mix(q.gather(1, a).view(1, n), s).detach()
            attacked = mix(q.gather(1, a_attacked).view(1, n), s)
            grads = torch.autograd.grad(((attacked - normal) ** 2).mean(), [params[k] for k in names],
                                        allow_unused=True)
            grads = {k: torch.zeros_like(params[k]) if g is None else g for k, g in zip(names, grads)}
            with torch.no_grad():
                updated = one_step_adam(params, grads, lr, eps)
                scores.append(kl_scores(q.detach(), q_of(updated, x, h)))
    return torch.stack(scores)


def l2_scores(obs: np.ndarray, initial: np.ndarray) -> np.ndarray:
    """Squared L2 distance of every agent's observation to the initial agent's: ``[B, n, d], [B] -> [B, n]``."""
    obs = np.asarray(obs, dtype=np.float64)
    ref = obs[np.arange(obs.shape[0]), np.minimum(initial, obs.shape[1] - 1)]
    return ((obs - ref[:, None]) ** 2).sum(-1)
