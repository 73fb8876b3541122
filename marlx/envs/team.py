"""The team view: a cooperative multi-agent environment presented as one gymnasium env.

CTDE learners (QMIX, VDN, MAPPO, ...) need, at every step, all agents' observations, the global state,
the available-action masks and the joint action. A :class:`TeamEnv` gives exactly that as a plain
``gymnasium.Env`` so that RLlib's ``SingleAgentEnvRunner`` samples it unpatched:

* observation: ``Dict(obs=(n_agents, obs_dim), state=(state_dim,), avail=(n_agents, n_actions)
  [, positions=(n_agents, 2|3)])``, all float32;
* action: ``MultiDiscrete([n_actions] * n_agents)`` (the joint action);
* reward: the team reward (a float); ``terminated`` and ``truncated`` kept apart (a time limit
  truncates, it never terminates);
* ``info["success"]``: whether the team solved the task in this episode (the last step's value counts);
  an env whose task has no success criterion sets ``reports_success = False`` and leaves it out.

Subclasses implement :meth:`_reset` and :meth:`_step` on numpy arrays; the base class assembles the
observation dict, checks the joint action and counts the episode limit.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

OBS, STATE, AVAIL, POSITIONS = "obs", "state", "avail", "positions"


class TeamEnv(gym.Env):
    """Base class of every team-view environment.

    Subclasses set, before calling ``super().__init__()``:
    ``n_agents``, ``n_actions``, ``obs_dim``, ``state_dim``, ``episode_limit`` and optionally
    ``position_dim`` (2 or 3; 0 means the env has no positions) and ``state_names`` (one name per
    state dimension, used by methods that reason about state dimensions, e.g. FIM's CoG detection).
    """

    metadata = {"render_modes": []}

    n_agents: int
    n_actions: int
    obs_dim: int
    state_dim: int
    episode_limit: int
    position_dim: int = 0
    state_names: list[str] | None = None
    #: Names of the actions by index (e.g. ``["stay", "up", ...]``), used where episodes are printed
    #: (``marlx evaluate --trace``); None prints action indices.
    action_names: list[str] | None = None
    #: Whether ``info`` carries ``success`` (False: the task has no success criterion; no success rate is logged).
    reports_success: bool = True

    def __init__(self) -> None:
        spaces = {
            OBS: gym.spaces.Box(-np.inf, np.inf, (self.n_agents, self.obs_dim), np.float32),
            STATE: gym.spaces.Box(-np.inf, np.inf, (self.state_dim,), np.float32),
            AVAIL: gym.spaces.Box(0.0, 1.0, (self.n_agents, self.n_actions), np.float32),
        }
        if self.position_dim:
            spaces[POSITIONS] = gym.spaces.Box(
                -np.inf, np.inf, (self.n_agents, self.position_dim), np.float32
            )
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.MultiDiscrete([self.n_actions] * self.n_agents)
        self._t = 0
        # Wrappers of envs with their own time limit set this in _step.
        self._env_truncated = False

    # -- to implement -------------------------------------------------------------------------
    def _reset(self, rng: np.random.Generator, options: dict | None) -> dict:
        """Start an episode; return the info dict."""
        raise NotImplementedError

    def _step(self, actions: np.ndarray) -> tuple[float, bool, dict]:
        """Apply the joint action; return ``(team_reward, terminated, info)``."""
        raise NotImplementedError

    def get_obs(self) -> np.ndarray:
        """Per-agent observations, ``(n_agents, obs_dim)`` float32."""
        raise NotImplementedError

    def get_state(self) -> np.ndarray:
        """Global state, ``(state_dim,)`` float32."""
        raise NotImplementedError

    def get_avail_actions(self) -> np.ndarray:
        """Available-action mask, ``(n_agents, n_actions)``; all ones unless overridden."""
        return np.ones((self.n_agents, self.n_actions), np.float32)

    def get_positions(self) -> np.ndarray | None:
        """Agent positions ``(n_agents, position_dim)`` when ``position_dim > 0``."""
        return None

    # -- gymnasium API ------------------------------------------------------------------------
    def team_obs(self) -> dict[str, np.ndarray]:
        # Copies: an env may reuse its buffers, and an observation must not change after it is returned.
        out = {
            OBS: np.array(self.get_obs(), np.float32),
            STATE: np.array(self.get_state(), np.float32),
            AVAIL: np.array(self.get_avail_actions(), np.float32),
        }
        if self.position_dim:
            out[POSITIONS] = np.array(self.get_positions(), np.float32)
        return out

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t = 0
        self._env_truncated = False
        info = self._reset(self.np_random, options)
        if self.reports_success:
            info.setdefault("success", False)
        return self.team_obs(), info

    def step(self, action):
        actions = np.asarray(action, dtype=np.int64).reshape(-1)
        if actions.shape[0] != self.n_agents:
            raise ValueError(
                f"{type(self).__name__} expects a joint action of {self.n_agents} agents, "
                f"got shape {np.shape(action)}"
            )
        reward, terminated, info = self._step(actions)
        self._t += 1
        # A time limit truncates (bootstrap continues); a wrapped env may also truncate by itself.
        truncated = (not terminated) and (self._t >= self.episode_limit or self._env_truncated)
        if self.reports_success:
            info.setdefault("success", False)
        return self.team_obs(), float(reward), bool(terminated), bool(truncated), info

    def env_info(self) -> dict[str, Any]:
        """PyMARL-style summary of the env's sizes."""
        return {
            "n_agents": self.n_agents,
            "n_actions": self.n_actions,
            "obs_shape": self.obs_dim,
            "state_shape": self.state_dim,
            "episode_limit": self.episode_limit,
            "position_dim": self.position_dim,
        }


class AgentDictTeamEnv(TeamEnv):
    """Shared part of the team views of per-agent envs that speak in ``{agent_id: value}`` dicts
    (RLlib ``MultiAgentEnv``, PettingZoo ``ParallelEnv``): observation/mask buffers, the agents still acting,
    and the team reward. An agent that is absent from a step's observations (done before the others) gets zero
    observations and only action 0 available; once done, it is sent no more actions.
    """

    TEAM_REWARDS = ("sum", "mean")

    def _setup_agents(self, ids: list, n_actions: int, obs_dim: int, team_reward: str) -> None:
        if team_reward not in self.TEAM_REWARDS:
            raise ValueError(f"team_reward must be 'sum' or 'mean', got {team_reward!r}")
        self.ids = list(ids)
        self.n_agents = len(self.ids)
        self.n_actions = int(n_actions)
        self.obs_dim = int(obs_dim)
        self.team_reward = team_reward
        self._live = list(self.ids)
        self._obs = np.zeros((self.n_agents, self.obs_dim), np.float32)
        self._avail = np.ones((self.n_agents, self.n_actions), np.float32)

    def _fill(self, per_agent: dict) -> None:
        """``{agent_id: (observation, action mask or None)}`` of the agents present -> the buffers."""
        self._obs.fill(0.0)
        self._avail.fill(0.0)
        self._avail[:, 0] = 1.0
        for i, a in enumerate(self.ids):
            if a in per_agent:
                o, mask = per_agent[a]
                self._avail[i] = 1.0 if mask is None else mask
                self._obs[i] = np.asarray(o, np.float32).reshape(-1)

    def _action_dict(self, actions: np.ndarray) -> dict:
        """The joint action as ``{agent_id: action}`` for the agents still acting."""
        return {a: int(actions[i]) for i, a in enumerate(self.ids) if a in self._live}

    def _after_step(self, rewards: dict, terms: dict, truncs: dict) -> float:
        """Drop agents that are done (they still return a final observation) and return the team reward."""
        self._live = [a for a in self._live if not (terms.get(a) or truncs.get(a))]
        values = [float(r) for r in rewards.values()] or [0.0]
        return float(np.sum(values)) if self.team_reward == "sum" else float(np.mean(values))

    def get_obs(self):
        return self._obs

    def get_avail_actions(self):
        return self._avail
