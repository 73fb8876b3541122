"""The RLModule of MAPPO / IPPO on the marlx team view: a shared recurrent actor and a (centralised) critic.

Spec: ``shared/specs/mappo.md`` §4.2. Observation: the team Dict ``{obs [n, d], state [S], avail [n, A],
(positions), (alive [n]), (agent_state [n, S_a])}``; action: the joint ``MultiDiscrete([A] * n)``.

* **Actor** (shared by all agents, one batched pass over the ``B x n`` rows): ``obs_i (+ onehot(i))`` ->
  LayerNorm -> [Linear 64, ReLU, LayerNorm] x (1 + ``layer_N``) -> GRU 64 -> LayerNorm -> Linear(A, orthogonal gain
  0.01); unavailable actions get logits -1e10. This is the official ``R_Actor`` (``onpolicy/algorithms/utils/
  mlp.py``, ``rnn.py``, ``act.py``; ``use_feature_normalization``, ``use_orthogonal``, ``gain 0.01``).
  Recurrent state ``{"h_pi": [n, H]}``.
* **Critic** (learner only): the same MLP trunk without the GRU (``use_recurrent_policy`` covers the critic
  in the official code; here the critic is an MLP, which needs no stored critic hidden states [marlx, spec §4.2])
  ending in Linear(1) with gain 1. Its input per agent is chosen by ``critic_input``:
  ``state`` (one V for the team), ``state_id`` (state + onehot(i), default), ``agent_state`` (the env's
  ``agent_state`` key + id, the official SMAC "AS" input), ``state_obs_id`` (state + obs_i + id, an FP-like
  input) or ``obs_id`` (obs_i + id: IPPO's decentralised critic). ``death_mask`` zeroes everything but the id of
  a dead agent's input (official ``use_mustalive``).
* **ValueNorm** (:class:`ValueNorm`): running mean/var buffers in the module, checkpointed with it and never sent
  to env runners (they only act).

Exploration samples each agent's action from its masked categorical and returns ``ACTIONS [B, n]``,
``action_logp [B, n]`` (per agent) and ``STATE_OUT``; inference takes the masked argmax per agent.
"""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis import InferenceOnlyAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from torch import nn

from marlx.runtime.columns import ACTION_LOGP, AVAIL, OBS, STATE

#: Recurrent state key of the actor's GRU ``[n, H]``.
H_PI = "h_pi"
#: Optional team-observation keys: which agents are alive ``[n]`` and MAPPO's agent-specific state ``[n, S_a]``.
ALIVE, AGENT_STATE = "alive", "agent_state"
#: Forward-train outputs: masked logits ``[.., n, A]`` and normalised critic values ``[.., n]``.
LOGITS, VALUES = "mappo_logits", "mappo_values"
CRITIC_INPUTS = ("state", "state_id", "agent_state", "state_obs_id", "obs_id")
_MASKED_LOGIT = -1e10

#: Defaults of the module's model_config keys (MAPPOConfig's attributes start from these).
MODEL_DEFAULTS: dict[str, Any] = {
    "hidden_size": 64,
    "layer_N": 1,
    "obs_agent_id": True,
    "critic_input": "state_id",
    "death_mask": True,
    "use_valuenorm": True,
    "valuenorm_beta": 0.99999,
    "gain": 0.01,
}


def alive_mask(obs: dict) -> torch.Tensor:
    """Which agents are alive ``[..., n]`` (float): the ``alive`` key when the env gives one, else an agent with
    more than one available action (SMAC/SMAX leave a dead agent only its no-op/stop action; an agent with a
    single available action has no decision to learn either) [marlx, spec §4.1]."""
    if ALIVE in obs:
        return obs[ALIVE].float()
    return (obs[AVAIL].float().sum(-1) > 1.5).float()


class ValueNorm(nn.Module):
    """Running mean/variance of value targets (official ``onpolicy/utils/valuenorm.py``): exponential moving
    averages with ``beta`` (0.99999), debiased, variance floored at 1e-2. ``normalize``/``denormalize`` are exact
    inverses for a fixed state."""

    def __init__(self, beta: float = 0.99999, epsilon: float = 1e-5, var_floor: float = 1e-2):
        super().__init__()
        self.beta, self.epsilon, self.var_floor = float(beta), float(epsilon), float(var_floor)
        self.register_buffer("running_mean", torch.zeros(()))
        self.register_buffer("running_mean_sq", torch.zeros(()))
        self.register_buffer("debiasing_term", torch.zeros(()))

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.debiasing_term.clamp(min=self.epsilon)
        mean = self.running_mean / d
        var = (self.running_mean_sq / d - mean**2).clamp(min=self.var_floor)
        return mean, var

    @torch.no_grad()
    def update(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """One EMA step with the mean of ``x`` (over ``mask`` > 0 entries when given)."""
        x = x.detach().float()
        if mask is None:
            mask = torch.ones_like(x)
        n = mask.sum()
        if n <= 0:
            return
        m = (x * mask).sum() / n
        m2 = (x**2 * mask).sum() / n
        w = self.beta
        self.running_mean.mul_(w).add_(m * (1 - w))
        self.running_mean_sq.mul_(w).add_(m2 * (1 - w))
        self.debiasing_term.mul_(w).add_(1 - w)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.mean_var()
        return (x - mean) / var.sqrt()

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.mean_var()
        return x * var.sqrt() + mean


def _init(layer: nn.Linear, gain: float) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, gain=gain)
    nn.init.zeros_(layer.bias)
    return layer


