"""Mixers: combine per-agent Q values of the chosen actions into the team's ``Q_tot``.

* :class:`VDNMixer`: ``Q_tot = sum_i Q_i``.
* :class:`QMixer`: PyMARL's monotonic hypernetwork mixer conditioned on the global state. Its weights are
  absolute values of hypernetwork outputs, so ``dQ_tot/dQ_i >= 0`` for every state.

Both take ``agent_qs [..., n_agents]`` and ``states [..., state_dim]`` with any leading axes and return
``[...]``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class VDNMixer(nn.Module):
    """Value decomposition network: the team value is the sum of the agents' values."""

    def forward(self, agent_qs: torch.Tensor, states: torch.Tensor | None = None) -> torch.Tensor:
        return agent_qs.sum(dim=-1)


def _hypernet(state_dim: int, out_dim: int, layers: int, embed: int) -> nn.Module:
    if layers == 1:
        return nn.Linear(state_dim, out_dim)
    if layers == 2:
        return nn.Sequential(nn.Linear(state_dim, embed), nn.ReLU(), nn.Linear(embed, out_dim))
    raise ValueError(f"hypernet_layers must be 1 or 2, got {layers}")


class QMixer(nn.Module):
    """QMIX's monotonic mixing network (Rashid et al. 2018), as in PyMARL.

    ``hidden = ELU(Q · |W1(s)| + b1(s))``, ``Q_tot = hidden · |W2(s)| + V(s)``.

    Args:
        n_agents: number of agents.
        state_dim: size of the global state.
        embed_dim: width of the mixing layer (PyMARL ``mixing_embed_dim`` = 32).
        hypernet_layers: 1 or 2 layers in the weight hypernetworks (PyMARL default 2).
        hypernet_embed: hidden width of 2-layer hypernetworks (PyMARL default 64).
    """

    def __init__(self, n_agents: int, state_dim: int, embed_dim: int = 32, hypernet_layers: int = 2,
                 hypernet_embed: int = 64):
        super().__init__()
        self.n_agents, self.state_dim, self.embed_dim = n_agents, state_dim, embed_dim
        self.hyper_w_1 = _hypernet(state_dim, embed_dim * n_agents, hypernet_layers, hypernet_embed)
        self.hyper_w_final = _hypernet(state_dim, embed_dim, hypernet_layers, hypernet_embed)
        self.hyper_b_1 = nn.Linear(state_dim, embed_dim)
        self.V = nn.Sequential(nn.Linear(state_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1))

    def forward(self, agent_qs: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        lead = agent_qs.shape[:-1]
        qs = agent_qs.reshape(-1, 1, self.n_agents)
        s = states.reshape(-1, self.state_dim)
        w1 = torch.abs(self.hyper_w_1(s)).view(-1, self.n_agents, self.embed_dim)
        b1 = self.hyper_b_1(s).view(-1, 1, self.embed_dim)
        hidden = F.elu(torch.bmm(qs, w1) + b1)
        w_final = torch.abs(self.hyper_w_final(s)).view(-1, self.embed_dim, 1)
        v = self.V(s).view(-1, 1, 1)
        return (torch.bmm(hidden, w_final) + v).view(lead)


MIXERS = ("qmix", "vdn")


def make_mixer(name: str, n_agents: int, state_dim: int, embed_dim: int = 32, hypernet_layers: int = 2,
               hypernet_embed: int = 64) -> nn.Module:
    """The mixer called ``name`` (``"qmix"`` or ``"vdn"``)."""
    if name == "qmix":
        return QMixer(n_agents, state_dim, embed_dim, hypernet_layers, hypernet_embed)
    if name == "vdn":
        return VDNMixer()
    from marlx.errors import UnknownNameError

    raise UnknownNameError("mixer", name, MIXERS)
