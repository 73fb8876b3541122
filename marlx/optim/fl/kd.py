"""Knowledge distillation pieces of on-device KD for weak clients (Lim et al., ECAI 2025)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def kd_weight(t: int, max_weight: float = 0.5, rampup_rounds: int = 300, sharpness: float = 5.0) -> float:
    """The KD loss weight at round ``t``: ``w(t) = max_weight * exp(-sharpness * (1 - t / rampup)^2)`` for
    ``t < rampup_rounds``, then ``max_weight`` (paper: 0.5, 300 rounds, sharpness 5)."""
    if rampup_rounds <= 0 or t >= rampup_rounds:
        return float(max_weight)
    return float(max_weight * math.exp(-sharpness * (1.0 - t / rampup_rounds) ** 2))


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 3.0) -> torch.Tensor:
    """``T^2 * KL(softmax(z_teacher / T) || softmax(z_student / T))``, mean over the batch."""
    t = temperature
    return (t * t) * F.kl_div(
        F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
        reduction="batchmean", log_target=True,
    )