class MLPTrunk(nn.Module):
    """LayerNorm(in) -> [Linear, ReLU, LayerNorm] x (1 + layer_N) with orthogonal init (gain of ReLU)."""

    def __init__(self, in_dim: int, hidden: int, layer_n: int):
        super().__init__()
        gain = nn.init.calculate_gain("relu")
        layers: list[nn.Module] = [nn.LayerNorm(in_dim)]
        d = in_dim
        for _ in range(1 + layer_n):
            layers += [_init(nn.Linear(d, hidden), gain), nn.ReLU(), nn.LayerNorm(hidden)]
            d = hidden
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class RecurrentActor(nn.Module):
    """The shared actor: MLP trunk -> GRU -> LayerNorm -> action logits."""

    def __init__(self, in_dim: int, n_actions: int, hidden: int, layer_n: int, gain: float):
        super().__init__()
        self.trunk = MLPTrunk(in_dim, hidden, layer_n)
        self.gru = nn.GRUCell(hidden, hidden)
        for name, p in self.gru.named_parameters():
            if "weight" in name:
                nn.init.orthogonal_(p)
            else:
                nn.init.zeros_(p)
        self.norm = nn.LayerNorm(hidden)
        self.head = _init(nn.Linear(hidden, n_actions), gain)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``x [R, in]``, ``h [R, H]`` -> ``(logits [R, A], h' [R, H])``."""
        h = self.gru(self.trunk(x), h)
        return self.head(self.norm(h)), h


class Critic(nn.Module):
    def __init__(self, in_dim: int, hidden: int, layer_n: int):
        super().__init__()
        self.trunk = MLPTrunk(in_dim, hidden, layer_n)
        self.head = _init(nn.Linear(hidden, 1), 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x)).squeeze(-1)


