"""MAPPO's per-agent estimators and losses as plain tensor functions (spec ``shared/specs/mappo.md`` §4.3).

They are the learner's building blocks and what the mechanism tests check with hand-computed values:

* :func:`gae` — GAE per agent over padded fragments, cut at episode ends, truncation bootstrapped or not;
* :func:`normalize_advantages` — mean/std over the active rows only (official ``r_mappo.py``: nanmean/nanstd);
* :func:`policy_loss` — PPO's clipped surrogate with one ratio PER AGENT (official ``r_mappo.py``), not the
  joint ratio RLlib's PPO would form on a ``MultiDiscrete`` action (:func:`joint_policy_loss`, for comparison);
* :func:`huber` and :func:`value_loss` — Huber loss (delta 10) with MAPPO's value clipping
  ``max(L(ret - V), L(ret - V_clip))``, ``V_clip = V_old + clamp(V - V_old, +-eps)`` (official
  ``cal_value_loss``).
"""

from __future__ import annotations

import torch


def gae(rewards: torch.Tensor, values: torch.Tensor, terminated: torch.Tensor, truncated: torch.Tensor,
        mask: torch.Tensor, gamma: float, lam: float, bootstrap_on_truncation: bool = True):
    """Per-agent GAE.

    Args:
        rewards: ``[B, T, n]`` (team reward broadcast to agents, plus any per-agent intrinsic reward).
        values: ``[B, T+1, n]`` (denormalised); entry ``t+1`` of a fragment's last valid step ``t`` is the value of
            its bootstrap (unfinished fragment) or final (finished episode) observation.
        terminated, truncated: ``[B, T]``, set at the last step of a finished episode.
        mask: ``[B, T]`` valid (non-padded) steps.
        bootstrap_on_truncation: at a truncation use ``gamma * V(s_T)`` (RLlib's semantics); False treats a
            time limit as terminal (official MAPPO ``use_proper_time_limits=False``).

    Returns:
        ``(advantages, returns)``, both ``[B, T, n]``, zero on padded steps; ``returns = advantages + V``.
    """
    B, T, n = rewards.shape
    term = terminated.float().unsqueeze(-1)
    trunc = truncated.float().unsqueeze(-1)
    valid = mask.float().unsqueeze(-1)
    boot = 1.0 - term if bootstrap_on_truncation else (1.0 - term) * (1.0 - trunc)
    cont = (1.0 - term) * (1.0 - trunc)  # the GAE sum continues into t+1
    adv = torch.zeros_like(rewards)
    nxt = torch.zeros(B, n, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * boot[:, t] * values[:, t + 1] - values[:, t]
        next_valid = valid[:, t + 1] if t + 1 < T else torch.zeros_like(valid[:, t])
        nxt = (delta + gamma * lam * cont[:, t] * next_valid * nxt) * valid[:, t]
        adv[:, t] = nxt
    returns = (adv + values[:, :T]) * valid
    return adv, returns


def normalize_advantages(adv: torch.Tensor, active: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``(adv - mean) / (std + eps)`` with mean and (population) std over ``active > 0`` entries only."""
    w = active.float()
    n = w.sum().clamp(min=1.0)
    mean = (adv * w).sum() / n
    std = (((adv - mean) ** 2 * w).sum() / n).sqrt()
    return (adv - mean) / (std + eps) * w


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def policy_loss(logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, active: torch.Tensor,
                clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-agent clipped surrogate: all inputs ``[..., n]``. Returns ``(loss, clip_fraction)``."""
    ratio = torch.exp(logp - logp_old)
    surr = torch.min(ratio * adv, torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * adv)
    clipped = ((ratio - 1.0).abs() > clip).float()
    return -masked_mean(surr, active), masked_mean(clipped, active)


def joint_policy_loss(logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, valid: torch.Tensor,
                      clip: float) -> torch.Tensor:
    """The surrogate with ONE joint ratio ``prod_i ratio_i`` per step (what PPO does on a ``MultiDiscrete``
    action) and the team advantage ``adv [..]``; here for comparison only."""
    ratio = torch.exp((logp - logp_old).sum(-1))
    surr = torch.min(ratio * adv, torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * adv)
    return -masked_mean(surr, valid)


def huber(e: torch.Tensor, delta: float) -> torch.Tensor:
    """``e^2 / 2`` for ``|e| <= delta``, else ``delta * (|e| - delta / 2)``."""
    a = e.abs()
    return torch.where(a <= delta, 0.5 * e**2, delta * (a - 0.5 * delta))


def value_loss(values: torch.Tensor, values_old: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, *,
               clip: float | None, huber_delta: float | None) -> torch.Tensor:
    """MAPPO's value loss (all in normalised units when ValueNorm is on).

    ``clip`` None: no value clipping; ``huber_delta`` None: squared error ``e^2 / 2`` (official MSE branch).
    """
    def loss(e):
        return huber(e, huber_delta) if huber_delta is not None else 0.5 * e**2

    err = returns - values
    if clip is None:
        per = loss(err)
    else:
        v_clip = values_old + torch.clamp(values - values_old, -clip, clip)
        per = torch.max(loss(err), loss(returns - v_clip))
    return masked_mean(per, mask)
