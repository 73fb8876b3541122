"""WALL's learner: QMIX's TD loss on intended actions over attacked transitions, plus Wolfpack's attacker models.

One update (``learners/q_learner.py:78-391`` of ``sunwoolee0504/WALL``, spec §6), in the released order:

1. the planning transformer: one random ``L``-step window per episode (episodes shorter than ``L`` are padded),
   inputs state, GRU states and executed one-hot actions, targets next state and next observations, masked MSE,
   one Adam step;
2. the TD loss (QMIX's, computed by :class:`~marlx.algorithms.qmix.learner.QMIXLearner`), stepped last by RLlib;
3. ΔQ^WP labels on the same windows (:mod:`marlx.attacks.labels`, no gradient) with the freshly stepped planner
   and the pre-update agent and mixer, then one Adam step of the Q-difference transformer;
4. the RL step (RMSprop on agent + mixer only; the attacker models have their own optimisers), target updates.

The GRU states ``h_t`` are recomputed by the online unroll (current weights); with ``wall_faithful`` the ones the
runners stored (``hidden_states``, runner weights at collection time) are used, as released.
"""

from __future__ import annotations

from typing import Any

import torch

from marlx.algorithms.qmix.learner import QMIXLearner
from marlx.attacks.training import WolfpackModelTraining, pad_time  # noqa: F401 (pad_time: public here before)


class WALLLearner(WolfpackModelTraining, QMIXLearner):
    def build(self) -> None:
        super().build()
        cfg = self.config
        self.attacker_optimizers: dict[str, dict[str, torch.optim.Optimizer]] = {}
        for module_id, module in self.module.items():
            module = module.unwrapped()
            self.attacker_optimizers[module_id] = {
                "planning": torch.optim.Adam(module.attacker_parameters("planning"), lr=cfg.wall_planning_lr),
                "qdiff": torch.optim.Adam(module.attacker_parameters("qdiff"), lr=cfg.wall_qdiff_lr),
            }
        self._window_rng = torch.Generator().manual_seed(int(cfg.seed or 0))

    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        # the RL optimiser gets the agent and the mixer only (QMIXLearner would take every non-target parameter)
        module = self.module[module_id]
        params = [p for name, p in module.named_parameters()
                  if not name.startswith(("target_", "qdiff_transformer.", "planning_transformer."))]
        if config.optimizer == "rmsprop":
            opt = torch.optim.RMSprop(params, lr=config.lr, alpha=config.optim_alpha,
                                      **({} if config.optim_eps is None else {"eps": config.optim_eps}))
        else:
            opt = torch.optim.Adam(params, lr=config.lr, **({} if config.optim_eps is None else {"eps": config.optim_eps}))
        self.register_optimizer(module_id=module_id, optimizer=opt, params=params, lr_or_lr_schedule=config.lr)

    def compute_loss_for_module(self, *, module_id, config, batch: dict, fwd_out: dict[str, Any]) -> torch.Tensor:
        module = self.module[module_id].unwrapped()
        td_loss = super().compute_loss_for_module(module_id=module_id, config=config, batch=batch, fwd_out=fwd_out)
        if torch.is_grad_enabled():  # a real update (not a loss evaluation under no_grad)
            self.train_attacker(module_id, module, config, batch, fwd_out)
        return td_loss

    def train_attacker(self, module_id, module, config, batch: dict, fwd_out: dict) -> dict[str, float]:
        """One Adam step of the planning transformer, then the ΔQ labels, then one of the Q-difference one.

        Runs before RLlib's RL step, so the labels see the pre-update agent and mixer, as released.
        """
        log = self.attacker_update(self.attacker_optimizers[module_id], module, config, batch, fwd_out)
        for key, value in log.items():
            self.metrics.log_value((module_id, key), value, window=1)
        return log

    # -- checkpointing ------------------------------------------------------------------------
    def get_state(self, *args, **kwargs):
        state = super().get_state(*args, **kwargs)
        state["marlx_wall"] = {mid: {k: o.state_dict() for k, o in opts.items()}
                               for mid, opts in self.attacker_optimizers.items()}
        return state

    def set_state(self, state):
        extra = state.get("marlx_wall")
        super().set_state({k: v for k, v in state.items() if k != "marlx_wall"})
        if extra:
            for mid, opts in extra.items():
                for k, sd in opts.items():
                    self.attacker_optimizers[mid][k].load_state_dict(sd)
