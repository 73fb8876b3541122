"""FoX's learner: QMIX's TD learner + CDS's L1 penalty on the per-agent local heads (spec §2).

FoX's two team-level intrinsic rewards are intrinsic-reward components (:mod:`marlx.intrinsic.fox`):
``fox_count`` (the count bonus of the next formation) and ``fox_awareness`` (the formation-awareness bonus and the
formation VAE, trained after each RL update on that batch). QMIX's learner adds their bonuses before the TD target.
"""

from __future__ import annotations

from typing import Any

import torch

from marlx.algorithms.fox.module import FOX_LOCAL_Q
from marlx.algorithms.qmix.learner import NUM_EPISODES_SAMPLED_LIFETIME, QMIXLearner
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

    def after_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        episodes = int(timesteps.get(NUM_EPISODES_SAMPLED_LIFETIME, 0) or 0)
        for components in self.intrinsic.values():
            for c in components:
                if isinstance(c, FoXAwareness):
                    c.episodes_sampled = episodes  # the VAE's episode schedule (vae_schedule="episodes")
        super().after_gradient_based_update(timesteps=timesteps)

    def episode_priorities(self) -> dict:
        """``{module_id: [B]}``: the last batch's mean squared TD error per episode (prioritised replay)."""
        out = {}
        for module_id, td in getattr(self, "last_td_error", {}).items():
            mask = self._last_mask[module_id]
            out[module_id] = ((td**2).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy()
        return out

    def compute_loss_for_module(self, *, module_id, config, batch: dict, fwd_out: dict[str, Any]) -> torch.Tensor:
        loss = super().compute_loss_for_module(module_id=module_id, config=config, batch=batch, fwd_out=fwd_out)
        self.__dict__.setdefault("_last_mask", {})[module_id] = batch[MASK].detach()
        if config.local_head_l1 > 0:
            local = fwd_out[FOX_LOCAL_Q][:, :-1].abs().mean(dim=(-1, -2))  # [B, T]
            mask = batch[MASK]
            l1 = (local * mask).sum() / mask.sum().clamp(min=1)
            self.metrics.log_value((module_id, "fox_local_l1"), l1.item(), window=1)
            loss = loss + config.local_head_l1 * l1
        return loss
