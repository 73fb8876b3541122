"""FoX's learner: QMIX's TD learner + CDS's L1 penalty on the per-agent local heads (spec §2).

FoX's two team-level intrinsic rewards are intrinsic-reward components (:mod:`marlx.intrinsic.fox`):
``fox_count`` (the count bonus of the next formation) and ``fox_awareness`` (the formation-awareness bonus and the
formation VAE, trained after each RL update on that batch). QMIX's learner adds their bonuses before the TD target.
"""

from __future__ import annotations

from typing import Any

import torch

from marlx.algorithms.fox.module import FOX_LOCAL_Q
from marlx.algorithms.qmix.learner import QMIXLearner
from marlx.intrinsic.fox import FoXAwareness
from marlx.runtime.columns import MASK


class FoXLearner(QMIXLearner):
    def build(self) -> None:
        super().build()
        for module_id, components in self.intrinsic.items():
            module = self.module[module_id].unwrapped()
            for c in components:
                if isinstance(c, FoXAwareness):
                    c.build_vae(module)  # now, so that checkpoints restore into it

    @property
    def vaes(self) -> dict:
        """The formation VAE of each module (``{module_id: FormationVAE}``)."""
        return {mid: c.vae for mid, cs in self.intrinsic.items() for c in cs if isinstance(c, FoXAwareness)}

    def compute_loss_for_module(self, *, module_id, config, batch: dict, fwd_out: dict[str, Any]) -> torch.Tensor:
        loss = super().compute_loss_for_module(module_id=module_id, config=config, batch=batch, fwd_out=fwd_out)
        if config.local_head_l1 > 0:
            local = fwd_out[FOX_LOCAL_Q][:, :-1].abs().mean(dim=(-1, -2))  # [B, T]
            mask = batch[MASK]
            l1 = (local * mask).sum() / mask.sum().clamp(min=1)
            self.metrics.log_value((module_id, "fox_local_l1"), l1.item(), window=1)
            loss = loss + config.local_head_l1 * l1
        return loss
