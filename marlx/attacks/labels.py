"""Training the Wolfpack attacker from replay: planning-model loss, ΔQ^WP labels, Q-difference loss.

Follows ``learners/q_learner.py:80-354`` of ``sunwoolee0504/WALL`` (spec §6-8). All tensors are PyMARL-layout
``[B, T, ...]`` over the T transitions of (padded) episodes.

Label of window position τ (no gradient):
``ΔQ^WP(τ) = Σ_{k=0..3} Q_tot(s_{τ+k}, a_{τ+k}) - attacked(τ)``, where the first sum runs along the recorded
trajectory (cut at the batch end, padded steps not masked, as released) and ``attacked(τ)`` is

* ``k = 0``: ``mix`` of the step's Q values with the initial agent's replaced by its attack-action value, at ``s_τ``;
* ``k = 1..3``: the planning model rolled on τ's own window (states, hidden states, intended one-hot actions, the
  last replaced by the attacked joint action); agents' Q values from the predicted observations, the last joint
  action and the stored ``h_τ`` (reused for all three steps, with ``avail_τ``, as released); follow-up agents take
  their argmin action, the others their greedy one; ``mix`` at the predicted state.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F

_BIG = 9999999.0


def left_padded_windows(x: torch.Tensor, length: int) -> torch.Tensor:
    """``[B, T, ...] -> [B, T, L, ...]``: entry ``[b, t, j]`` is ``x[b, t - L + 1 + j]`` (zeros before step 0)."""
    pad = x.new_zeros(x.shape[0], length - 1, *x.shape[2:])
    padded = torch.cat([pad, x], dim=1)  # [B, T+L-1, ...]
    idx = torch.arange(x.shape[1], device=x.device).view(-1, 1) + torch.arange(length, device=x.device).view(1, -1)
    return padded[:, idx]


def pick_windows(x: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    """``x [B, T, ...]``, ``starts [B]`` -> ``x[b, starts[b] : starts[b] + L]`` stacked: ``[B, L, ...]``."""
    idx = starts.view(-1, 1).to(x.device) + torch.arange(length, device=x.device).view(1, -1)  # [B, L]
    return x[torch.arange(x.shape[0], device=x.device).view(-1, 1), idx]


def normal_sums(q_tot: torch.Tensor, duration: int) -> torch.Tensor:
    """``[B, T] -> [B, T]``: ``Σ_{k=0..duration} q_tot[:, t + k]``, cut at the end of the batch."""
    padded = F.pad(q_tot, (0, duration))
    return sum(padded[:, k: k + q_tot.shape[1]] for k in range(duration + 1))


def _replace(values: torch.Tensor, agents: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``values [N, n]`` with ``values[r, agents[r]] = new[r, agents[r]]``; agent index ``n`` (none) is skipped."""
    n = values.shape[-1]
    hit = F.one_hot(agents.clamp(max=n), n + 1)[..., :n].bool()  # [N, n] (the sentinel n hits nothing)
    return torch.where(hit, new, values)


def attacked_values(
    plan: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    agent_q: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    mix: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    q_now: torch.Tensor,
    intended: torch.Tensor,
    attack_actions: torch.Tensor,
    initial: torch.Tensor,
    followup: torch.Tensor,
    state_hist: torch.Tensor,
    hidden_hist: torch.Tensor,
    action_hist: torch.Tensor,
    avail: torch.Tensor,
    duration: int = 3,
) -> torch.Tensor:
    """``attacked(τ)`` for N window positions at once (see the module docstring). Returns ``[N]``.

    Args:
        plan: ``(states [N, L, S], hidden [N, L, n, H], onehot actions [N, L, n, A]) -> (s' [N, S], obs' [N, n, d])``
            read at the last position.
        agent_q: ``(obs [N, n, d], last joint action one-hot [N, n, A], hidden [N, n, H]) -> q [N, n, A]``.
        mix: ``(chosen q [N, n], state [N, S]) -> [N]``.
        q_now: the agents' Q values at τ ``[N, n, A]``; ``intended``, ``attack_actions``: ``[N, n]``.
        initial: the stored initial agent ``[N]``; ``followup``: the stored group ``[N, m]`` (``n`` = none).
        state_hist, hidden_hist, action_hist: τ's window ``[N, L, ...]`` ending at τ (intended one-hot actions).
        avail: ``avail_τ [N, n, A]``.
        duration: follow-up steps (3).
    """
    n_actions = q_now.shape[-1]
    chosen = q_now.gather(-1, intended.unsqueeze(-1)).squeeze(-1)
    attack_q = q_now.gather(-1, attack_actions.unsqueeze(-1)).squeeze(-1)
    total = mix(_replace(chosen, initial, attack_q), state_hist[:, -1])
    joint = _replace(intended, initial, attack_actions)
    action_hist = torch.cat([action_hist[:, :-1], F.one_hot(joint, n_actions).to(action_hist.dtype).unsqueeze(1)], 1)
    hidden = hidden_hist[:, -1]
    for _ in range(duration):
        next_state, next_obs = plan(state_hist, hidden_hist, action_hist)
        q = agent_q(next_obs, action_hist[:, -1], hidden)
        greedy = q.masked_fill(avail <= 0, -_BIG).argmax(-1)
        worst = q.masked_fill(avail <= 0, _BIG).argmin(-1)
        joint = greedy
        for j in range(followup.shape[-1]):
            joint = _replace(joint, followup[:, j], worst)
        total = total + mix(q.gather(-1, joint.unsqueeze(-1)).squeeze(-1), next_state)
        state_hist = torch.cat([state_hist[:, 1:], next_state.unsqueeze(1)], 1)
        onehot = F.one_hot(joint, n_actions).to(action_hist.dtype).unsqueeze(1)
        action_hist = torch.cat([action_hist[:, 1:], onehot], 1)
    return total


def qdiff_loss(pred: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The released Q-difference loss over one window of L positions.

    ``pred [B, L, P]``: the prediction at window position i (history ending there) for the stored initial agent;
    ``labels [B, L]``: ΔQ^WP; ``mask [B, L]``. Position i's entry k predicts the label of position i + k:
    ``Σ_i ||pred[:, i, :L-i] - labels[:, i:]||² / (L - i)``, divided by ``mask.sum()``.
    """
    length = labels.shape[1]
    pred = pred * mask.unsqueeze(-1)
    labels = labels * mask
    err = pred.new_zeros(())
    for i in range(length):
        width = min(length - i, pred.shape[-1])
        err = err + ((pred[:, i, :width] - labels[:, i: i + width]) ** 2).sum() / (length - i)
    return err / mask.sum().clamp(min=1)


def planning_loss(pred_state, pred_obs, next_state, next_obs, mask) -> torch.Tensor:
    """Masked MSE of the planning model: state term + observation term, each normalised by its mask size."""
    ms = mask.unsqueeze(-1).expand_as(pred_state)
    mo = mask.view(*mask.shape, 1, 1).expand_as(pred_obs)
    loss_state = (((pred_state - next_state) * ms) ** 2).sum() / ms.sum().clamp(min=1)
    loss_obs = (((pred_obs - next_obs) * mo) ** 2).sum() / mo.sum().clamp(min=1)
    return loss_state + loss_obs
