"""FoX's RLModule: QMIX's recurrent agent with a shared head, per-agent local heads and a formation head.

``Q_i = W h_i + MLP_i(h_i) + W_f z_i`` (spec §2): ``W`` is the shared agent network's output layer, ``MLP_i``
a per-agent local head (CDS; an L1 penalty keeps it small, see the learner), ``W_f`` a linear formation head on
the latent of the formation encoder q(z | h_i). The encoder's parameters are trained only by the formation VAE
(their TD gradient is dropped). ``formation_latent="sample"`` (default, the spec's z_i ~ q(z | h_i)) samples z for
the Q head; ``"mean"`` (marlx option) reads the posterior mean, which makes action values deterministic.

Options (model_config, set from :class:`~marlx.algorithms.fox.fox.FoXConfig`):

* ``local_head_hidden``: 0 (default) = one Linear H -> A per agent, as the released ``rnn_agent.py`` (``fc``
  per agent); > 0 = H -> hidden -> A with ReLU (marlx's earlier choice, the spec's "MLP_i").
* ``formation_head_grad_to_gru``: True (default, released ``rnn_agent.py``: z = Encoder(h) is computed with grad,
  so the TD gradient through W_f z reaches the GRU; only the encoder's own TD gradients are discarded);
  False = the encoder's output is detached.
* ``target_encoder``: "copy" (default) = the target network keeps its own encoder copy, refreshed with the
  other target weights; "live" = the target unroll reads the online (VAE-trained) encoder, as the released
  learner does (``target_mac.agent.forward(..., VAEModel.Encoder)``).
* The formation head has no bias (the released ``fc3`` has one; it is redundant with the shared head's bias).
"""

from __future__ import annotations

import torch
from ray.rllib.core.columns import Columns
from torch import nn
from torch.nn import functional as F

from marlx.intrinsic.fox import FOX_HIDDEN
from marlx.intrinsic.fox_vae import FormationEncoder
from marlx.modules.agent import RNNAgent
from marlx.modules.qmix_module import Q_VALUES, TARGET_Q_VALUES, QMIXRLModule

FOX_LOCAL_Q = "fox_local_q"

FOX_MODEL_DEFAULTS = {"vae_latent_dim": 64, "vae_hidden_dim": 128, "local_head_hidden": 0, "formation_latent": "sample",
                      "formation_head_grad_to_gru": True, "target_encoder": "copy"}


class FormationAwareAgent(nn.Module):
    """The shared RNN agent plus local heads, formation encoder and formation head.

    Called like :class:`~marlx.modules.agent.RNNAgent` with rows ordered ``(batch, agent)``.
    """

    def __init__(self, base: RNNAgent, n_agents: int, n_actions: int, latent_dim: int, vae_hidden: int,
                 local_hidden: int, sample_latent: bool = True, grad_to_gru: bool = True):
        super().__init__()
        self.sample_latent = sample_latent
        self.grad_to_gru = grad_to_gru
        self.local_hidden = int(local_hidden)
        self.base = base
        self.n_agents = n_agents
        hidden = base.hidden_dim
        self.hidden_dim = hidden
        self.encoder = FormationEncoder(hidden, vae_hidden, latent_dim)
        self.formation_head = nn.Linear(latent_dim, n_actions, bias=False)
        # per-agent local heads (H -> A, or H -> local_hidden -> A), evaluated for all agents in one einsum
        if self.local_hidden > 0:
            self.local_w1 = nn.Parameter(torch.empty(n_agents, hidden, self.local_hidden))
            self.local_b1 = nn.Parameter(torch.zeros(n_agents, self.local_hidden))
            self.local_w2 = nn.Parameter(torch.empty(n_agents, self.local_hidden, n_actions))
        else:
            self.local_w2 = nn.Parameter(torch.empty(n_agents, hidden, n_actions))
        self.local_b2 = nn.Parameter(torch.zeros(n_agents, n_actions))
        for w in (getattr(self, "local_w1", None), self.local_w2):
            if w is not None:  # nn.Linear's default init range 1/sqrt(fan_in)
                nn.init.uniform_(w, -(w.shape[1] ** -0.5), w.shape[1] ** -0.5)

    def latent(self, h: torch.Tensor, encoder: FormationEncoder | None = None) -> torch.Tensor:
        """z for the formation head: the encoder's parameters get no TD gradient; h does when ``grad_to_gru``."""
        encoder = self.encoder if encoder is None else encoder
        if self.grad_to_gru:
            params = {k: v.detach() for k, v in encoder.named_parameters()}
            mu, logvar = torch.func.functional_call(encoder, params, (h,))
        else:
            with torch.no_grad():
                mu, logvar = encoder(h)
        return FormationEncoder.sample(mu, logvar) if self.sample_latent else mu

    def forward_parts(self, inputs: torch.Tensor, hidden: torch.Tensor, encoder: FormationEncoder | None = None):
        """-> ``(q [N, A], hidden [N, H], local_q [N, A])``; ``encoder`` replaces the own one (live target)."""
        shared_q, h = self.base(inputs, hidden)
        local = h.view(-1, self.n_agents, self.hidden_dim)
        if self.local_hidden > 0:
            local = F.relu(torch.einsum("bnh,nhk->bnk", local, self.local_w1) + self.local_b1)
        local = (torch.einsum("bnk,nka->bna", local, self.local_w2) + self.local_b2).reshape(h.shape[0], -1)
        return shared_q + local + self.formation_head(self.latent(h, encoder)), h, local

    def forward(self, inputs: torch.Tensor, hidden: torch.Tensor):
        q, h, _ = self.forward_parts(inputs, hidden)
        return q, h


class FoXRLModule(QMIXRLModule):
    """QMIX's module with FoX's formation-aware agent; ``forward_train`` also returns hidden states and local Q."""

    def setup_extra(self) -> None:
        cfg = {**FOX_MODEL_DEFAULTS, **self.cfg}
        self.agent = FormationAwareAgent(
            self.agent, self.n_agents, self.n_actions,
            int(cfg["vae_latent_dim"]), int(cfg["vae_hidden_dim"]), int(cfg["local_head_hidden"]),
            sample_latent=cfg["formation_latent"] == "sample", grad_to_gru=bool(cfg["formation_head_grad_to_gru"]),
        )
        self.live_target_encoder = cfg["target_encoder"] == "live"

    @property
    def formation_encoder(self) -> FormationEncoder:
        return self.agent.encoder

    def agent_forward(self, net, x, h):
        live = self.live_target_encoder and net is not self.agent
        q, h, local = net.forward_parts(x, h, encoder=self.agent.encoder if live else None)
        return q, h, {FOX_LOCAL_Q: local}

    def _forward_train(self, batch: dict, **kwargs) -> dict:
        obs = self.team_obs(batch)
        actions = batch[Columns.ACTIONS]
        q, extras = self.unroll(obs, actions, with_extras=True)
        out = {Q_VALUES: q, FOX_HIDDEN: extras["hidden"], FOX_LOCAL_Q: extras[FOX_LOCAL_Q]}
        with torch.no_grad():
            out[TARGET_Q_VALUES] = self.unroll(obs, actions, target=True)
        return out
