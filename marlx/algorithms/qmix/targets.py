"""TD targets over padded whole episodes (PyMARL layout ``[B, T]``), with terminated/truncated kept apart.

Notation: ``rewards``, ``terminated`` and ``mask`` are ``[B, T]`` (``mask`` 1 on real transitions);
``next_values`` is ``[B, T]`` with ``next_values[:, t] = Q_tot_target(s_{t+1}, a*_{t+1})``.

An episode that ends by termination gets no bootstrap after its last step; an episode that is cut by a time
limit (truncated) or by the end of the stored data bootstraps from ``Q(s_L)`` after its last step ``L-1``.
Padded steps (``mask == 0``) give target 0 and are excluded from the loss by the learner.
"""

from __future__ import annotations

import torch


def _next_mask(mask: torch.Tensor) -> torch.Tensor:
    """``mask[:, t+1]`` with 0 after the last column."""
    return torch.cat([mask[:, 1:], mask.new_zeros(mask.shape[0], 1)], dim=1)


def one_step_targets(rewards, terminated, mask, next_values, gamma: float) -> torch.Tensor:
    """``y_t = r_t + gamma * (1 - terminated_t) * Q(s_{t+1})``."""
    return (rewards + gamma * (1.0 - terminated) * next_values) * mask


def td_lambda_targets(rewards, terminated, mask, next_values, gamma: float, td_lambda: float) -> torch.Tensor:
    """TD(lambda) return (PyMARL2's ``build_td_lambda_targets``, fixed for truncation inside the batch).

    ``G_t = r_t + gamma (1 - term_t) [ (1 - lambda m_{t+1}) Q(s_{t+1}) + lambda m_{t+1} G_{t+1} ]`` where
    ``m_{t+1}`` is 1 when step ``t+1`` is a real transition: after an episode's last step the return
    bootstraps fully from ``Q(s_L)`` (truncation) or stops (termination).
    """
    nxt = _next_mask(mask)
    out = torch.zeros_like(rewards)
    g = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        cont = (1.0 - td_lambda * nxt[:, t]) * next_values[:, t] + td_lambda * nxt[:, t] * g
        g = (rewards[:, t] + gamma * (1.0 - terminated[:, t]) * cont) * mask[:, t]
        out[:, t] = g
    return out


def n_step_targets(rewards, terminated, mask, next_values, gamma: float, n: int) -> torch.Tensor:
    """``y_t = sum_{k<n} gamma^k r_{t+k} + gamma^n Q(s_{t+n})``, cut at termination, bootstrapping early at
    the end of an episode's data (truncation)."""
    b, T = rewards.shape
    pad = lambda x: torch.cat([x, x.new_zeros(b, n)], dim=1)  # noqa: E731
    r, term, m, v = pad(rewards), pad(terminated), pad(mask), pad(next_values)
    out = torch.zeros_like(rewards)
    alive = mask.clone()
    disc = 1.0
    for k in range(n):
        sl = slice(k, k + T)
        out = out + alive * disc * r[:, sl]
        alive_next = alive * (1.0 - term[:, sl])
        disc *= gamma
        # bootstrap from Q(s_{t+k+1}) at the n-th step or when the data ends after step t+k
        stop = torch.ones_like(alive) if k == n - 1 else 1.0 - m[:, k + 1 : k + 1 + T]
        out = out + alive_next * stop * disc * v[:, sl]
        alive = alive_next * (1.0 - stop)
    return out


def compute_targets(rewards, terminated, mask, next_values, gamma: float, td_lambda: float = 0.0,
                    n_step: int = 1) -> torch.Tensor:
    """The configured target: TD(lambda) when ``td_lambda > 0``, else n-step (``n_step=1``: one-step TD)."""
    if td_lambda > 0:
        return td_lambda_targets(rewards, terminated, mask, next_values, gamma, td_lambda)
    if n_step > 1:
        return n_step_targets(rewards, terminated, mask, next_values, gamma, n_step)
    return one_step_targets(rewards, terminated, mask, next_values, gamma)