def masked_logits(logits: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(avail <= 0, _MASKED_LOGIT)


class MAPPOTeamModule(TorchRLModule, InferenceOnlyAPI):
    """Shared recurrent actor + (centralised) critic + ValueNorm for MAPPO/IPPO on a team env."""

    def setup(self) -> None:
        cfg = {**MODEL_DEFAULTS, **(self.model_config or {})}
        self.cfg = cfg
        spaces = self.observation_space.spaces
        self.n_agents, self.obs_dim = spaces[OBS].shape
        self.state_dim = int(spaces[STATE].shape[0])
        self.n_actions = int(self.action_space.nvec[0])
        self.hidden_dim = int(cfg["hidden_size"])
        self.critic_input = cfg["critic_input"]
        if self.critic_input not in CRITIC_INPUTS:
            raise ValueError(f"critic_input must be one of {CRITIC_INPUTS}, got {self.critic_input!r}")
        if self.critic_input == "agent_state" and AGENT_STATE not in spaces:
            raise ValueError("critic_input 'agent_state' needs an env whose team observation has an 'agent_state' "
                             "key; this env has none: use critic_input 'state_id' or 'state_obs_id'")
        ids = self.n_agents if cfg["obs_agent_id"] else 0
        self.actor = RecurrentActor(self.obs_dim + ids, self.n_actions, self.hidden_dim, int(cfg["layer_N"]),
                                    float(cfg["gain"]))
        if not self.inference_only:
            self.critic = Critic(self.critic_input_dim(spaces), self.hidden_dim, int(cfg["layer_N"]))
            self.value_norm = ValueNorm(cfg["valuenorm_beta"])
        else:
            self.eval()

    # -- inputs -------------------------------------------------------------------------------
    def _ids(self, lead: tuple, ref: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(self.n_agents, dtype=ref.dtype, device=ref.device)
        return eye.expand(*lead, self.n_agents, self.n_agents)

    def actor_inputs(self, obs: dict) -> torch.Tensor:
        """``obs [..., n, d]`` (+ ids) -> ``[..., n, in]``."""
        x = obs[OBS].float()
        if self.cfg["obs_agent_id"]:
            x = torch.cat([x, self._ids(x.shape[:-2], x)], dim=-1)
        return x

    def critic_input_dim(self, spaces) -> int:
        n, d, s = self.n_agents, self.obs_dim, self.state_dim
        return {"state": s, "state_id": s + n, "state_obs_id": s + d + n, "obs_id": d + n,
                "agent_state": (int(spaces[AGENT_STATE].shape[-1]) + n) if AGENT_STATE in spaces else 0,
                }[self.critic_input]

    def critic_inputs(self, obs: dict) -> torch.Tensor:
        """The critic's input per agent ``[..., n, C]`` (``[..., 1, S]`` for ``state``), death-masked."""
        o = obs[OBS].float()
        lead = o.shape[:-2]
        if self.critic_input == "state":
            return obs[STATE].float().unsqueeze(-2)
        ids = self._ids(lead, o)
        state = obs[STATE].float().unsqueeze(-2).expand(*lead, self.n_agents, self.state_dim)
        if self.critic_input == "state_id":
            feats = state
        elif self.critic_input == "state_obs_id":
            feats = torch.cat([state, o], dim=-1)
        elif self.critic_input == "obs_id":
            feats = o
        else:
            feats = obs[AGENT_STATE].float()
        if self.cfg["death_mask"]:
            feats = feats * alive_mask(obs).unsqueeze(-1)
        return torch.cat([feats, ids], dim=-1)

    def values(self, obs: dict) -> torch.Tensor:
        """Normalised values ``[..., n]`` (one team value broadcast to every agent for ``state``)."""
        v = self.critic(self.critic_inputs(obs))
        return v.expand(*v.shape[:-1], self.n_agents) if self.critic_input == "state" else v

    # -- actor --------------------------------------------------------------------------------
    def actor_step(self, obs: dict, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step for all agents: ``obs`` leaves ``[B, ...]``, ``h [B, n, H]`` -> masked logits, new h."""
        x = self.actor_inputs(obs)
        b = x.shape[0]
        logits, h = self.actor(x.reshape(b * self.n_agents, -1), h.reshape(b * self.n_agents, -1))
        logits = masked_logits(logits.view(b, self.n_agents, -1), obs[AVAIL])
        return logits, h.view(b, self.n_agents, -1)

    def unroll(self, obs: dict, h0: torch.Tensor) -> torch.Tensor:
        """Masked logits of chunks: leaves ``[C, L, ...]``, ``h0 [C, n, H]`` -> ``[C, L, n, A]``."""
        steps = obs[OBS].shape[1]
        h, out = h0, []
        for t in range(steps):
            logits, h = self.actor_step({k: v[:, t] for k, v in obs.items()}, h)
            out.append(logits)
        return torch.stack(out, dim=1)

    # -- RLModule API -------------------------------------------------------------------------
    def get_initial_state(self) -> dict:
        return {H_PI: torch.zeros(self.n_agents, self.hidden_dim)}

    @torch.no_grad()
    def _act(self, batch: dict, explore: bool) -> dict:
        obs = batch[Columns.OBS]
        logits, h = self.actor_step(obs, batch[Columns.STATE_IN][H_PI])
        logp_all = torch.log_softmax(logits, dim=-1)
        if explore:
            actions = torch.distributions.Categorical(logits=logits).sample()
        else:
            actions = logits.argmax(dim=-1)
        logp = torch.gather(logp_all, -1, actions.unsqueeze(-1)).squeeze(-1)
        return {Columns.ACTIONS: actions, ACTION_LOGP: logp, Columns.STATE_OUT: {H_PI: h}}

    def _forward_inference(self, batch: dict, **kwargs) -> dict:
        return self._act(batch, explore=False)

    def _forward_exploration(self, batch: dict, **kwargs) -> dict:
        return self._act(batch, explore=True)

    def team_obs(self, batch: dict) -> dict:
        return {k: batch[k] for k in self.observation_space.spaces if k in batch}

    def _forward_train(self, batch: dict, **kwargs) -> dict:
        """Chunks ``[C, L, ...]`` with ``h_pi_in [C, n, H]``: masked logits and normalised values."""
        obs = self.team_obs(batch)
        return {LOGITS: self.unroll(obs, batch[H_PI + "_in"]), VALUES: self.values(obs)}

    def get_non_inference_attributes(self) -> list[str]:
        return ["critic", "value_norm"]


def entropy_of(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of categorical distributions with masked logits ``[..., A]`` (masked actions contribute 0)."""
    logp = torch.log_softmax(logits, dim=-1)
    p = logp.exp()
    return -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)


__all__ = ["MAPPOTeamModule", "ValueNorm", "alive_mask", "entropy_of", "H_PI", "LOGITS", "VALUES",
           "CRITIC_INPUTS", "MODEL_DEFAULTS"]
