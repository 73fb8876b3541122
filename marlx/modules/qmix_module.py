"""The RLModule of value-decomposition learners (QMIX, VDN) on the marlx team view.

Observation: the team env's Dict ``{obs [n, d], state [S], avail [n, A], (positions)}``; action: the joint
``MultiDiscrete([A] * n)``. The module returns ``Columns.ACTIONS`` directly (no action distribution).

Where things run:

* env runners (``inference_only``): only the shared agent network (:class:`~marlx.modules.agent.RNNAgent`,
  or :class:`~marlx.modules.agent.MLPAgent` with ``use_rnn=False``). One forward
  pass covers all envs x agents of a runner. The recurrent state is ``{"h": [n, H], "prev_actions": [n]}``
  (the runner adds the batch axis): the previous joint action travels in the state so that the last-action
  input needs nothing from the episode. The runner's batch has no time axis: ``OBS`` leaves ``[B, ...]``,
  ``STATE_IN`` ``[B, ...]``; the module returns ``ACTIONS [B, n]``, ``STATE_OUT`` and ``q_values [B, n, A]``
  (which the runner hands to an attack and keeps in the episode when asked).
  ``forward_exploration(batch, t=lifetime env steps)`` is epsilon-greedy over available actions with
  PyMARL's linear schedule; ``forward_inference`` is greedy (RLlib calls it when ``explore=False``).
* learner: the agent, the mixer and target copies of both. ``forward_train`` unrolls the agent network
  over whole padded episodes ``[B, T+1, ...]`` for the online and the target network; the learner mixes.

Extension points (override in a subclass):

* :meth:`build_agent_inputs` — what an agent sees (e.g. FoX appends formation features);
* :meth:`setup_extra` — extra heads built next to the agent (e.g. FoX's formation head);
* :meth:`agent_q_values` / :meth:`unroll` — per-agent Q values for one step / a whole sequence
  (WALL reads them at action time), :meth:`mix` / :meth:`target_mix` — the (target) mixer;
* set ``model_config["mixer_on_runners"] = True`` to keep the mixer on env runners (WALL's attack needs it).

Env runners select actions through :class:`QMIXSampler` (:meth:`QMIXRLModule.fast_sampler`) when the module's
acting path is this class's own: the same numbers as ``_forward_exploration`` in a few torch ops (see there).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.utils import make_target_network
from ray.rllib.core.rl_module.apis import InferenceOnlyAPI, TargetNetworkAPI
from ray.rllib.core.rl_module.torch import TorchRLModule

from marlx.modules.agent import MLPAgent, RNNAgent, agent_input_dim, agent_inputs, make_agent
from marlx.modules.mixers import make_mixer
from marlx.runtime.columns import HIDDEN, PREV_ACTIONS, Q_VALUES, TARGET_Q_VALUES

#: PyMARL defaults of the module's model_config keys: the one source of truth (QMIXConfig's attributes start
#: from these values and fill model_config from its attributes).
MODEL_DEFAULTS: dict[str, Any] = {
    "rnn_hidden_dim": 64,
    "use_rnn": True,
    "obs_last_action": True,
    "obs_agent_id": True,
    "mixer": "qmix",
    "mixing_embed_dim": 32,
    "hypernet_layers": 2,
    "hypernet_embed": 64,
    "epsilon_start": 1.0,
    "epsilon_finish": 0.05,
    "epsilon_anneal_time": 50_000,
    "mixer_on_runners": False,
}


def linear_epsilon(t: int | float, start: float, finish: float, anneal_time: int) -> float:
    """PyMARL's linear epsilon schedule: ``start`` -> ``finish`` over ``anneal_time`` env steps."""
    if anneal_time <= 0:
        return finish
    frac = min(max(float(t), 0.0) / anneal_time, 1.0)
    return start + frac * (finish - start)


