"""``intrinsic: {constant: {value: b}}``: the same bonus ``b`` on every valid step.

A calibration tool and the seam's test: with it, every one-step TD target rises by exactly ``b``.
"""

from __future__ import annotations

import numbers

import torch

from marlx.intrinsic.base import IntrinsicReward, register_intrinsic


@register_intrinsic("constant")
class ConstantBonus(IntrinsicReward):
    """A constant per-step bonus ``value`` (default 0.0)."""

    @classmethod
    def check_options(cls, options: dict) -> None:
        unknown = set(options) - {"value"}
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)}; valid: ['value']")
        if not isinstance(options.get("value", 0.0), numbers.Real):
            raise ValueError(f"value must be a number, got {options['value']!r}")

    def bonus(self, batch: dict, fwd_out: dict, module):
        rewards = batch["rewards"]
        return torch.full_like(rewards, float(self.options.get("value", 0.0)))
