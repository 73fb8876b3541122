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
from ray.rllib.core.columns import Columns
from torch.nn import functional as F

from marlx.algorithms.qmix.learner import QMIXLearner
from marlx.runtime.columns import EXECUTED_ACTIONS, MASK
from marlx.algorithms.wall.module import WALL_HIDDEN
from marlx.attacks.labels import attacked_values, left_padded_windows, normal_sums, pick_windows, planning_loss, qdiff_loss
from marlx.attacks.wolfpack import ATTACKER_ACTIONS, FOLLOWUP_AGENTS, HIDDEN_STATES, INITIAL_AGENT
from marlx.modules.qmix_module import Q_VALUES

_BIG = 9999999.0


def pad_time(x: torch.Tensor, length: int, value: float = 0.0) -> torch.Tensor:
    """Pad axis 1 of ``x`` to at least ``length`` entries."""
    if x.shape[1] >= length:
        return x
    return torch.cat([x, x.new_full((x.shape[0], length - x.shape[1], *x.shape[2:]), value)], 1)


class WALLLearner(QMIXLearner):
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
            opt = torch.optim.RMSprop(params, lr=config.lr, alpha=config.optim_alpha, eps=config.optim_eps)
        else:
            opt = torch.optim.Adam(params, lr=config.lr, eps=config.optim_eps)
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
        opts = self.attacker_optimizers[module_id]
        w = self.attacker_windows(module, config, batch, fwd_out)
        p_loss = self.planning_step_loss(module, w)
        opts["planning"].zero_grad()
        p_loss.backward()
        opts["planning"].step()
        with torch.no_grad():
            labels = self.delta_q_labels(module, config, w)
        q_loss = self.qdiff_step_loss(module, w, labels)
        opts["qdiff"].zero_grad()
        q_loss.backward()
        opts["qdiff"].step()
        m = w["label_mask"]
        log = {
            "wall_planning_loss": p_loss.item(),
            "wall_qdiff_loss": q_loss.item(),
            "wall_delta_q_mean": float((labels * m).sum() / m.sum().clamp(min=1)),
        }
        for key, value in log.items():
            self.metrics.log_value((module_id, key), value, window=1)
        return log

    # -- the pieces (public for tests) ---------------------------------------------------------
    def attacker_windows(self, module, config, batch: dict, fwd_out: dict) -> dict[str, torch.Tensor]:
        """Everything the attacker models read, padded to ``L`` steps and cut to one random window per episode."""
        length = int(module.wall_cfg["trans_input_len"])
        mask = batch[MASK].float()
        b, t_len = mask.shape
        n, n_actions = module.n_agents, module.n_actions
        q = fwd_out[Q_VALUES][:, :t_len].detach()
        if config.wall_faithful and HIDDEN_STATES in batch:
            hidden = batch[HIDDEN_STATES][:, :t_len].float()
        else:
            hidden = fwd_out[WALL_HIDDEN][:, :t_len].detach()
        intended = batch[Columns.ACTIONS].long()
        executed = batch.get(EXECUTED_ACTIONS, batch[Columns.ACTIONS]).long()
        avail = batch["avail"][:, :t_len]
        if ATTACKER_ACTIONS in batch:
            attack_actions = batch[ATTACKER_ACTIONS].long()
        else:
            attack_actions = q.masked_fill(avail <= 0, _BIG).argmin(-1)
        initial = batch[INITIAL_AGENT].long() if INITIAL_AGENT in batch else torch.full_like(mask, n).long()
        followup = batch[FOLLOWUP_AGENTS].long() if FOLLOWUP_AGENTS in batch else torch.full((b, t_len, 0), n)
        followup = followup.view(b, t_len, -1)
        state = batch["state"]
        obs = batch["obs"]
        with torch.no_grad():
            chosen = q.gather(-1, intended.unsqueeze(-1)).squeeze(-1)
            q_tot = module.mix(chosen, state[:, :t_len])
            normal = normal_sums(q_tot, int(config.attack_duration))  # cut at the batch end, padding unmasked

        cols = {
            "state": state[:, :t_len], "next_state": state[:, 1:t_len + 1], "next_obs": obs[:, 1:t_len + 1],
            "hidden": hidden, "executed": F.one_hot(executed, n_actions).float(),
            "intended_onehot": F.one_hot(intended, n_actions).float(), "q": q, "intended": intended,
            "attack_actions": attack_actions, "initial": initial, "followup": followup, "avail": avail,
            "normal": normal, "mask": mask, "time": torch.arange(t_len).expand(b, t_len).clone(),
        }
        fill = {"initial": n, "followup": n, "avail": 1.0}
        cols = {k: pad_time(v, length, fill.get(k, 0.0)) for k, v in cols.items()}
        t_pad = cols["mask"].shape[1]
        starts = torch.randint(0, t_pad - length + 1, (b,), generator=self._window_rng)
        # histories ending at every window position: [B, L(position), L(history), ...]
        hist = {k: pick_windows(left_padded_windows(cols[src], length), starts, length)
                for k, src in (("state_hist", "state"), ("hidden_hist", "hidden"), ("action_hist", "intended_onehot"),
                               ("time_hist", "time"))}
        out = {k: pick_windows(v, starts, length) for k, v in cols.items()}
        out.update(hist)
        # positions without an initial agent (the random schedule before its first start) carry no label
        out["label_mask"] = out["mask"] * (out["initial"] < n).float()
        return out

    def planning_step_loss(self, module, w: dict) -> torch.Tensor:
        planner = module.planning_transformer
        next_state, embed = planner(w["state"], w["hidden"], w["executed"])
        return planning_loss(next_state, planner.all_next_obs(embed), w["next_state"], w["next_obs"], w["mask"])

    def delta_q_labels(self, module, config, w: dict) -> torch.Tensor:
        """``ΔQ^WP [B, L]`` of the window positions (masked)."""
        b, length = w["mask"].shape
        planner = module.planning_transformer

        def flat(x):
            return x.reshape(b * length, *x.shape[2:])

        def plan(states, hidden, actions):
            next_state, embed = planner(states, hidden, actions)
            return next_state[:, -1], planner.all_next_obs(embed[:, -1])

        def agent_q(obs, last_onehot, hidden):
            q, _ = module.agent_q_values({"obs": obs}, last_onehot.argmax(-1), hidden)
            return q

        attacked = attacked_values(
            plan, agent_q, module.mix, flat(w["q"]), flat(w["intended"]), flat(w["attack_actions"]),
            flat(w["initial"]), flat(w["followup"]), flat(w["state_hist"]), flat(w["hidden_hist"]),
            flat(w["action_hist"]), flat(w["avail"]), duration=int(config.attack_duration),
        ).view(b, length)
        return (w["normal"] - attacked) * w["label_mask"]

    def qdiff_step_loss(self, module, w: dict, labels: torch.Tensor) -> torch.Tensor:
        b, length = w["mask"].shape
        n = module.n_agents
        onehot = F.one_hot(w["initial"].clamp(max=n - 1), n).float()  # [B, L, n]
        onehot = onehot.unsqueeze(2).expand(b, length, length, n)
        pred = module.qdiff_transformer(
            w["time_hist"].reshape(b * length, length), w["state_hist"].reshape(b * length, length, -1),
            onehot.reshape(b * length, length, n),
        )[:, -1].view(b, length, -1)
        return qdiff_loss(pred, labels, w["label_mask"])

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
