"""The two attacker models of Wolfpack (Lee et al., ICML 2025, §4; ``sunwoolee0504/WALL`` ``modules/step/models.py``).

* :class:`QDifferenceTransformer` reads the last ``input_len`` (20) global states with their episode time steps
  and an agent one-hot, and predicts, at every position, ``attack_period`` (20) values: value ``k`` is the
  predicted drop of the team value ``ΔQ^WP`` if that agent starts a Wolfpack attack ``k`` steps from now.
  One GPT block (causal, post-LN), as in the released code. It runs on the env runners (attack timing).
* :class:`PlanningTransformer` predicts the next global state and every agent's next observation from a window
  of states, the agents' GRU states and the executed joint actions. The released code uses
  ``nn.TransformerDecoder`` with ``tgt = memory`` and no mask (non-causal), PyTorch's layer defaults
  (feed-forward 2048, dropout 0.1, post-LN, ReLU). It runs only on the learner (ΔQ labels).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

#: transformer width (WALL ``trans_embed_dim``, ``config/algs/wall_qmix.yaml:42-46``)
EMBED_DIM = 64
#: attention heads (``num_trans_head``) and blocks (``num_trans_layer``), same yaml
NUM_HEADS = 1
NUM_LAYERS = 1
#: history length fed to both transformers (``trans_input_len``)
INPUT_LEN = 20
#: ΔQ horizon L (``attack_period``): outputs per position of the Q-difference transformer
ATTACK_PERIOD = 20
#: size of the time-step embedding table (``env_max_timestep``); later steps use the last row
MAX_TIMESTEP = 300
#: dropout of the GPT block (``modules/step/models.py:87``)
DROPOUT = 0.1


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position ``i`` sees positions ``<= i``; dropout on its output."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"transformer width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.attn_dropout, self.out_dropout = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        d = c // self.heads

        def split(y):
            return y.view(b, t, self.heads, d).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(d)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        weights = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        mixed = self.attn_dropout(weights @ v).transpose(1, 2).reshape(b, t, c)
        return self.out_dropout(self.out(mixed))


class GPTBlock(nn.Module):
    """Post-LN block: ``x = LN(x + attn(x)); x = LN(x + MLP(x))`` with a 4x GELU MLP."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attention = CausalSelfAttention(dim, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attention(x))
        return self.norm2(x + self.mlp(x))