def masked_greedy(q: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """Argmax over available actions (``avail`` > 0) of ``q [..., A]``."""
    return q.masked_fill(avail <= 0, float("-inf")).argmax(dim=-1)


def random_available(avail: torch.Tensor) -> torch.Tensor:
    """One uniformly random available action per row of ``avail [..., A]``."""
    return (torch.rand_like(avail) * (avail > 0)).argmax(dim=-1)


class QMIXRLModule(TorchRLModule, InferenceOnlyAPI, TargetNetworkAPI):
    """Shared recurrent agent + mixer (+ targets) for QMIX/VDN on a team env."""

    def setup(self) -> None:
        cfg = {**MODEL_DEFAULTS, **(self.model_config or {})}
        self.cfg = cfg
        spaces = self.observation_space.spaces
        self.n_agents, self.obs_dim = spaces["obs"].shape
        self.state_dim = int(spaces["state"].shape[0])
        self.n_actions = int(self.action_space.nvec[0])
        self.hidden_dim = int(cfg["rnn_hidden_dim"])
        self.agent = make_agent(self.agent_input_dim(), self.n_actions, self.hidden_dim, bool(cfg["use_rnn"]))
        self.setup_extra()
        self._has_mixer = not self.inference_only or bool(cfg["mixer_on_runners"])
        if self._has_mixer:
            self.mixer = make_mixer(
                cfg["mixer"], self.n_agents, self.state_dim, cfg["mixing_embed_dim"],
                cfg["hypernet_layers"], cfg["hypernet_embed"],
            )
        if not self.inference_only:
            self.make_target_networks()
        else:
            # env runners only act: eval mode once here saves RLlib's eval()/train() toggling every step
            self.eval()

    # -- extension points ---------------------------------------------------------------------
    def setup_extra(self) -> None:
        """Build extra heads (called after the agent network, before the mixer)."""

    def agent_input_dim(self) -> int:
        return agent_input_dim(self.obs_dim, self.n_agents, self.n_actions,
                               self.cfg["obs_last_action"], self.cfg["obs_agent_id"])

    def build_agent_inputs(self, obs: dict, prev_actions: torch.Tensor | None) -> torch.Tensor:
        """``obs``: the team observation leaves of ONE step (``obs [B, n, d]`` etc.) -> ``[B, n, in]``."""
        return agent_inputs(obs["obs"], prev_actions, self.n_actions,
                            self.cfg["obs_last_action"], self.cfg["obs_agent_id"])

    def agent_forward(self, net, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """One step of ``net`` (the agent or its target) on rows ``(batch, agent)``: ``(q, h, extras)``.

        ``extras`` are per-row tensors a subclass's agent produces besides Q values (FoX: local-head Q values).
        """
        q, h = net(x, h)
        return q, h, {}

    def agent_q_values(self, obs: dict, prev_actions, hidden: torch.Tensor, target: bool = False):
        """One step of the (target) agent network for all agents: ``-> (q [B, n, A], hidden [B, n, H])``."""
        q, h, _ = self._agent_step(obs, prev_actions, hidden, target)
        return q, h

    def _agent_step(self, obs: dict, prev_actions, hidden: torch.Tensor, target: bool = False):
        net = self.target_agent if target else self.agent
        x = self.build_agent_inputs(obs, prev_actions)
        b = x.shape[0]
        q, h, extras = self.agent_forward(net, x.reshape(b * self.n_agents, -1), hidden.reshape(b * self.n_agents, -1))
        extras = {k: v.view(b, self.n_agents, *v.shape[1:]) for k, v in extras.items()}
        return q.view(b, self.n_agents, -1), h.view(b, self.n_agents, -1), extras

    def unroll(self, obs: dict, actions: torch.Tensor, target: bool = False, with_extras: bool = False):
        """Q values of every step of whole episodes from a zero hidden state (the one unroll every learner uses).

        Args:
            obs: team observation leaves ``[B, T+1, ...]``.
            actions: the joint actions taken ``[B, T, n]`` (previous-action inputs).
            target: use the target agent network.
            with_extras: also return ``{"hidden": [B, T+1, n, H], <agent extras>: [B, T+1, n, ...]}``
                (the hidden state after each step, read by FoX's awareness bonus, WALL and FIM).

        Returns:
            ``q [B, T+1, n, A]`` (and the extras dict with ``with_extras``).
        """
        steps = obs["obs"].shape[1]
        b = obs["obs"].shape[0]
        h = obs["obs"].new_zeros(b, self.n_agents, self.hidden_dim)
        qs, hs, extras = [], [], {}
        for t in range(steps):
            step_obs = {k: v[:, t] for k, v in obs.items()}
            prev = actions[:, t - 1] if t > 0 else None
            q, h, ex = self._agent_step(step_obs, prev, h, target=target)
            qs.append(q)
            if with_extras:
                hs.append(h)
                for k, v in ex.items():
                    extras.setdefault(k, []).append(v)
        q = torch.stack(qs, dim=1)
        if not with_extras:
            return q
        return q, {"hidden": torch.stack(hs, dim=1), **{k: torch.stack(v, dim=1) for k, v in extras.items()}}

    def mix(self, chosen_qs: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """``Q_tot`` of the online mixer: ``[..., n]``, ``[..., S]`` -> ``[...]``."""
        return self.mixer(chosen_qs, states)

    def target_mix(self, chosen_qs: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        return self.target_mixer(chosen_qs, states)

    # -- RLModule API -------------------------------------------------------------------------
    def get_initial_state(self) -> dict:
        return {
            HIDDEN: torch.zeros(self.n_agents, self.hidden_dim),
            # -1: no previous action (the first step's last-action input is all zeros, as in PyMARL)
            PREV_ACTIONS: torch.full((self.n_agents,), -1.0),
        }

    def _step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """One sampling step: ``(q [B, n, A], avail [B, n, A], state_out)`` (no time axis)."""
        obs = batch[Columns.OBS]
        state = batch[Columns.STATE_IN]
        q, h = self.agent_q_values(obs, state[PREV_ACTIONS], state[HIDDEN])
        return q, obs["avail"], {HIDDEN: h}

    @torch.no_grad()
    def _act(self, batch: dict, epsilon: float) -> dict:
        q, avail, state_out = self._step(batch)
        actions = masked_greedy(q, avail)
        if epsilon > 0:
            explore = torch.rand(actions.shape, device=q.device) < epsilon
            actions = torch.where(explore, random_available(avail), actions)
        state_out[PREV_ACTIONS] = actions.to(torch.float32)
        return {Columns.ACTIONS: actions, Columns.STATE_OUT: state_out, Q_VALUES: q}

    def _forward_inference(self, batch: dict, **kwargs) -> dict:
        return self._act(batch, 0.0)

    def _forward_exploration(self, batch: dict, t: int = 0, **kwargs) -> dict:
        return self._act(batch, self.epsilon(t))

    def fast_sampler(self) -> "QMIXSampler | None":
        """The env runner's fast path of :meth:`_forward_exploration` / :meth:`_forward_inference`, or None.

        Only for a module whose acting path is :class:`QMIXRLModule`'s own (a subclass that changes the agent's
        inputs or its step, as FoX does, samples through its RLModule forward) with a plain PyMARL/EPyMARL agent
        network on the CPU.
        """
        acting = ("build_agent_inputs", "agent_forward", "_agent_step", "agent_q_values", "_step", "_act",
                  "_forward_exploration", "_forward_inference", "epsilon", "get_initial_state")
        if any(getattr(type(self), name) is not getattr(QMIXRLModule, name) for name in acting):
            return None
        if type(self.agent) not in (RNNAgent, MLPAgent) or next(self.agent.parameters()).device.type != "cpu":
            return None
        return QMIXSampler(self)

    def epsilon(self, t: int | float) -> float:
        c = self.cfg
        return linear_epsilon(t, c["epsilon_start"], c["epsilon_finish"], c["epsilon_anneal_time"])

    def _forward_train(self, batch: dict, **kwargs) -> dict:
        """Online and target Q values of whole padded episodes (the learner's batch layout)."""
        obs = self.team_obs(batch)
        out = {Q_VALUES: self.unroll(obs, batch[Columns.ACTIONS])}
        with torch.no_grad():
            out[TARGET_Q_VALUES] = self.unroll(obs, batch[Columns.ACTIONS], target=True)
        return out

    def team_obs(self, batch: dict) -> dict:
        """The team observation leaves of a learner batch (keys of the observation space)."""
        return {k: batch[k] for k in self.observation_space.spaces if k in batch}

    # -- target networks ----------------------------------------------------------------------
    def make_target_networks(self) -> None:
        self.target_agent = make_target_network(self.agent)
        self.target_mixer = make_target_network(self.mixer)

    def get_target_network_pairs(self):
        return [(self.agent, self.target_agent), (self.mixer, self.target_mixer)]

    def forward_target(self, batch: dict) -> dict:
        return {TARGET_Q_VALUES: self.unroll(self.team_obs(batch), batch[Columns.ACTIONS], target=True)}

    def get_non_inference_attributes(self) -> list[str]:
        attrs = ["target_agent", "target_mixer"]
        return attrs if self.cfg.get("mixer_on_runners") else ["mixer", *attrs]


class QMIXSampler:
    """Epsilon-greedy action selection of a :class:`QMIXRLModule` for env runners, on numpy team arrays.

    It computes exactly what ``_forward_exploration(batch, t)`` / ``_forward_inference(batch)`` compute (the same
    torch kernels on the same input values and layout, the same draws from torch's global RNG in the same order:
    ``rand([B, n])`` for "explore?", then ``rand([B, n, A])`` for the random available action), with a fraction of
    the per-step cost at small batches, where each torch op's ~5-20 us dispatch dominates:

    * the agent input ``[obs | one-hot(previous action) | one-hot(agent id)]`` is written into a preallocated
      buffer (the id block once), instead of ``torch.cat`` of new tensors;
    * the agent's layers run as functional ops on its parameters under ``torch.inference_mode`` (no ``nn.Module``
      calls, no autograd bookkeeping);
    * masked argmax and the epsilon choice run in numpy on the Q values.

    It holds the agent's parameter tensors: build a new one when the module's parameters are replaced (the runner
    does after every weight sync; ``load_state_dict`` copies in place, so the old one would still see them).
    ``__call__`` returns ``None`` for inputs it does not cover (non-float32 leaves, no recurrent state); the runner
    then takes the module's forward.
    """

    #: The team observation leaves it reads.
    obs_keys = ("obs", "avail")

    def __init__(self, module: QMIXRLModule):
        self.module = module
        cfg = module.cfg
        self.n, self.d, self.n_actions = module.n_agents, module.obs_dim, module.n_actions
        self.last_action, self.agent_id = bool(cfg["obs_last_action"]), bool(cfg["obs_agent_id"])
        self.in_dim = module.agent_input_dim()
        agent = module.agent
        self.recurrent = isinstance(agent, RNNAgent)
        # parameters without autograd history (same storage: in-place weight updates are seen)
        self.fc1 = (agent.fc1.weight.detach(), agent.fc1.bias.detach())
        self.fc2 = (agent.fc2.weight.detach(), agent.fc2.bias.detach())
        if self.recurrent:
            r = agent.rnn
            self.gru = tuple(p.detach() for p in (r.weight_ih, r.weight_hh, r.bias_ih, r.bias_hh))
        else:
            self.fc_hidden = (agent.fc_hidden.weight.detach(), agent.fc_hidden.bias.detach())
        # row 0 all zeros: a previous action of -1 ("none", the first step) maps to it, as in agent_inputs
        self._one_hot = np.concatenate([np.zeros((1, self.n_actions), np.float32),
                                        np.eye(self.n_actions, dtype=np.float32)])
        self._rows = 0
        self._x = None
        self._views: dict[int, tuple[torch.Tensor, np.ndarray]] = {}  # batch rows -> views of self._x

    def _inputs(self, b: int) -> tuple[torch.Tensor, np.ndarray]:
        """The input buffer for ``b`` batch rows: a torch tensor ``[b * n, in]`` and its numpy view ``[b, n, in]``."""
        views = self._views.get(b)
        if views is None:
            if b > self._rows:
                # torch-allocated (its alignment, as torch.cat's output has), the agent-id block written once
                self._x = torch.zeros(b * self.n, self.in_dim)
                xn = self._x.numpy().reshape(b, self.n, self.in_dim)
                if self.agent_id:
                    xn[:, :, self.in_dim - self.n:] = np.eye(self.n, dtype=np.float32)
                self._rows, self._views = b, {}
            views = self._views[b] = (self._x[: b * self.n], self._x.numpy().reshape(-1, self.n, self.in_dim)[:b])
        return views

    def __call__(self, obs: dict, state: dict | None, explore: bool, t: int):
        """``obs {obs [B, n, d], avail [B, n, A]}``, ``state {h [B, n, H], prev_actions [B, n]}`` (numpy).

        Returns ``(actions [B, n] int64, {q_values: [B, n, A]}, {h: [B, n, H], prev_actions: [B, n]})`` or None.
        """
        o, avail = obs["obs"], obs["avail"]
        if state is None or o.dtype != np.float32 or avail.dtype != np.float32 or state[HIDDEN].dtype != np.float32:
            return None
        b, n, d = o.shape
        x, xn = self._inputs(b)
        xn[:, :, :d] = o
        if self.last_action:
            # (prev + 1) truncated to an integer, below 0 clipped to 0: agent_inputs' (prev.long() + 1).clamp(min=0)
            xn[:, :, d:d + self.n_actions] = self._one_hot.take(
                state[PREV_ACTIONS].astype(np.int64) + 1, axis=0, mode="clip")
        epsilon = self.module.epsilon(t) if explore else 0.0
        linear = torch.nn.functional.linear
        with torch.inference_mode():
            y = torch.relu_(linear(x, *self.fc1))
            if self.recurrent:
                h = torch.gru_cell(y, torch.from_numpy(state[HIDDEN]).reshape(b * n, -1), *self.gru)
            else:
                h = torch.relu_(linear(y, *self.fc_hidden))
            q = linear(h, *self.fc2).numpy().reshape(b, n, self.n_actions)
            if epsilon > 0:
                # one call for both draws: torch's CPU uniform fills element by element from one stream, so this
                # is rand([B, n]) followed by rand([B, n, A]) (the test of the fast path checks it bit for bit)
                draws = torch.rand(b * n * (1 + self.n_actions)).numpy()
                explore_draw = draws[: b * n].reshape(b, n)
                random_draw = draws[b * n:].reshape(b, n, self.n_actions)
        available = avail > 0
        actions = np.where(available, q, -np.inf).argmax(-1)
        if epsilon > 0:
            # torch compares a float32 tensor with a Python float in float32
            actions = np.where(explore_draw < np.float32(epsilon), (random_draw * available).argmax(-1), actions)
        return actions, {Q_VALUES: q}, {HIDDEN: h.numpy().reshape(b, n, -1), PREV_ACTIONS: actions.astype(np.float32)}
