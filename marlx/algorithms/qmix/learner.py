"""The QMIX/VDN TorchLearner: masked TD loss over whole padded episodes, double Q, target networks.

The update goes through RLlib's normal path (``Learner.update`` -> ``TorchLearner._uncompiled_update`` ->
``forward_train`` -> ``compute_loss_for_module`` -> gradients -> clip -> step), so marlx's optimiser hooks
(``marlx.optim.rllib_hooks``) wrap it like any other learner.

Batch layout (built by :class:`~marlx.runtime.replay.TeamEpisodeReplay`): team observation leaves
``[B, T+1, ...]``, ``actions [B, T, n]``, ``rewards``/``terminateds``/``mask`` ``[B, T]``.

Intrinsic rewards: the components configured under ``intrinsic`` (:mod:`marlx.intrinsic`) are built in the
learner; the sum of their per-step bonuses ``[B, T]`` (plus :meth:`QMIXLearner.intrinsic_reward`, which a
subclass may override) is added to the team reward before the TD target, and after the gradient step each
component's ``update`` trains its own models on the same batch.

Documented choices (review shared/reviews/qmix_fox_faithfulness.md Q4-Q6): the loss is the masked mean of
``td_error ** 2`` as in PyMARL and FoX (PyMARL2's ``nq_learner`` uses ``0.5 * td_error ** 2``: with RMSprop/Adam the
factor matters only through eps and the clip at 10); epsilon is evaluated at every env step from the lifetime step
count (PyMARL fixes it per episode from ``t_env`` at the episode's start; the difference is below one episode of
annealing); the hard target update compares the stored-episode count *after* this iteration's episodes were added
(PyMARL passes the count before the increment), so a copy can come up to one iteration earlier.
"""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.core.learner.utils import update_target_network

from marlx.runtime.columns import MASK
from marlx.algorithms.qmix.targets import _next_mask, compute_targets
from marlx.intrinsic.base import IntrinsicLearnerMixin
from marlx.modules.qmix_module import Q_VALUES, TARGET_Q_VALUES

#: Key of the lifetime episode count in the ``timesteps`` dict the algorithm passes to ``update``.
NUM_EPISODES_SAMPLED_LIFETIME = "num_episodes_sampled_lifetime"
_UNAVAILABLE = -1e7  # PyMARL's -9999999: finite, so masked max stays well defined on padded steps


class RunningMeanStd:
    """Running mean and variance of a scalar stream (EPyMARL ``components/standarize_stream.py``, after
    semitable/fast-marl): starts at mean 0, variance 1, count 1e-4; each batch is merged with the
    parallel-variance formula using the batch's unbiased variance (``torch.var``)."""

    def __init__(self, epsilon: float = 1e-4):
        self.mean, self.var, self.count = 0.0, 1.0, float(epsilon)

    def update(self, values: torch.Tensor) -> None:
        values = values.detach().reshape(-1).double()
        n = values.numel()
        if n == 0:
            return
        batch_mean = float(values.mean())
        batch_var = float(values.var()) if n > 1 else 0.0  # torch.var of one value is nan
        delta = batch_mean - self.mean
        total = self.count + n
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean, self.var, self.count = self.mean + delta * n / total, m2 / total, total

    def normalise(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.mean) / max(self.var, 1e-12) ** 0.5

    def get_state(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def set_state(self, state: dict) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), float(state["count"])


