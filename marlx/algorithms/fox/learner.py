"""FoX's learner: QMIX's TD learner + the two team-level intrinsic rewards + the formation VAE (spec §3-4).

Through QMIX's intrinsic-reward seam, the reward of step t gets
``fox_count_bonus`` (computed by the replay from N(F_{t+1})) + ``beta2 * sum_i norm(b_i)``, the
formation-awareness bonus of the next step's hidden states (no gradient). The TD loss gets CDS's L1 penalty
on the local heads. After each RL update the VAE trains on ``vae_samples_per_update`` random
(episode, t, agent) samples of that batch, with detached hidden states.
"""

from __future__ import annotations

from typing import Any

import torch

from marlx.algorithms.fox.module import FOX_HIDDEN, FOX_LOCAL_Q
from marlx.algorithms.fox.replay import FOX_COUNT_BONUS, FOX_FAR, FOX_KEYS, FOX_NEAR
from marlx.algorithms.fox.vae import AwarenessNormaliser, FormationVAE
from marlx.algorithms.qmix.learner import QMIXLearner
from marlx.runtime.columns import MASK


def gather_agents(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x [..., n, H]``, ``index [..., n]`` -> ``x[..., index[j], :]`` for every agent j."""
    return torch.take_along_dim(x, index.long().unsqueeze(-1).expand(*index.shape, x.shape[-1]), dim=-2)


class FoXLearner(QMIXLearner):
    def build(self) -> None:
        super().build()
        cfg = self.config
        self.vaes: dict[str, FormationVAE] = {}
        self.normalisers: dict[str, AwarenessNormaliser] = {}
        for module_id, module in self.module.items():
            module = module.unwrapped()
            self.vaes[module_id] = FormationVAE(
                n_agents=module.n_agents, hidden_dim=module.hidden_dim, vae_hidden=cfg.vae_hidden_dim,
                latent_dim=cfg.vae_latent_dim, key_scale=cfg.vae_key_scale, tau_weight=cfg.vae_tau_weight,
                lr=cfg.vae_lr, grad_clip=cfg.vae_grad_clip, released_grad_accumulation=cfg.released_grad_accumulation,
                kl_weight=cfg.vae_kl_weight, encoder=module.formation_encoder,
            ).to(next(module.parameters()).device)
            self.normalisers[module_id] = AwarenessNormaliser(cfg.bonus_normalisation)
        self._vae_inputs: dict[str, tuple] = {}
        self._vae_rng = torch.Generator().manual_seed(int(cfg.seed or 0))

    # -- intrinsic rewards --------------------------------------------------------------------
    def intrinsic_reward(self, module_id, batch: dict, fwd_out: dict) -> torch.Tensor:
        cfg = self.config
        mask = batch[MASK]
        hidden = fwd_out[FOX_HIDDEN].detach()  # [B, T+1, n, H]
        keys, far, near = batch[FOX_KEYS], batch[FOX_FAR], batch[FOX_NEAR]
        self._vae_inputs[module_id] = (hidden, keys, far, near, mask)
        count = batch[FOX_COUNT_BONUS]
        bonus = count
        if cfg.beta2 != 0.0:
            h_next, k_next = hidden[:, 1:], keys[:, 1:]
            h_far, h_near = gather_agents(h_next, far[:, 1:]), gather_agents(h_next, near[:, 1:])
            n = h_next.shape[2]
            b, log_q = self.vaes[module_id].awareness_log_ratio(
                h_next, h_far, h_near, k_next.unsqueeze(2).expand(-1, -1, n, -1), cfg.awareness_samples
            )
            agent_mask = mask.unsqueeze(-1).expand_as(b)
            awareness = self.normalisers[module_id](b, log_q, agent_mask) * agent_mask
            awareness = cfg.beta2 * awareness.sum(-1)
            bonus = bonus + awareness
            self.metrics.log_value((module_id, "fox_awareness_bonus_mean"), _masked_mean(awareness, mask), window=1)
        self.metrics.log_value((module_id, "fox_count_bonus_mean"), _masked_mean(count, mask), window=1)
        return bonus

    def compute_loss_for_module(self, *, module_id, config, batch: dict, fwd_out: dict[str, Any]) -> torch.Tensor:
        loss = super().compute_loss_for_module(module_id=module_id, config=config, batch=batch, fwd_out=fwd_out)
        if config.local_head_l1 > 0:
            local = fwd_out[FOX_LOCAL_Q][:, :-1].abs().mean(dim=(-1, -2))  # [B, T]
            l1 = _masked_mean(local, batch[MASK], as_tensor=True)
            self.metrics.log_value((module_id, "fox_local_l1"), l1.item(), window=1)
            loss = loss + config.local_head_l1 * l1
        return loss

    # -- formation VAE ------------------------------------------------------------------------
    def after_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        super().after_gradient_based_update(timesteps=timesteps)
        for module_id, (hidden, keys, far, near, mask) in self._vae_inputs.items():
            valid = mask.nonzero()  # (episode, t) pairs of real steps (t < T: the mask covers transitions)
            if len(valid) == 0:
                continue
            k = self.config.vae_samples_per_update
            pick = valid[torch.randint(len(valid), (k,), generator=self._vae_rng)]
            agent = torch.randint(hidden.shape[2], (k,), generator=self._vae_rng)
            e, t = pick[:, 0], pick[:, 1]
            h = hidden[e, t]  # [k, n, H]
            h_i = h[torch.arange(k), agent]
            h_far = h[torch.arange(k), far[e, t, agent].long()]
            h_near = h[torch.arange(k), near[e, t, agent].long()]
            losses = self.vaes[module_id].train_step(h_i, h_far, h_near, keys[e, t])
            for name, value in losses.items():
                self.metrics.log_value((module_id, f"fox_vae_{name}"), value, window=1)
        self._vae_inputs = {}

    # -- checkpointing ------------------------------------------------------------------------
    def get_state(self, *args, **kwargs):
        state = super().get_state(*args, **kwargs)
        state["marlx_fox"] = {
            mid: {
                "decoder": vae.decoder.state_dict(),
                "decoder_tau": vae.decoder_tau.state_dict(),
                "optimizers": {name: opt.state_dict() for name, opt in vae.optimizers.items()},
                "normaliser": self.normalisers[mid].get_state(),
            }
            for mid, vae in self.vaes.items()
        }
        return state

    def set_state(self, state):
        fox = state.get("marlx_fox", {})
        super().set_state({k: v for k, v in state.items() if k != "marlx_fox"})
        for mid, part in fox.items():
            vae = self.vaes[mid]
            vae.decoder.load_state_dict(part["decoder"])
            vae.decoder_tau.load_state_dict(part["decoder_tau"])
            for name, opt in vae.optimizers.items():
                opt.load_state_dict(part["optimizers"][name])
            self.normalisers[mid].set_state(part["normaliser"])


def _masked_mean(x: torch.Tensor, mask: torch.Tensor, as_tensor: bool = False):
    value = (x * mask).sum() / mask.sum().clamp(min=1)
    return value if as_tensor else value.item()