class QDifferenceTransformer(nn.Module):
    """``(timesteps [B, L], states [B, L, S], agent one-hot [B, L, n]) -> ΔQ predictions [B, L, attack_period]``."""

    def __init__(self, state_dim: int, n_agents: int, embed_dim: int = EMBED_DIM, heads: int = NUM_HEADS,
                 layers: int = NUM_LAYERS, attack_period: int = ATTACK_PERIOD, max_timestep: int = MAX_TIMESTEP,
                 dropout: float = DROPOUT):
        super().__init__()
        self.n_agents, self.max_timestep = n_agents, max_timestep
        self.embed_state = nn.Linear(state_dim, embed_dim)
        self.embed_time = nn.Embedding(max_timestep, embed_dim)
        self.embed_norm = nn.LayerNorm(embed_dim)
        self.blocks = nn.Sequential(*[GPTBlock(embed_dim, heads, dropout) for _ in range(layers)])
        self.head = nn.Linear(embed_dim + n_agents, attack_period)

    def forward(self, timesteps: torch.Tensor, states: torch.Tensor, agent_onehot: torch.Tensor) -> torch.Tensor:
        time = timesteps.long().clamp(0, self.max_timestep - 1)
        h = self.blocks(self.embed_norm(self.embed_state(states) + self.embed_time(time)))
        return self.head(torch.cat([h, agent_onehot.to(h.dtype)], dim=-1))

    def all_agents(self, timesteps: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """Predictions at the LAST position for every agent: ``[B, n, attack_period]``.

        The agent one-hot enters only the head, so the embedding and the blocks run once per row (not once per
        agent) and the head once per agent at the last position: ``forward`` of every ``(row, agent)`` read at the
        last position, computed ``n·L`` times cheaper in the head and ``n`` times in the blocks.
        """
        b = states.shape[0]
        n = self.n_agents
        time = timesteps.long().clamp(0, self.max_timestep - 1)
        h = self.blocks(self.embed_norm(self.embed_state(states) + self.embed_time(time)))[:, -1]  # [B, E]
        eye = torch.eye(n, dtype=h.dtype, device=h.device)
        return self.head(torch.cat([h.unsqueeze(1).expand(b, n, h.shape[-1]), eye.expand(b, n, n)], dim=-1))


class PlanningTransformer(nn.Module):
    """``(states [B, L, S], hidden [B, L, n, H], onehot actions [B, L, n, A]) -> (next state, next-obs embedding)``.

    ``next_obs(embedding, agent_onehot)`` decodes one agent's next observation from the embedding.
    """

    def __init__(self, state_dim: int, obs_dim: int, n_agents: int, n_actions: int, hidden_dim: int,
                 embed_dim: int = EMBED_DIM, heads: int = NUM_HEADS, layers: int = NUM_LAYERS):
        super().__init__()
        self.n_agents = n_agents
        self.state_embed = nn.Linear(state_dim, embed_dim)
        self.history_embed = nn.Linear(hidden_dim * n_agents, embed_dim)
        self.action_embed = nn.Linear(n_actions * n_agents, embed_dim)
        width = 3 * embed_dim
        # PyTorch's layer defaults (ff 2048, dropout 0.1, ReLU, post-LN), as the released code uses them
        layer = nn.TransformerDecoderLayer(d_model=width, nhead=heads, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, num_layers=layers)
        self.fc_next_state = nn.Linear(width, state_dim)
        self.fc_next_obs_embed = nn.Linear(width, embed_dim)
        self.fc_obs = nn.Linear(embed_dim + n_agents, obs_dim)

    def embed(self, states: torch.Tensor, hidden: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        b, length = states.shape[:2]
        return torch.cat([
            F.relu(self.state_embed(states)),
            F.relu(self.history_embed(hidden.reshape(b, length, -1))),
            F.relu(self.action_embed(actions.reshape(b, length, -1))),
        ], dim=-1)

    def forward(self, states: torch.Tensor, hidden: torch.Tensor, actions: torch.Tensor):
        seq = self.embed(states, hidden, actions)
        out = self.decoder(seq, memory=seq)  # no mask: every position sees the whole window (as released)
        return self.fc_next_state(out), self.fc_next_obs_embed(out)

    def forward_last(self, states: torch.Tensor, hidden: torch.Tensor, actions: torch.Tensor):
        """``forward`` read at the LAST position: ``(next state [B, S], next-obs embedding [B, E])``.

        The same function, computed cheaper: the last decoder layer is position-wise except for its attention
        queries, so it is evaluated at the last position alone (keys and values still span the window, and the
        memory is the embedded window, as in ``nn.TransformerDecoder``). The ΔQ labels read only that position;
        this saves ~95% of their feed-forward work (width 2048) at ``L = 20``.
        """
        seq = self.embed(states, hidden, actions)
        layers = self.decoder.layers
        x = seq
        for layer in layers[:-1]:
            x = layer(x, seq)
        last = layers[-1]
        if last.norm_first:  # not the released layout: no shortcut
            y = last(x, seq)[:, -1:]
        else:
            q = x[:, -1:]
            y = last.norm1(q + last.dropout1(last.self_attn(q, x, x, need_weights=False)[0]))
            y = last.norm2(y + last._mha_block(y, seq, None, None))
            y = last.norm3(y + last._ff_block(y))
        if self.decoder.norm is not None:
            y = self.decoder.norm(y)
        y = y[:, 0]
        return self.fc_next_state(y), self.fc_next_obs_embed(y)

    def shares_window_positions(self) -> bool:
        """Whether :meth:`forward_last_shared` applies: one post-LN decoder layer (the released layout) and no
        final norm, so that every window position enters the last position's output only through its keys and
        values, which are position-wise."""
        layers = self.decoder.layers
        return len(layers) == 1 and not layers[0].norm_first and self.decoder.norm is None

    def attention_kv(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The packed key/value projections ``[..., 2E]`` of embedded positions ``seq [..., E]`` for the layer's
        self-attention and its memory attention (PyTorch's in-projection: ``linear(x, W_kv, b_kv)``)."""
        layer = self.decoder.layers[0]
        out = []
        for mha in (layer.self_attn, layer.multihead_attn):
            e = mha.embed_dim
            out.append(F.linear(seq, mha.in_proj_weight[e:], mha.in_proj_bias[e:]))
        return out[0], out[1]

    @staticmethod
    def kv_layout(kv: torch.Tensor) -> torch.Tensor:
        """``[N, L, 2E]`` packed projections -> the contiguous ``[2, L, N, E]`` keys/values PyTorch attends with."""
        n, length, two_e = kv.shape
        return kv.view(n, length, 2, two_e // 2).permute(2, 1, 0, 3).contiguous()

    def forward_last_shared(self, kv_self: torch.Tensor, kv_cross: torch.Tensor, last: torch.Tensor):
        """:meth:`forward_last` from the window's keys and values (``[2, L, N, E]``, :meth:`kv_layout` of
        :meth:`attention_kv` of its embedded positions, which callers may compute once for positions that many
        windows share) and the embedded last position ``last [N, E]``: the same operations, in the same order
        (dropout draws included), as ``nn.TransformerDecoderLayer`` runs for the last position when
        ``tgt = memory``."""
        layer = self.decoder.layers[0]
        q = last.unsqueeze(1)  # [N, 1, E]
        y = layer.norm1(q + layer.dropout1(self._attend(layer.self_attn, q, kv_self)))
        y = layer.norm2(y + layer.dropout2(self._attend(layer.multihead_attn, y, kv_cross)))
        y = layer.norm3(y + layer._ff_block(y))[:, 0]
        return self.fc_next_state(y), self.fc_next_obs_embed(y)

    @staticmethod
    def _attend(mha: nn.MultiheadAttention, query: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """``mha(query, x, x, need_weights=False)[0]`` (batch first) given ``kv [2, L, N, E]``, the projected keys and
        values of ``x`` laid out as PyTorch lays them out: the steps of ``F.multi_head_attention_forward`` after its
        in-projection, on tensors of the same layout."""
        _, length, n, e = kv.shape
        heads = mha.num_heads
        d = e // heads
        q = F.linear(query.transpose(1, 0), mha.in_proj_weight[:e], mha.in_proj_bias[:e])  # [1, N, E]
        q = q.view(1, n * heads, d).transpose(0, 1).view(n, heads, 1, d)
        k = kv[0].view(length, n * heads, d).transpose(0, 1).view(n, heads, length, d)
        v = kv[1].view(length, n * heads, d).transpose(0, 1).view(n, heads, length, d)
        out = F.scaled_dot_product_attention(q, k, v, None, mha.dropout if mha.training else 0.0, False)
        out = out.permute(2, 0, 1, 3).reshape(n, e)
        out = F.linear(out, mha.out_proj.weight, mha.out_proj.bias).view(1, n, e)
        return out.transpose(1, 0)

    def next_obs(self, embedding: torch.Tensor, agent_onehot: torch.Tensor) -> torch.Tensor:
        return self.fc_obs(F.relu(torch.cat([embedding, agent_onehot.to(embedding.dtype)], dim=-1)))

    def all_next_obs(self, embedding: torch.Tensor) -> torch.Tensor:
        """Every agent's next observation: ``[..., E] -> [..., n, obs_dim]``."""
        n = self.n_agents
        eye = torch.eye(n, dtype=embedding.dtype, device=embedding.device)
        emb = embedding.unsqueeze(-2).expand(*embedding.shape[:-1], n, embedding.shape[-1])
        return self.next_obs(emb, eye.expand(*embedding.shape[:-1], n, n))
