"""The MAPPO/IPPO TorchLearner: per-agent GAE once per update, chunked recurrent epochs, two optimisers.

``update(batch)`` receives the padded fragments the algorithm collected (team observation leaves
``[B, T+1, ...]``, ``actions``/``action_logp`` ``[B, T, n]``, ``rewards``/``terminateds``/``truncateds``/``mask``
``[B, T]``, the actor's hidden state before every step ``h_pi_in [B, T, n, H]``). Once per call
(:meth:`MAPPOLearner.prepare`, the learner-side ``TeamGAE`` of spec §4.3):

1. critic pass without gradient: normalised ``V [B, T+1, n]``, denormalised with ValueNorm for GAE;
2. the intrinsic seam (:meth:`MAPPOLearner.intrinsic_reward`): the configured components' bonuses ``[B, T]``
   (team, added for every agent) or ``[B, T, n]`` (per agent) are added to the team reward BEFORE GAE;
3. per-agent GAE (:func:`~marlx.algorithms.mappo.losses.gae`), advantages normalised over active rows
   (``adv_norm``);
4. cut into chunks of ``data_chunk_length`` steps with the stored hidden state at each chunk start.

Then ``num_epochs`` passes over shuffled minibatches of chunks, each through RLlib's ``_update`` (forward_train
-> ``compute_loss_for_module`` -> gradients -> per-optimiser grad-norm clip -> step), so ``marlx.optim`` hooks
(which wrap ``_uncompiled_update``) work unchanged. Two optimisers (``actor``, ``critic``; Adam) as in the
official ``R_MAPPOPolicy``; RLlib clips gradients per optimiser.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.torch.torch_learner import TorchLearner

from marlx.algorithms.mappo.losses import gae, masked_mean, normalize_advantages, policy_loss, value_loss
from marlx.intrinsic.base import IntrinsicLearnerMixin
from marlx.modules.mappo_module import H_PI, LOGITS, VALUES, alive_mask, entropy_of
from marlx.runtime.columns import ACTION_LOGP, MASK

TRUNCATEDS = Columns.TRUNCATEDS
H_IN = H_PI + "_in"
ADV, RET, V_OLD, M_PI, M_V = "mappo_adv", "mappo_ret", "mappo_v_old", "mappo_m_pi", "mappo_m_v"


def cut_chunks(x: torch.Tensor, length: int) -> torch.Tensor:
    """``[B, T, ...]`` -> ``[B * ceil(T / length), length, ...]`` (zero padded at the end)."""
    B, T = x.shape[:2]
    c = math.ceil(T / length)
    pad = c * length - T
    if pad:
        x = torch.cat([x, x.new_zeros(B, pad, *x.shape[2:])], dim=1)
    return x.reshape(B * c, length, *x.shape[2:])


class MAPPOLearner(IntrinsicLearnerMixin, TorchLearner):
    """PPO with per-agent ratios, a (centralised) critic, value normalisation and chunked recurrence."""

    def build(self) -> None:
        super().build()
        self.build_intrinsic_components()
        self._rng = torch.Generator().manual_seed(int(self.config.seed or 0))

    # -- optimisers ---------------------------------------------------------------------------
    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        module = self.module[module_id].unwrapped()
        actor = list(module.actor.parameters())
        critic = list(module.critic.parameters())
        self.register_optimizer(module_id=module_id, optimizer_name="actor",
                                optimizer=torch.optim.Adam(actor, lr=config.lr, eps=config.opti_eps,
                                                           weight_decay=config.weight_decay),
                                params=actor, lr_or_lr_schedule=config.lr)
        self.register_optimizer(module_id=module_id, optimizer_name="critic",
                                optimizer=torch.optim.Adam(critic, lr=config.critic_lr, eps=config.opti_eps,
                                                           weight_decay=config.weight_decay),
                                params=critic, lr_or_lr_schedule=config.critic_lr)

    # -- intrinsic seam -----------------------------------------------------------------------
    def intrinsic_reward(self, module_id, batch: dict, fwd_out: dict) -> torch.Tensor | None:
        """The configured components' bonuses: ``[B, T]`` (team) or ``[B, T, n]`` (per agent); None = none."""
        components = self.intrinsic.get(module_id, [])
        if not components:
            return None
        module = self.module[module_id].unwrapped()
        self._intrinsic_inputs[module_id] = (batch, fwd_out)
        mask = batch[MASK]
        parts = []
        for component in components:
            b = component.bonus(batch, fwd_out, module)
            if b is None:
                continue
            b = b.detach().float()
            m = mask if b.dim() == 2 else mask.unsqueeze(-1).expand_as(b)
            b = b * m
            self.metrics.log_value((module_id, f"intrinsic/{component.name}_mean"),
                                   (b.sum() / m.sum().clamp(min=1)).item(), window=1)
            self.metrics.log_value((module_id, f"intrinsic/{component.name}_max"), b.max().item(), window=1)
            if b.dim() == 3:  # per agent: mean of each agent's bonus
                per_agent = b.sum((0, 1)) / m.sum((0, 1)).clamp(min=1)
                for i, value in enumerate(per_agent.tolist()):
                    self.metrics.log_value((module_id, f"intrinsic/{component.name}_mean_agent{i}"), value, window=1)
            parts.append(b)
        if not parts:
            return None
        if any(p.dim() == 3 for p in parts):
            parts = [p if p.dim() == 3 else p.unsqueeze(-1) for p in parts]
        total = parts[0]
        for p in parts[1:]:
            total = total + p
        return total

    # -- once per update: GAE and chunks ------------------------------------------------------
    @torch.no_grad()
    def prepare(self, module_id, batch: dict) -> dict:
        cfg = self.config
        module = self.module[module_id].unwrapped()
        obs = module.team_obs(batch)
        mask = batch[MASK].float()
        T = mask.shape[1]
        v_norm = module.values(obs)  # [B, T+1, n]
        v = module.value_norm.denormalize(v_norm) if cfg.use_valuenorm else v_norm
        n = v.shape[-1]
        rewards = batch[Columns.REWARDS].float().unsqueeze(-1).expand(-1, -1, n)
        bonus = self.intrinsic_reward(module_id, batch, {})
        if bonus is not None:
            rewards = rewards + (bonus.unsqueeze(-1) if bonus.dim() == 2 else bonus)
        adv, ret = gae(rewards, v, batch[Columns.TERMINATEDS], batch[TRUNCATEDS], mask, cfg.gamma, cfg.lambda_,
                       cfg.bootstrap_on_truncation)
        alive = alive_mask({k: x[:, :T] for k, x in obs.items()})
        m_pi = alive * mask.unsqueeze(-1)
        m_v = m_pi if cfg.value_active_masks else mask.unsqueeze(-1).expand_as(m_pi)
        self.metrics.log_value((module_id, "advantage_mean_raw"), masked_mean(adv, m_pi).item(), window=1)
        if cfg.adv_norm == "active":
            adv = normalize_advantages(adv, m_pi)
        elif cfg.adv_norm == "all":
            adv = normalize_advantages(adv, m_v)
        if cfg.use_valuenorm and cfg.valuenorm_update == "iteration":
            module.value_norm.update(ret, m_v)
        L = cfg.data_chunk_length
        cols = {k: x[:, :T] for k, x in obs.items()}
        cols.update({Columns.ACTIONS: batch[Columns.ACTIONS], ACTION_LOGP: batch[ACTION_LOGP].float(), ADV: adv,
                     RET: ret, V_OLD: v_norm[:, :T], M_PI: m_pi, M_V: m_v, MASK: mask})
        chunks = {k: cut_chunks(x, L) for k, x in cols.items()}
        chunks[H_IN] = cut_chunks(batch[H_IN].float(), L)[:, 0]
        keep = chunks[MASK].sum(1) > 0
        self.metrics.log_value((module_id, "value_mean"), masked_mean(v[:, :T], m_v).item(), window=1)
        self.metrics.log_value((module_id, "return_mean"), masked_mean(ret, m_v).item(), window=1)
        return {k: x[keep] for k, x in chunks.items()}

    def update(self, batch=None, *, training_data=None, timesteps: dict | None = None, **kwargs) -> Any:
        """One MAPPO iteration on the collected fragments (see the module docstring)."""
        self._check_is_built()
        if training_data is not None:  # what LearnerGroup.update passes (Ray 2.60)
            training_data.solve_refs()
            batch = training_data.batch if training_data.batch is not None else batch
        timesteps = timesteps or {}
        self.before_gradient_based_update(timesteps=timesteps)
        self._weights_seq_no += 1
        batch = self._convert_batch_type(batch)
        data = {mid: self.prepare(mid, dict(b)) for mid, b in batch.policy_batches.items()}
        cfg = self.config
        loss_per_module = {}
        for _ in range(cfg.num_epochs):
            for mid, chunks in data.items():
                count = chunks[MASK].shape[0]
                if cfg.minibatch_size:
                    num = max(1, math.ceil(count * cfg.data_chunk_length / cfg.minibatch_size))
                else:
                    num = max(1, min(cfg.num_mini_batch, count))
                perm = torch.randperm(count, generator=self._rng).to(chunks[MASK].device)
                for idx in torch.tensor_split(perm, num):
                    mb = {k: v[idx] for k, v in chunks.items()}
                    self._valuenorm_pending = True  # once per minibatch, however often a hook evaluates the loss
                    _, losses, _ = self._update({mid: mb})
                    loss_per_module.update(losses)
        for mid, loss in loss_per_module.items():
            self.metrics.log_value(key=(mid, self.TOTAL_LOSS_KEY), value=loss, window=1)
        self.after_gradient_based_update(timesteps=timesteps)
        return self.metrics.reduce()

    # -- loss ---------------------------------------------------------------------------------
    def compute_loss_for_module(self, *, module_id, config, batch: dict, fwd_out: dict[str, Any]) -> torch.Tensor:
        module = self.module[module_id].unwrapped()
        logits = fwd_out[LOGITS]  # [C, L, n, A]
        logp_all = torch.log_softmax(logits, dim=-1)
        logp = torch.gather(logp_all, -1, batch[Columns.ACTIONS].long().unsqueeze(-1)).squeeze(-1)
        m_pi, m_v = batch[M_PI], batch[M_V]
        pol, clip_frac = policy_loss(logp, batch[ACTION_LOGP], batch[ADV], m_pi, config.clip_param)
        ent = masked_mean(entropy_of(logits), m_pi)
        ret = batch[RET]
        if config.use_valuenorm:
            if config.valuenorm_update == "minibatch" and getattr(self, "_valuenorm_pending", True):
                module.value_norm.update(ret, m_v)
                self._valuenorm_pending = False
            ret = module.value_norm.normalize(ret)
        vf = value_loss(fwd_out[VALUES], batch[V_OLD], ret, m_v,
                        clip=config.vf_clip_param if config.use_clipped_value_loss else None,
                        huber_delta=config.huber_delta if config.use_huber_loss else None)
        total = pol - config.entropy_coeff * ent + config.vf_loss_coeff * vf
        with torch.no_grad():
            approx_kl = masked_mean(batch[ACTION_LOGP] - logp, m_pi)
        for key, value in {"policy_loss": pol, "vf_loss": vf, "entropy": ent, "clip_fraction": clip_frac,
                           "approx_kl": approx_kl}.items():
            self.metrics.log_value((module_id, key), value.item(), window=1)
        return total

    def after_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        super().after_gradient_based_update(timesteps=timesteps)
        self.update_intrinsic_components()

    # -- checkpointing ------------------------------------------------------------------------
    def get_state(self, *args, **kwargs):
        state = super().get_state(*args, **kwargs)
        state["marlx_mappo"] = {
            "rng": self._rng.get_state(),
            "intrinsic": {mid: [c.get_state() for c in cs] for mid, cs in self.intrinsic.items()},
        }
        return state

    def set_state(self, state):
        extra = state.get("marlx_mappo")
        super().set_state({k: v for k, v in state.items() if k != "marlx_mappo"})
        if extra:
            self._rng.set_state(extra["rng"])
            for mid, parts in extra.get("intrinsic", {}).items():
                for component, part in zip(self.intrinsic.get(mid, []), parts):
                    component.set_state(part)
