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

from marlx.envs.team import AVAIL, OBS, AgentDictTeamEnv, TeamEnv


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


class MultiAgentTeamEnv(AgentDictTeamEnv):
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
        self.env = env
        first = env.possible_agents[0]
        first_obs = env.observation_spaces[first]
        self._dict_obs = isinstance(first_obs, gym.spaces.Dict)
        obs_space = first_obs["observations"] if self._dict_obs else first_obs
        act_space = env.action_spaces[first]
        if not isinstance(act_space, gym.spaces.Discrete):
            raise TypeError(f"the team view needs Discrete actions, got {act_space}")
        self._setup_agents(env.possible_agents, act_space.n, np.prod(obs_space.shape), team_reward)
        self.episode_limit = episode_limit
        self.state_fn = state_fn
        self.success_key = success_key
        self.state_dim = int(self.get_state().shape[0]) if self._has_state() else self.n_agents * self.obs_dim
        super().__init__()

    def _has_state(self) -> bool:
        return self.state_fn is not None or hasattr(self.env, "get_state")

    def _ingest(self, obs_dict: dict) -> None:
        if self._dict_obs:
            self._fill({a: (o["observations"], o["action_mask"]) for a, o in obs_dict.items()})
        else:
            self._fill({a: (o, None) for a, o in obs_dict.items()})
        if not self._dict_obs and hasattr(self.env, "get_avail_actions"):
            self._avail[:] = self.env.get_avail_actions()

    def _reset(self, rng, options):
        seed = int(rng.integers(2**31 - 1))
        obs, infos = self.env.reset(seed=seed, options=options)
        self._live = [a for a in self.ids if a in obs]
        self._ingest(obs)
        return {}

    def _step(self, actions):
        obs, rewards, terms, truncs, infos = self.env.step(self._action_dict(actions))
        reward = self._after_step(rewards, terms, truncs)
        self._ingest(obs)
        terminated = bool(terms.get("__all__", False))
        self._env_truncated = bool(truncs.get("__all__", False))
        info = {}
        for v in infos.values():
            if isinstance(v, dict) and self.success_key in v:
                info["success"] = bool(v[self.success_key])
        return reward, terminated, info

    def get_state(self):
        if self.state_fn is not None:
            return np.asarray(self.state_fn(self.env), np.float32)
        if hasattr(self.env, "get_state"):
            return np.asarray(self.env.get_state(), np.float32)
        return self._obs.reshape(-1)
