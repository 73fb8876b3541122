"""Team view of any PettingZoo parallel env, and the MPE tasks through ``mpe2``."""

from __future__ import annotations

from typing import Callable

import gymnasium as gym
import numpy as np

from marlx.envs.team import AgentDictTeamEnv


class PettingZooTeamEnv(AgentDictTeamEnv):
    """Team view of a PettingZoo ``ParallelEnv`` with discrete actions.

    Args:
        env: the parallel env (all ``possible_agents`` must share one observation size and one
            ``Discrete`` action space).
        episode_limit: the team view's time limit; the env's own truncation is respected too.
        team_reward: ``"sum"`` (PyMARL's convention for MPE) or ``"mean"`` of the agents' rewards.
        positions_fn: ``env -> (n_agents, 2|3)`` agent positions, for formation-based methods.
        success_fn: ``(env, infos) -> bool``; defaults to any agent info's ``success`` entry.

    The global state is ``env.state()`` when the env implements it, else all observations
    concatenated. Available actions come from ``action_mask`` in dict observations or infos, else
    all ones. An agent that is done before the others gets zero observations and only action 0.
    """

    def __init__(
        self,
        env,
        episode_limit: int,
        team_reward: str = "sum",
        positions_fn: Callable | None = None,
        success_fn: Callable | None = None,
    ):
        self.env = env
        first = env.possible_agents[0]
        act = env.action_space(first)
        if not isinstance(act, gym.spaces.Discrete):
            raise TypeError(
                f"the team view needs Discrete actions, {first} has {act}; "
                "create the PettingZoo env with continuous_actions=False"
            )
        space = env.observation_space(first)
        self._dict_obs = isinstance(space, gym.spaces.Dict)
        if self._dict_obs:
            space = space["observation"]
        self._setup_agents(env.possible_agents, act.n, np.prod(space.shape), team_reward)
        self.episode_limit = episode_limit
        self.positions_fn = positions_fn
        self.success_fn = success_fn
        try:
            env.reset(seed=0)
            self._has_state = env.state() is not None
        except NotImplementedError:
            self._has_state = False
        self.state_dim = (
            int(np.asarray(env.state()).size) if self._has_state else self.n_agents * self.obs_dim
        )
        if positions_fn is not None:
            self.position_dim = int(np.asarray(positions_fn(env)).shape[-1])
        super().__init__()

    def _ingest(self, obs: dict, infos: dict) -> None:
        if self._dict_obs:
            self._fill({a: (o["observation"], o.get("action_mask")) for a, o in obs.items()})
        else:
            self._fill({a: (o, infos[a].get("action_mask") if isinstance(infos.get(a), dict) else None)
                        for a, o in obs.items()})

    def _reset(self, rng, options):
        obs, infos = self.env.reset(seed=int(rng.integers(2**31 - 1)), options=options)
        self._live = [a for a in self.ids if a in obs]
        self._ingest(obs, infos)
        return {}

    def _step(self, actions):
        obs, rewards, terms, truncs, infos = self.env.step(self._action_dict(actions))
        self._ingest(obs, infos)
        reward = self._after_step(rewards, terms, truncs)
        terminated = bool(terms) and all(terms.values())
        self._env_truncated = bool(truncs) and all(truncs.values())
        if self.success_fn is not None:
            success = bool(self.success_fn(self.env, infos))
        else:
            success = any(isinstance(v, dict) and v.get("success") for v in infos.values())
        return reward, terminated, ({"success": success} if self.reports_success else {})

    def get_state(self):
        if self._has_state:
            return np.asarray(self.env.state(), np.float32).reshape(-1)
        return self._obs.reshape(-1)

    def get_positions(self):
        return None if self.positions_fn is None else self.positions_fn(self.env)

    def close(self):
        self.env.close()


def _mpe_positions(env) -> np.ndarray:
    return np.array([a.state.p_pos for a in env.unwrapped.world.agents], np.float32)


def make_mpe(scenario: str = "simple_spread", max_cycles: int = 25, team_reward: str = "sum", **kwargs):
    """An MPE scenario from ``mpe2`` as a team (discrete actions, agent positions included).

    ``kwargs`` go to the scenario's ``parallel_env`` (e.g. ``N=3, local_ratio=0.5`` for simple_spread).
    MPE tasks have no success condition: the team reports none (``reports_success = False``).
    """
    import importlib

    try:
        module = importlib.import_module(f"mpe2.{scenario}_v3")
    except ModuleNotFoundError:
        try:
            module = importlib.import_module(f"mpe2.{scenario}_v2")
        except ModuleNotFoundError as e:
            raise ValueError(f"mpe2 has no scenario {scenario!r}") from e
    env = module.parallel_env(max_cycles=max_cycles, continuous_actions=False, **kwargs)
    team = PettingZooTeamEnv(env, episode_limit=max_cycles, team_reward=team_reward, positions_fn=_mpe_positions)
    team.reports_success = False
    return team
