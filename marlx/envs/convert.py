"""Conversions between the team view and RLlib's ``MultiAgentEnv``.

* :class:`TeamToMultiAgentEnv` shows a :class:`~marlx.envs.team.TeamEnv` to RLlib's per-agent
  algorithms (PPO with one shared policy, ...): one agent id per team member, the team reward to each.
* :class:`MultiAgentTeamEnv` turns any RLlib ``MultiAgentEnv`` with a fixed set of agents and
  ``Discrete`` actions into a team, so that marlx's CTDE learners can train on it.
"""

from __future__ import annotations

from typing import Callable

import gymnasium as gym
import numpy as np
from ray.rllib.env.multi_agent_env import MultiAgentEnv

from marlx.envs.team import AVAIL, OBS, TeamEnv


def agent_ids(n_agents: int) -> list[str]:
    return [f"agent_{i}" for i in range(n_agents)]


class TeamToMultiAgentEnv(MultiAgentEnv):
    """RLlib ``MultiAgentEnv`` view of a team env.

    Args:
        team: the team env.
        add_agent_id: append a one-hot agent id to each agent's observation (useful when all agents
            share one policy, as PyMARL does).
        action_mask: give each agent ``{"observations": obs, "action_mask": avail}`` (RLlib's
            action-masking convention) instead of the bare observation vector.

    Unavailable actions sent by a policy that ignores masks are passed on to the team env, which
    treats them as its own rules say (the built-in envs treat a blocked move as staying put).
    """

    def __init__(self, team: TeamEnv, add_agent_id: bool = True, action_mask: bool = False):
        super().__init__()
        self.team = team
        self.add_agent_id = add_agent_id
        self.action_mask = action_mask
        self.agents = self.possible_agents = agent_ids(team.n_agents)
        dim = team.obs_dim + (team.n_agents if add_agent_id else 0)
        obs_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        if action_mask:
            obs_space = gym.spaces.Dict(
                {
                    "observations": obs_space,
                    "action_mask": gym.spaces.Box(0.0, 1.0, (team.n_actions,), np.float32),
                }
            )
        self.observation_spaces = {a: obs_space for a in self.agents}
        self.action_spaces = {a: gym.spaces.Discrete(team.n_actions) for a in self.agents}
        self._eye = np.eye(team.n_agents, dtype=np.float32)

    def _split(self, team_obs: dict) -> dict:
        obs = team_obs[OBS]
        if self.add_agent_id:
            obs = np.concatenate([obs, self._eye], axis=1)
        if self.action_mask:
            return {
                a: {"observations": obs[i], "action_mask": team_obs[AVAIL][i]}
                for i, a in enumerate(self.agents)
            }
        return {a: obs[i] for i, a in enumerate(self.agents)}

    def reset(self, *, seed=None, options=None):
        team_obs, info = self.team.reset(seed=seed, options=options)
        return self._split(team_obs), {a: dict(info) for a in self.agents}

    def step(self, action_dict):
        actions = np.array([action_dict[a] for a in self.agents], dtype=np.int64)
        team_obs, reward, terminated, truncated, info = self.team.step(actions)
        rewards = {a: reward for a in self.agents}
        return (
            self._split(team_obs),
            rewards,
            {"__all__": terminated},
            {"__all__": truncated},
            {a: dict(info) for a in self.agents},
        )

    # Passed through so that a team view built on top of this env recovers the originals.
    def get_state(self) -> np.ndarray:
        return self.team.get_state()

    def get_avail_actions(self) -> np.ndarray:
        return self.team.get_avail_actions()


class MultiAgentTeamEnv(TeamEnv):
    """Team view of an RLlib ``MultiAgentEnv`` whose agents all act at every step.

    The global state is ``state_fn(env)`` when given, else the env's ``get_state()`` when it has one,
    else the concatenation of all agents' observations. Available actions come from an
    ``action_mask`` entry of dict observations, else from the env's ``get_avail_actions()``, else all
    ones. The team reward is the sum (``team_reward="sum"``) or mean of the agents' rewards.
    An agent that is done before the others gets zero observations and only action 0 available.
    """

    def __init__(
        self,
        env: MultiAgentEnv,
        episode_limit: int = 1000,
        team_reward: str = "sum",
        state_fn: Callable[[MultiAgentEnv], np.ndarray] | None = None,
        success_key: str = "success",
    ):
        if team_reward not in ("sum", "mean"):
            raise ValueError(f"team_reward must be 'sum' or 'mean', got {team_reward!r}")
        self.env = env
        self.ids = list(env.possible_agents)
        first_obs = env.observation_spaces[self.ids[0]]
        self._dict_obs = isinstance(first_obs, gym.spaces.Dict)
        obs_space = first_obs["observations"] if self._dict_obs else first_obs
        act_space = env.action_spaces[self.ids[0]]
        if not isinstance(act_space, gym.spaces.Discrete):
            raise TypeError(f"the team view needs Discrete actions, got {act_space}")
        self.n_agents = len(self.ids)
        self.n_actions = int(act_space.n)
        self.obs_dim = int(np.prod(obs_space.shape))
        self.episode_limit = episode_limit
        self.team_reward = team_reward
        self.state_fn = state_fn
        self.success_key = success_key
        self._obs = np.zeros((self.n_agents, self.obs_dim), np.float32)
        self._avail = np.ones((self.n_agents, self.n_actions), np.float32)
        self.state_dim = int(self.get_state().shape[0]) if self._has_state() else self.n_agents * self.obs_dim
        super().__init__()

    def _has_state(self) -> bool:
        return self.state_fn is not None or hasattr(self.env, "get_state")

    def _ingest(self, obs_dict: dict) -> None:
        self._obs[:] = 0.0
        self._avail[:] = 0.0
        self._avail[:, 0] = 1.0
        for i, a in enumerate(self.ids):
            if a not in obs_dict:
                continue
            o = obs_dict[a]
            if self._dict_obs:
                self._avail[i] = o["action_mask"]
                o = o["observations"]
            else:
                self._avail[i] = 1.0
            self._obs[i] = np.asarray(o, np.float32).reshape(-1)
        if not self._dict_obs and hasattr(self.env, "get_avail_actions"):
            self._avail[:] = self.env.get_avail_actions()

    def _reset(self, rng, options):
        seed = int(rng.integers(2**31 - 1))
        obs, infos = self.env.reset(seed=seed, options=options)
        self._live = [a for a in self.ids if a in obs]
        self._ingest(obs)
        return {}

    def _step(self, actions):
        action_dict = {a: int(actions[i]) for i, a in enumerate(self.ids) if a in self._live}
        obs, rewards, terms, truncs, infos = self.env.step(action_dict)
        # an agent that is done still returns its final observation, but acts no more
        self._live = [a for a in self._live if not (terms.get(a) or truncs.get(a))]
        self._ingest(obs)
        values = [float(r) for r in rewards.values()] or [0.0]
        reward = float(np.sum(values)) if self.team_reward == "sum" else float(np.mean(values))
        terminated = bool(terms.get("__all__", False))
        self._env_truncated = bool(truncs.get("__all__", False))
        info = {}
        for v in infos.values():
            if isinstance(v, dict) and self.success_key in v:
                info["success"] = bool(v[self.success_key])
        return reward, terminated, info

    def get_obs(self):
        return self._obs

    def get_state(self):
        if self.state_fn is not None:
            return np.asarray(self.state_fn(self.env), np.float32)
        if hasattr(self.env, "get_state"):
            return np.asarray(self.env.get_state(), np.float32)
        return self._obs.reshape(-1)

    def get_avail_actions(self):
        return self._avail
