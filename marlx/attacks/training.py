"""Training Wolfpack's two attacker models from replay (spec §6-8), shared by WALL and the attacker-only fit.

:class:`WolfpackModelTraining` holds the attacker half of one WALL learner update (``learners/q_learner.py:80-354``
of ``sunwoolee0504/WALL``): cut one random ``L``-step window per episode (short episodes padded), one Adam step of
the planning transformer, ΔQ^WP labels from planned attacked roll-outs (no gradient), one Adam step of the
Q-difference transformer. :class:`~marlx.algorithms.wall.learner.WALLLearner` runs it before its RL step;
:mod:`marlx.attacks.fit` runs it alone against a frozen victim (the attacker-only mode the released code lacks).

``module`` needs ``n_agents``, ``n_actions``, ``wall_cfg["trans_input_len"]``, ``mix``, ``agent_q_values``,
``planning_transformer`` and ``qdiff_transformer``; ``config`` needs ``wall_faithful`` and ``attack_duration``;
``fwd_out`` holds the online Q values ``[B, T+1, n, A]`` and post-step GRU states ``[B, T+1, n, H]``
(``wall_hidden``); ``self._window_rng`` is a ``torch.Generator``.
"""

from __future__ import annotations

import torch
from ray.rllib.core.columns import Columns
from torch.nn import functional as F

from marlx.attacks.labels import attacked_values, left_padded_windows, normal_sums, pick_windows, planning_loss, qdiff_loss
from marlx.attacks.wolfpack import ATTACKER_ACTIONS, FOLLOWUP_AGENTS, HIDDEN_STATES, INITIAL_AGENT
from marlx.modules.qmix_module import Q_VALUES
from marlx.runtime.columns import EXECUTED_ACTIONS, MASK

#: fwd_out key of the online agent's post-step GRU states
WALL_HIDDEN = "wall_hidden"

_BIG = 9999999.0


def pad_time(x: torch.Tensor, length: int, value: float = 0.0) -> torch.Tensor:
    """Pad axis 1 of ``x`` to at least ``length`` entries."""
    if x.shape[1] >= length:
        return x
    return torch.cat([x, x.new_full((x.shape[0], length - x.shape[1], *x.shape[2:]), value)], 1)


class WolfpackModelTraining:
    """The attacker models' update (see the module docstring); a mixin of learners and of the attacker fit."""

    def attacker_update(self, optimizers: dict, module, config, batch: dict, fwd_out: dict) -> dict[str, float]:
        """Planning step, labels, Q-difference step; ``optimizers = {"planning": Adam, "qdiff": Adam}``."""
        w = self.attacker_windows(module, config, batch, fwd_out)
        p_loss = self.planning_step_loss(module, w)
        optimizers["planning"].zero_grad()
        p_loss.backward()
        optimizers["planning"].step()
        with torch.no_grad():
            labels = self.delta_q_labels(module, config, w)
        q_loss = self.qdiff_step_loss(module, w, labels)
        optimizers["qdiff"].zero_grad()
        q_loss.backward()
        optimizers["qdiff"].step()
        m = w["label_mask"]
        return {
            "wall_planning_loss": p_loss.item(),
            "wall_qdiff_loss": q_loss.item(),
            "wall_delta_q_mean": float((labels * m).sum() / m.sum().clamp(min=1)),
        }

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
        # the 2L-1 steps those histories cover, per episode: history j of position i is step i + j here
        for k, src in (("state_ext", "state"), ("hidden_ext", "hidden"), ("action_ext", "intended_onehot")):
            x = cols[src]
            padded = torch.cat([x.new_zeros(b, length - 1, *x.shape[2:]), x], 1)
            out[k] = pick_windows(padded, starts, 2 * length - 1)
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

        def plan(states, hidden, actions):  # read at the last position (computed there alone: forward_last)
            next_state, embed = planner.forward_last(states, hidden, actions)
            return next_state, planner.all_next_obs(embed)

        if planner.shares_window_positions():
            plan = self._shared_prefix_plan(planner, w)

        def agent_q(obs, last_onehot, hidden):
            q, _ = module.agent_q_values({"obs": obs}, last_onehot.argmax(-1), hidden)
            return q

        attacked = attacked_values(
            plan, agent_q, module.mix, flat(w["q"]), flat(w["intended"]), flat(w["attack_actions"]),
            flat(w["initial"]), flat(w["followup"]), flat(w["state_hist"]), flat(w["hidden_hist"]),
            flat(w["action_hist"]), flat(w["avail"]), duration=int(config.attack_duration),
        ).view(b, length)
        return (w["normal"] - attacked) * w["label_mask"]

    @staticmethod
    def _shared_prefix_plan(planner, w: dict):
        """``plan`` for :func:`~marlx.attacks.labels.attacked_values` that embeds and projects each episode's real
        window steps once instead of once per window position (``L`` times).

        At roll-out step ``k`` (the k-th call) the window of position ``i`` is, for ``j < L-1-k``, the real step
        ``(state, action)[i+j+k]`` with the GRU state ``[i+j]`` (``attacked_values`` rolls states and actions, not
        the GRU states), and then ``k+1`` positions of its own (the attacked step, the planned ones). The first
        part is the same for every window of an episode, shifted: its keys and values are computed on the
        episode's ``2L-2-k`` steps and gathered; :meth:`PlanningTransformer.forward_last_shared` does the rest, the
        operations of ``forward_last`` in its order.
        """
        b, length = w["mask"].shape
        ext_s, ext_h, ext_a = w["state_ext"], w["hidden_ext"], w["action_ext"]
        calls = [0]

        def plan(states, hidden, actions):
            k = calls[0]
            calls[0] += 1
            shared = length - 1 - k  # window positions taken from the episode's real steps
            u = 2 * length - 2 - k
            seq = planner.embed(ext_s[:, k:k + u], ext_h[:, :u], ext_a[:, k:k + u])  # [B, u, E]
            tail = planner.embed(states[:, shared:], hidden[:, shared:], actions[:, shared:])  # [N, k+1, E]
            kv = []
            for real, own in zip(planner.attention_kv(seq), planner.attention_kv(tail)):
                e = real.shape[-1] // 2
                out = real.new_empty(2, length, b * length, e)  # [2, L, N, E]: keys, values
                # window position j of row (b, i) is the episode's step i + j: sliding windows, as [2, j, b, i, E]
                real = real.view(b, u, 2, e).unfold(1, shared, 1).permute(2, 4, 0, 1, 3)
                out[:, :shared].view(2, shared, b, length, e).copy_(real)
                out[:, shared:] = own.view(b * length, k + 1, 2, e).permute(2, 1, 0, 3)
                kv.append(out)
            next_state, embed = planner.forward_last_shared(kv[0], kv[1], tail[:, -1])
            return next_state, planner.all_next_obs(embed)

        return plan

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
