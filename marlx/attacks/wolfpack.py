"""The Wolfpack adversarial attack (Lee, Hwang, Jo, Han, ICML 2025; ``sunwoolee0504/WALL``).

One attack = an *initial* step, where one agent executes its attack action ``argmin_{a ∈ avail} Q_i(τ_i, a)``,
followed by ``attack_duration`` (3) *follow-up* steps where a group of ``m`` (2) other agents execute theirs.
The flag runs ``3 -> 2 -> 1 -> 0 -> 3``: 3 means "ready for an initial attack". Every attacked time step
(initial or follow-up, however many agents) costs 1 of the per-episode ``budget``; once it is spent the intended
actions are executed, while the bookkeeping (planner, groups, flag) goes on, as released.

* initial time: the Q-difference transformer (``planner``, see :mod:`marlx.attacks.planner`), or ``random``
  (probability ``random_start_prob`` per ready step; the released version crashes, this one keeps a "no initial
  agent yet" state);
* initial agent: uniform at random (``init_agent_random: True``, the default) or the planner's argmax agent;
* follow-up group: KL top-m after a one-step Adam update of a copy of the agent network through the mixer
  (:mod:`marlx.attacks.followup`), or the nearest observations (``followup_l2``). A group is computed at EVERY
  step, for that step's initial agent, and emitted per step (the learner's ΔQ labels use them); the attack uses the
  group computed at the initial step.

Needs from the runner's module: ``agent``, ``build_agent_inputs``, ``mixer`` (``mixer_on_runners: True``) and,
for the planner, ``qdiff_transformer`` (a WALL module, or one set with :meth:`WolfpackAttack.set_qdiff_transformer`).
The follow-up copy uses the runner's synced weights (the released code uses the learner's current ones: at most
one iteration apart here).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from marlx.attacks.base import Attack, AttackContext, register_attack
from marlx.attacks.followup import clamp_group_size, kl_followup, l2_scores, top_m
from marlx.runtime.columns import ATTACKED
from marlx.attacks.options import check_budget, check_prob, merge_options, require
from marlx.attacks.planner import draw_start, history_window
from marlx.attacks.transformers import ATTACK_PERIOD, INPUT_LEN
from marlx.errors import MarlxError

# per-step arrays the attack emits (stored in ep.extras)
ATTACKER_ACTIONS = "attacker_actions"
INITIAL_AGENT = "initial_agent"
FOLLOWUP_AGENTS = "followup_agents"
ATTACK_COUNT = "attack_count"
ATTACK_FLAG = "attack_flag"
HIDDEN_STATES = "hidden_states"

DEFAULTS: dict[str, Any] = {
    #: attacked time steps per episode; WALL QMIX test budget ``num_attack_test`` 8 (``wall_qmix.yaml:37-38``;
    #: training uses ``num_attack_train`` 12, set by the WALL config)
    "budget": 8,
    #: follow-up steps after each initial step, t_WP (``attack_duration``, ``wall_qmix.yaml:33``)
    "attack_duration": 3,
    #: softmax temperature T of the start draw (``temperature``, ``wall_qmix.yaml:34``)
    "temperature": 0.5,
    #: ΔQ horizon L (``attack_period``, ``wall_qmix.yaml:35``); also the planner's history length
    "attack_period": ATTACK_PERIOD,
    #: planner history length (``trans_input_len``, ``wall_qmix.yaml:45``)
    "input_len": INPUT_LEN,
    #: follow-up group size m (``num_followup_agents``, ``wall_qmix.yaml:39``); clamped to n - 1
    "num_followup_agents": 2,
    #: initial agent uniformly at random (True) or the planner's argmax agent (``init_agent_random``, yaml:29)
    "init_agent_random": True,
    #: follow-ups by nearest observation instead of KL (``followup_l2``, yaml:30)
    "followup_l2": False,
    #: "planner" (Q-difference transformer) or "random" (``init_attack_step_method``, yaml:31)
    "schedule": "planner",
    #: start probability per ready step of the random schedule (released: ``prob = 1 / 10``)
    "random_start_prob": 0.1,
    #: Adam lr of the follow-up step (WALL uses the RL ``lr`` 5e-4, ``episode_runner.py:155``)
    "followup_lr": 5e-4,
    #: emit the agents' post-step GRU states h_t per step (the learner's planning model and labels need them)
    "store_hidden": False,
    #: released quirks: planner time steps t..t+19 for t >= 20; follow-up Q from h_t and the executed last action
    "wall_faithful": False,
    #: [marlx, not in the paper or the released code, where every episode is attacked] probability that an
    #: episode is attacked at all, drawn at its start; an episode not drawn gets budget 0 (the bookkeeping runs,
    #: nothing is executed). WALL's ``attack_train_episode_prob`` sets it for training episodes only.
    "episode_prob": 1.0,
}

SCHEDULES = ("planner", "random")


@register_attack("wolfpack")
class WolfpackAttack(Attack):
    """Wolfpack on B sub-envs; per-env flag, budget counter, last initial step and current group."""

    @classmethod
    def check_options(cls, options: dict) -> None:
        o = merge_options("wolfpack", options, DEFAULTS)
        check_budget("wolfpack", o["budget"])
        for key in ("attack_duration", "attack_period", "input_len", "num_followup_agents"):
            ok = isinstance(o[key], int) and not isinstance(o[key], bool) and o[key] >= (0 if key == "num_followup_agents" else 1)
            require(ok, "wolfpack", key, "a positive integer", o[key])
        require(isinstance(o["temperature"], (int, float)) and o["temperature"] > 0, "wolfpack", "temperature",
                "a number > 0", o["temperature"])
        require(isinstance(o["followup_lr"], (int, float)) and o["followup_lr"] > 0, "wolfpack", "followup_lr",
                "a number > 0", o["followup_lr"])
        check_prob("wolfpack", "random_start_prob", o["random_start_prob"])
        check_prob("wolfpack", "episode_prob", o["episode_prob"])
        require(o["schedule"] in SCHEDULES, "wolfpack", "schedule", "one of " + ", ".join(SCHEDULES), o["schedule"])
        for key in ("init_agent_random", "followup_l2", "store_hidden", "wall_faithful"):
            require(isinstance(o[key], bool), "wolfpack", key, "true or false", o[key])

    def __init__(self, options: dict, num_envs: int, n_agents: int, n_actions: int, seed=None):
        super().__init__(options, num_envs, n_agents, n_actions, seed)
        self.check_options(self.options)
        o = self.opts = merge_options("wolfpack", self.options, DEFAULTS)
        self.budget = int(o["budget"])
        self.episode_prob = float(o["episode_prob"])
        self.duration = int(o["attack_duration"])
        self.m = clamp_group_size(o["num_followup_agents"], n_agents)
        self.faithful = bool(o["wall_faithful"])
        self._qdiff = None
        e, n = self.num_envs, self.n_agents
        self.flag = np.full(e, self.duration, dtype=np.int64)
        self.count = np.zeros(e, dtype=np.int64)
        self.episode_budget = np.full(e, self.budget, dtype=np.int64)  # 0 in an episode not drawn for attack
        self.last_initial = np.zeros(e, dtype=np.int64)
        self.initial = np.full(e, n, dtype=np.int64)           # n: no initial agent yet
        self.previous_initial = np.full(e, n, dtype=np.int64)
        self.group = np.full((e, self.m), n, dtype=np.int64)   # the group of the running attack
        self.prev_executed = np.full((e, n), -1, dtype=np.int64)
        self.states: list[list] = [[] for _ in range(e)]

    # -- per episode --------------------------------------------------------------------------
    def begin_episode(self, env_index: int) -> None:
        n = self.n_agents
        self.flag[env_index] = self.duration
        self.count[env_index] = 0
        if self.episode_prob < 1.0:  # (no draw at the default: the attack's random stream stays the released one)
            self.episode_budget[env_index] = self.budget if self.rng.random() < self.episode_prob else 0
        self.last_initial[env_index] = 0
        self.initial[env_index] = n
        self.previous_initial[env_index] = n
        self.group[env_index] = n
        self.prev_executed[env_index] = -1
        self.states[env_index] = []

    def set_qdiff_transformer(self, model: torch.nn.Module | None) -> None:
        """Use ``model`` instead of the module's ``qdiff_transformer`` (attacking a checkpoint without one)."""
        self._qdiff = model

    # -- the step ------------------------------------------------------------------------------
    def __call__(self, ctx: AttackContext) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        module = ctx.module
        intended = np.asarray(ctx.actions, dtype=np.int64)
        avail = np.asarray(ctx.avail) > 0
        envs = np.asarray(ctx.env_indices, dtype=np.int64)
        times = np.asarray(ctx.t, dtype=np.int64)
        b, n = intended.shape
        q = self._q_values(ctx).detach().cpu().numpy()
        attack_actions = np.where(avail, q, np.inf).argmin(axis=-1)

        states = ctx.obs["state"].detach().cpu().numpy()
        for row, env in enumerate(envs):
            self.states[env].append(states[row])

        start = np.zeros(b, dtype=bool)
        drawn = self.rng.integers(0, n, size=b)  # the uniform initial agent of this step
        if self.opts["schedule"] == "planner":
            dq = self._planner(ctx, envs, times)  # [B, n, L]
            best, best_agent = dq.max(axis=1), dq.argmax(axis=1)
            for row, env in enumerate(envs):
                start[row] = draw_start(best[row], int(times[row]), int(self.last_initial[env]),
                                        float(self.opts["temperature"]), self.rng)
                self.initial[env] = drawn[row] if self.opts["init_agent_random"] else best_agent[row, 0]
        else:
            for row, env in enumerate(envs):
                if self.flag[env] == self.duration and self.rng.random() < self.opts["random_start_prob"]:
                    start[row] = True
                    self.initial[env] = drawn[row]

        executed = intended.copy()
        for row, env in enumerate(envs):
            if self.flag[env] == self.duration:
                if start[row]:
                    i = self.initial[env]
                    executed[row, i] = attack_actions[row, i]
                    self.previous_initial[env] = i
                if (executed[row] != intended[row]).any():
                    self.last_initial[env] = times[row]
                    self.count[env] += 1
                    self.flag[env] = self.duration - 1
            else:
                g = self.group[env]
                g = g[g < n]
                executed[row, g] = attack_actions[row, g]
                self.flag[env] = self.duration if self.flag[env] <= 0 else self.flag[env] - 1
                self.count[env] += 1
            if self.count[env] > self.episode_budget[env]:
                executed[row] = intended[row]

        groups = self._followup(ctx, envs, intended, attack_actions, q)
        for row, env in enumerate(envs):
            if self.flag[env] == self.duration - 1:  # an initial attack just happened: its group
                self.group[env] = groups[row]
            self.prev_executed[env] = executed[row]

        out = {
            ATTACKED: executed != intended,
            ATTACKER_ACTIONS: attack_actions.astype(np.int64),
            INITIAL_AGENT: self.initial[envs].copy(),
            FOLLOWUP_AGENTS: groups,
            ATTACK_COUNT: self.count[envs].copy(),
            ATTACK_FLAG: self.flag[envs].copy(),
        }
        if self.opts["store_hidden"]:
            out[HIDDEN_STATES] = self._hidden(ctx, after=True).detach().cpu().numpy()
        return executed, out

    # -- pieces --------------------------------------------------------------------------------
    @staticmethod
    def _hidden(ctx: AttackContext, after: bool) -> torch.Tensor:
        from ray.rllib.core.columns import Columns

        state = ctx.outputs[Columns.STATE_OUT] if after else ctx.state_in
        return state["h"]

    def _q_values(self, ctx: AttackContext) -> torch.Tensor:
        q = ctx.outputs.get("q_values")
        if q is None:  # a module that does not emit its Q values: one more agent step
            with torch.no_grad():
                q, _ = ctx.module.agent_q_values(ctx.obs, ctx.state_in["prev_actions"], ctx.state_in["h"])
        return q

    def _planner(self, ctx: AttackContext, envs: np.ndarray, times: np.ndarray) -> np.ndarray:
        model = self._qdiff if self._qdiff is not None else getattr(ctx.module, "qdiff_transformer", None)
        if model is None:
            raise MarlxError(
                "wolfpack's planner schedule needs a Q-difference transformer, which this checkpoint's module lacks "
                "(only WALL modules carry one); use a WALL checkpoint or the option schedule: random"
            )
        length = int(self.opts["input_len"])
        windows = [history_window(self.states[env], int(t), length, self.faithful) for env, t in zip(envs, times)]
        device = next(model.parameters()).device
        ts = torch.as_tensor(np.stack([w[0] for w in windows]), device=device)
        ss = torch.as_tensor(np.stack([w[1] for w in windows]), device=device)
        with torch.no_grad():
            return model.all_agents(ts, ss).cpu().numpy().astype(np.float64)

    def _followup(self, ctx, envs, intended, attack_actions, q) -> np.ndarray:
        b, n = intended.shape
        excluded = np.where(self.flag[envs] == self.duration - 1, self.previous_initial[envs], self.initial[envs])
        groups = np.full((b, self.m), n, dtype=np.int64)
        have = excluded < n  # the random schedule before its first start has no initial agent yet
        if self.m == 0 or not have.any():
            return groups
        rows = np.flatnonzero(have)
        if self.opts["followup_l2"]:
            obs = ctx.obs["obs"].detach().cpu().numpy()[rows]
            groups[rows] = top_m(l2_scores(obs, excluded[rows]), excluded[rows], self.m, largest=False)
            return groups
        module = ctx.module
        mixer = getattr(module, "mixer", None)
        if mixer is None:
            raise MarlxError("wolfpack's follow-up selection needs the mixer on the env runners; "
                             "set model_config mixer_on_runners: true (WALL does)")
        sel = torch.as_tensor(rows)
        obs = {k: v[sel] for k, v in ctx.obs.items()}
        if self.faithful:  # released: h_t (this step already in it) and the executed last action
            hidden = self._hidden(ctx, after=True)[sel]
            prev = torch.as_tensor(self.prev_executed[envs[rows]], dtype=torch.float32, device=hidden.device)
        else:  # the Q values the agent acted on: h_{t-1} and its own last-action input
            hidden = self._hidden(ctx, after=False)[sel]
            prev = ctx.state_in["prev_actions"][sel]
        device = hidden.device
        inputs = module.build_agent_inputs(obs, prev)
        scores = kl_followup(
            module.agent, inputs, hidden, module.mix, obs["state"],
            torch.as_tensor(intended[rows], device=device), torch.as_tensor(attack_actions[rows], device=device),
            torch.as_tensor(excluded[rows]), float(self.opts["followup_lr"]),
        )
        groups[rows] = top_m(scores.cpu().numpy(), excluded[rows], self.m)
        return groups

    # -- checkpointing -------------------------------------------------------------------------
    _ARRAYS = ("flag", "count", "last_initial", "initial", "previous_initial", "group", "prev_executed",
               "episode_budget")

    def get_state(self) -> dict:
        state = super().get_state()
        state.update({k: getattr(self, k).copy() for k in self._ARRAYS})
        state["states"] = [list(s) for s in self.states]
        return state

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        for k in self._ARRAYS:
            if k in state:
                setattr(self, k, np.asarray(state[k]).copy())
        if "states" in state:
            self.states = [list(s) for s in state["states"]]