class QMIXLearner(IntrinsicLearnerMixin, TorchLearner):
    """TD learning of a value-decomposition module (``QMIXRLModule``)."""

    def build(self) -> None:
        super().build()
        self._last_target_update_episode = 0
        self.build_intrinsic_components()
        #: running reward statistics per module (``standardise_rewards``)
        self.reward_stats = {module_id: RunningMeanStd() for module_id in self.module.keys()}

    # -- optimiser ----------------------------------------------------------------------------
    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        module = self.module[module_id]
        params = [p for name, p in module.named_parameters() if not name.startswith("target_")]
        eps = {} if config.optim_eps is None else {"eps": config.optim_eps}  # None: torch's default (1e-8)
        if config.optimizer == "rmsprop":
            opt = torch.optim.RMSprop(params, lr=config.lr, alpha=config.optim_alpha, **eps)
        elif config.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=config.lr, **eps)
        else:
            raise ValueError(f"optimizer must be 'rmsprop' or 'adam', got {config.optimizer!r}")
        self.register_optimizer(module_id=module_id, optimizer=opt, params=params, lr_or_lr_schedule=config.lr)

    # -- seam ---------------------------------------------------------------------------------
    def intrinsic_reward(self, module_id, batch: dict, fwd_out: dict) -> torch.Tensor | None:
        """Per-step bonus ``[B, T]`` added to the team reward before the TD target (``None``: no bonus).

        The sum of the configured components' bonuses; a subclass may add its own. Padded steps are masked later.
        """
        components = self.intrinsic.get(module_id, [])
        if not components:
            return None
        module = self.module[module_id].unwrapped()
        self._intrinsic_inputs[module_id] = (batch, {k: (v.detach() if isinstance(v, torch.Tensor) else v)
                                                     for k, v in fwd_out.items()})
        total = None
        for component in components:
            b = component.bonus(batch, fwd_out, module)
            if b is None:
                continue
            b = b.detach()
            mask = batch[MASK]
            self.metrics.log_value((module_id, f"intrinsic/{component.name}_mean"),
                                   ((b * mask).sum() / mask.sum().clamp(min=1)).item(), window=1)
            total = b if total is None else total + b
        return total

    # -- loss ---------------------------------------------------------------------------------
    def compute_loss_for_module(self, *, module_id, config, batch: dict, fwd_out: dict[str, Any]) -> torch.Tensor:
        module = self.module[module_id].unwrapped()
        q, target_q = fwd_out[Q_VALUES], fwd_out[TARGET_Q_VALUES]  # [B, T+1, n, A]
        actions = batch[Columns.ACTIONS].long()  # [B, T, n]
        mask = batch[MASK]
        rewards = batch[Columns.REWARDS]
        terminated = batch[Columns.TERMINATEDS]
        avail = batch["avail"]  # [B, T+1, n, A]
        states = batch["state"]

        if config.time_limit_terminal:  # EPyMARL's gymma envs: the last step of every episode is terminal
            terminated = torch.maximum(terminated, mask * (1.0 - _next_mask(mask)))
        if config.standardise_rewards:
            stats = self.reward_stats[module_id]
            stats.update(rewards[mask > 0])
            rewards = stats.normalise(rewards)
            self.metrics.log_value((module_id, "reward_mean_running"), float(stats.mean), window=1)
            self.metrics.log_value((module_id, "reward_std_running"), float(stats.var) ** 0.5, window=1)

        bonus = self.intrinsic_reward(module_id, batch, fwd_out)
        if bonus is not None:
            rewards = rewards + bonus
            self.metrics.log_value((module_id, "intrinsic_reward_mean"),
                                   ((bonus * mask).sum() / mask.sum().clamp(min=1)).item(), window=1)

        chosen = torch.gather(q[:, :-1], dim=3, index=actions.unsqueeze(3)).squeeze(3)  # [B, T, n]
        next_avail = avail[:, 1:]
        masked_target = target_q[:, 1:].masked_fill(next_avail <= 0, _UNAVAILABLE)
        if config.double_q:
            online_next = q[:, 1:].detach().masked_fill(next_avail <= 0, _UNAVAILABLE)
            best = online_next.argmax(dim=3, keepdim=True)
            target_next = torch.gather(masked_target, 3, best).squeeze(3)
        else:
            target_next = masked_target.max(dim=3).values
        # padded next steps (all actions unavailable) hold -1e7: zero them, they never reach the loss
        target_next = torch.where(target_next <= _UNAVAILABLE / 2, torch.zeros_like(target_next), target_next)

        q_tot = module.mix(chosen, states[:, :-1])
        with torch.no_grad():
            next_values = module.target_mix(target_next, states[:, 1:])
            targets = compute_targets(rewards, terminated, mask, next_values, config.gamma,
                                      config.td_lambda, config.n_step)
        td_error = (q_tot - targets) * mask
        self.__dict__.setdefault("last_td_error", {})[module_id] = td_error.detach()  # [B, T], prioritised replay
        n_valid = mask.sum().clamp(min=1)
        loss = (td_error**2).sum() / n_valid

        log = {
            "td_loss": loss.item(),
            "td_error_abs": (td_error.abs().sum() / n_valid).item(),
            "q_taken_mean": ((chosen * mask.unsqueeze(-1)).sum() / (n_valid * chosen.shape[-1])).item(),
            "q_tot_mean": ((q_tot * mask).sum() / n_valid).item(),
            "target_mean": ((targets * mask).sum() / n_valid).item(),
        }
        for key, value in log.items():
            self.metrics.log_value((module_id, key), value, window=1)
        return loss

    # -- target networks ----------------------------------------------------------------------
    def after_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        super().after_gradient_based_update(timesteps=timesteps)
        self.update_intrinsic_components()
        cfg = self.config
        episodes = int(timesteps.get(NUM_EPISODES_SAMPLED_LIFETIME, 0) or 0)
        for module_id, module in self.module.items():
            module = module.unwrapped()
            if cfg.target_update_tau < 1.0:  # soft (Polyak) update after every learner update
                tau = cfg.target_update_tau
            elif episodes - self._last_target_update_episode >= cfg.target_update_interval_episodes:
                tau = 1.0
                self._last_target_update_episode = episodes
            else:
                continue
            for main, target in module.get_target_network_pairs():
                update_target_network(main_net=main, target_net=target, tau=tau)
            self.metrics.log_value((module_id, "last_target_update_episode"),
                                   self._last_target_update_episode, window=1)

    # -- checkpointing ------------------------------------------------------------------------
    def get_state(self, *args, **kwargs):
        state = super().get_state(*args, **kwargs)
        state["marlx_qmix"] = {
            "last_target_update_episode": self._last_target_update_episode,
            "reward_stats": {mid: st.get_state() for mid, st in self.reward_stats.items()},
            "intrinsic": {mid: [c.get_state() for c in cs] for mid, cs in self.intrinsic.items()},
        }
        return state

    def set_state(self, state):
        extra = state.get("marlx_qmix")
        super().set_state({k: v for k, v in state.items() if k != "marlx_qmix"})
        if extra:
            self._last_target_update_episode = extra["last_target_update_episode"]
            for mid, part in extra.get("reward_stats", {}).items():
                if mid in self.reward_stats:
                    self.reward_stats[mid].set_state(part)
            for mid, parts in extra.get("intrinsic", {}).items():
                for component, part in zip(self.intrinsic.get(mid, []), parts):
                    component.set_state(part)
