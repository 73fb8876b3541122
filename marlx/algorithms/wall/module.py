"""WALL's RLModule: QMIX's agent and mixer plus Wolfpack's two attacker models.

* ``qdiff_transformer`` (:class:`~marlx.attacks.transformers.QDifferenceTransformer`) is on the env runners too:
  the Wolfpack attack reads it there to time its initial attacks; weights sync with the agent's.
* ``planning_transformer`` (:class:`~marlx.attacks.transformers.PlanningTransformer`) lives only on the learner.
* the mixer stays on the runners (the follow-up selection differentiates through it).

``forward_train`` also returns the online agent's post-step GRU states ``h_t`` (``wall_hidden``, ``[B, T+1, n, H]``)
that the planning model and the ΔQ labels read.
"""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.core.columns import Columns

from marlx.attacks.transformers import (ATTACK_PERIOD, DROPOUT, EMBED_DIM, INPUT_LEN, MAX_TIMESTEP, NUM_HEADS,
                                        NUM_LAYERS, PlanningTransformer, QDifferenceTransformer)
from marlx.modules.qmix_module import Q_VALUES, TARGET_Q_VALUES, QMIXRLModule

from marlx.attacks.training import WALL_HIDDEN  # noqa: E402,F401 (the fwd_out key)

#: model_config keys of the attacker models with WALL's defaults (``config/algs/wall_qmix.yaml:42-46``)
WALL_MODEL_DEFAULTS: dict[str, Any] = {
    "trans_embed_dim": EMBED_DIM,
    "num_trans_head": NUM_HEADS,
    "num_trans_layer": NUM_LAYERS,
    "trans_input_len": INPUT_LEN,
    "attack_period": ATTACK_PERIOD,
    "env_max_timestep": MAX_TIMESTEP,
    "qdiff_dropout": DROPOUT,
}


class WALLRLModule(QMIXRLModule):
    """QMIX module + Q-difference transformer (runners and learner) + planning transformer (learner)."""

    def setup_extra(self) -> None:
        c = {**WALL_MODEL_DEFAULTS, **(self.model_config or {})}
        self.wall_cfg = c
        self.qdiff_transformer = QDifferenceTransformer(
            self.state_dim, self.n_agents, embed_dim=c["trans_embed_dim"], heads=c["num_trans_head"],
            layers=c["num_trans_layer"], attack_period=c["attack_period"], max_timestep=c["env_max_timestep"],
            dropout=c["qdiff_dropout"],
        )
        if not self.inference_only:
            self.planning_transformer = PlanningTransformer(
                self.state_dim, self.obs_dim, self.n_agents, self.n_actions, self.hidden_dim,
                embed_dim=c["trans_embed_dim"], heads=c["num_trans_head"], layers=c["num_trans_layer"],
            )

    def attacker_parameters(self, which: str) -> list[torch.nn.Parameter]:
        """Parameters of ``"qdiff"`` or ``"planning"`` (each trained by its own Adam, not by the RL optimiser)."""
        return list((self.qdiff_transformer if which == "qdiff" else self.planning_transformer).parameters())

    def unroll_with_hidden(self, obs: dict, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Online Q values and post-step GRU states of whole episodes: ``([B, T+1, n, A], [B, T+1, n, H])``."""
        steps, b = obs["obs"].shape[1], obs["obs"].shape[0]
        h = obs["obs"].new_zeros(b, self.n_agents, self.hidden_dim)
        qs, hs = [], []
        for t in range(steps):
            q, h = self.agent_q_values({k: v[:, t] for k, v in obs.items()}, actions[:, t - 1] if t > 0 else None, h)
            qs.append(q)
            hs.append(h)
        return torch.stack(qs, 1), torch.stack(hs, 1)

    def _forward_train(self, batch: dict, **kwargs) -> dict:
        obs = self.team_obs(batch)
        q, h = self.unroll_with_hidden(obs, batch[Columns.ACTIONS])
        out = {Q_VALUES: q, WALL_HIDDEN: h}
        with torch.no_grad():
            out[TARGET_Q_VALUES] = self.unroll(obs, batch[Columns.ACTIONS], target=True)
        return out

    def get_non_inference_attributes(self) -> list[str]:
        return [*super().get_non_inference_attributes(), "planning_transformer"]
