"""The agent networks shared by all agents: PyMARL's recurrent ``RNNAgent`` and EPyMARL's feed-forward variant.

* :class:`RNNAgent`: ``fc(input -> hidden) + ReLU -> GRUCell(hidden) -> fc(hidden -> n_actions)``; the hidden
  state is carried through the episode (PyMARL ``rnn_agent.py``).
* :class:`MLPAgent`: ``fc(input -> hidden) + ReLU -> fc(hidden -> hidden) + ReLU -> fc(hidden -> n_actions)``,
  EPyMARL's ``rnn`` agent with ``use_rnn: False`` (its default for QMIX/VDN, ``src/modules/agents/rnn_agent.py``).
  It is called like the recurrent one; the "hidden state" it returns is its second layer's output and the one it
  is given is ignored, so each step's Q values depend on that step's input only.

The input of agent ``i`` at step ``t`` is its own observation, optionally the one-hot of its previous action and
the one-hot of its id (:func:`agent_inputs` builds it).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class RNNAgent(nn.Module):
    """Per-agent Q network with a GRU cell; agents share weights and are told apart by their id input."""

    def __init__(self, input_dim: int, n_actions: int, hidden_dim: int = 64):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.rnn = nn.GRUCell(hidden_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, n_actions)

    def forward(self, inputs: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``inputs [N, input_dim]``, ``hidden [N, H]`` -> ``(q [N, n_actions], hidden [N, H])``."""
        x = F.relu(self.fc1(inputs))
        h = self.rnn(x, hidden)
        return self.fc2(h), h


class MLPAgent(nn.Module):
    """Feed-forward per-agent Q network (EPyMARL's ``rnn`` agent with ``use_rnn: False``: 64-64 ReLU layers)."""

    def __init__(self, input_dim: int, n_actions: int, hidden_dim: int = 64):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.fc_hidden = nn.Linear(hidden_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, n_actions)

    def forward(self, inputs: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``inputs [N, input_dim]``, ``hidden`` (ignored) -> ``(q [N, n_actions], h [N, H])``."""
        h = F.relu(self.fc_hidden(F.relu(self.fc1(inputs))))
        return self.fc2(h), h


def make_agent(input_dim: int, n_actions: int, hidden_dim: int = 64, use_rnn: bool = True) -> nn.Module:
    """The recurrent agent (``use_rnn``, PyMARL) or the feed-forward one (EPyMARL's QMIX/VDN default)."""
    return (RNNAgent if use_rnn else MLPAgent)(input_dim, n_actions, hidden_dim)


def agent_input_dim(obs_dim: int, n_agents: int, n_actions: int, last_action: bool, agent_id: bool) -> int:
    return obs_dim + (n_actions if last_action else 0) + (n_agents if agent_id else 0)


def agent_inputs(
    obs: torch.Tensor,
    prev_actions: torch.Tensor | None,
    n_actions: int,
    last_action: bool,
    agent_id: bool,
) -> torch.Tensor:
    """Build the agent network's input for one step.

    Args:
        obs: ``[B, n_agents, obs_dim]``.
        prev_actions: ``[B, n_agents]`` integer-valued previous actions; ``None`` or a negative value
            means "no previous action" (first step) and gives a zero one-hot.
        n_actions: size of each agent's action set.
        last_action: append the one-hot of the previous action (zeros at the first step).
        agent_id: append the one-hot of the agent's index.

    Returns:
        ``[B, n_agents, input_dim]``.
    """
    b, n, _ = obs.shape
    parts = [obs]
    if last_action:
        if prev_actions is None:
            parts.append(obs.new_zeros(b, n, n_actions))
        else:
            # row 0 of the table is all zeros: -1 ("no previous action") maps to it
            table = _one_hot_table(n_actions, obs.dtype, obs.device)
            parts.append(table[(prev_actions.long() + 1).clamp(min=0)])
    if agent_id:
        parts.append(_one_hot_table(n, obs.dtype, obs.device)[1:].expand(b, n, n))
    return torch.cat(parts, dim=-1)


_TABLES: dict = {}


def _one_hot_table(n: int, dtype, device) -> torch.Tensor:
    """``[n+1, n]``: a zero row followed by the identity (cached; one-hot by indexing is cheaper)."""
    key = (n, dtype, device)
    if key not in _TABLES:
        _TABLES[key] = torch.cat([torch.zeros(1, n, dtype=dtype, device=device),
                                  torch.eye(n, dtype=dtype, device=device)])
    return _TABLES[key]
