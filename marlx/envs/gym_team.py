"""Gymnasium multi-agent envs in EPyMARL's convention as teams: ``lbf/<task>``, ``rware/<task>`` and any
gymnasium id given as ``env: module:EnvId`` (e.g. ``lbforaging:Foraging-8x8-2p-2f-coop-v3``).

The convention (EPyMARL's ``gymma`` envs: Level-Based Foraging, Multi-Robot Warehouse, ...):

* ``observation_space``: ``Tuple`` of one space per agent; ``action_space``: ``Tuple`` of ``Discrete``;
* ``step`` returns a tuple of observations, a list of per-agent rewards (or one team reward), ``done`` as a
  bool or a per-agent list (the episode ends when all are done, as in EPyMARL), ``truncated``, ``info``.

The team view:

* obs: each agent's observation flattened and zero-padded to the longest; actions padded to the largest
  ``Discrete`` with the extra actions unavailable;
* avail: ``info["action_mask"]`` (or ``"avail_actions"``) when the env puts one there, else the env's
  ``get_avail_actions()``, else all ones (EPyMARL does the same);
* state: the env's ``get_state()`` when it has one, else all observations concatenated (EPyMARL's choice);
* reward: the sum (``team_reward="sum"``, EPyMARL's default) or mean of the per-agent rewards;
* ``time_limit`` (EPyMARL's ``env_args.time_limit``) is the episode limit; it truncates. Where the env takes
  its own limit as an argument (LBF ``max_episode_steps``, RWARE ``max_steps``) that argument is set to the
  same value, so that the env does not end first; an env that reports ``done`` at its own time limit without
  solving the task is counted as truncated, not terminated (LBF does that);
* ``info["success"]``: the env's own ``info["success"]`` when it has one; LBF: all food collected;
  RWARE: at least one shelf delivered in the episode; other envs report none;
* positions (LBF players' ``(row, col)``, RWARE robots' ``(x, y)``) for formation-based methods.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import gymnasium as gym
import numpy as np

from marlx.envs.spec import family_specs
from marlx.envs.team import TeamEnv
from marlx.errors import MarlxError

#: Keyword arguments by which an env takes its own time limit (LBF, RWARE).
OWN_LIMIT_KWARGS = ("max_episode_steps", "max_steps")
#: Info keys that may carry per-agent action masks.
MASK_KEYS = ("action_mask", "action_masks", "avail_actions")


def _lbf_success(env, rewards: np.ndarray, so_far: bool) -> bool:
    return bool(env.field.sum() == 0)  # every food item loaded


def _rware_success(env, rewards: np.ndarray, so_far: bool) -> bool:
    return so_far or bool((rewards > 0).any())  # rewards are only paid for deliveries


def _lbf_positions(env) -> np.ndarray:
    return np.array([p.position for p in env.players], np.float32)


def _rware_positions(env) -> np.ndarray:
    return np.array([(a.x, a.y) for a in env.agents], np.float32)


#: Per package (the top module of the unwrapped env's class): success rule and agent positions.
KNOWN_FAMILIES: dict[str, tuple[Callable, Callable]] = {
    "lbforaging": (_lbf_success, _lbf_positions),
    "rware": (_rware_success, _rware_positions),
}


class GymTeamEnv(TeamEnv):
    """Team view of a gymnasium env with ``Tuple`` observation and action spaces (EPyMARL's convention).

    Args:
        env_id: a gymnasium id, optionally ``module:id`` (the module is imported first, as ``gym.make`` does).
        time_limit: the episode limit (default: the env's own limit; one of them is needed).
        team_reward: ``"sum"`` (default, as EPyMARL) or ``"mean"`` of the per-agent rewards.
        **env_kwargs: passed to ``gym.make``.
    """

    TEAM_REWARDS = ("sum", "mean")

    def __init__(self, env_id: str, time_limit: int | None = None, team_reward: str = "sum", **env_kwargs: Any):
        if team_reward not in self.TEAM_REWARDS:
            raise ValueError(f"team_reward must be 'sum' or 'mean', got {team_reward!r}")
        gym_spec = _gym_spec(env_id)
        spec_kwargs = gym_spec.kwargs
        own_limit_kwarg = next((k for k in OWN_LIMIT_KWARGS if k in spec_kwargs), None)
        if time_limit is not None and own_limit_kwarg and own_limit_kwarg not in env_kwargs:
            env_kwargs[own_limit_kwarg] = int(time_limit)
        # Through the spec: gym.make(id, max_episode_steps=...) would take that keyword for its own TimeLimit.
        made_spec = dataclasses.replace(gym_spec, kwargs={**spec_kwargs, **env_kwargs}, disable_env_checker=True)
        self.env = gym.make(made_spec)
        self.env_id = env_id
        self.team_reward = team_reward
        own_limit = env_kwargs.get(own_limit_kwarg, spec_kwargs.get(own_limit_kwarg)) if own_limit_kwarg else None
        self._own_limit = own_limit or self.env.spec.max_episode_steps
        self.episode_limit = int(time_limit or self._own_limit or 0)
        if self.episode_limit <= 0:
            raise MarlxError(f"{env_id} has no time limit of its own; set env_config time_limit, e.g. time_limit: 100")

        obs_spaces, act_spaces = self.env.observation_space, self.env.action_space
        if not isinstance(obs_spaces, gym.spaces.Tuple) or not isinstance(act_spaces, gym.spaces.Tuple):
            raise MarlxError(
                f"{env_id} is not a multi-agent env in EPyMARL's convention: its observation and action spaces must be "
                f"Tuple spaces with one entry per agent, got {type(obs_spaces).__name__} and {type(act_spaces).__name__}"
            )
        if not all(isinstance(s, gym.spaces.Discrete) for s in act_spaces):
            raise MarlxError(f"{env_id}: the team view needs Discrete actions per agent, got {act_spaces}")
        self._obs_spaces = list(obs_spaces)
        self._obs_dims = [gym.spaces.flatdim(s) for s in self._obs_spaces]
        self._act_ns = [int(s.n) for s in act_spaces]
        self.n_agents = len(self._act_ns)
        self.n_actions = max(self._act_ns)
        self.obs_dim = max(self._obs_dims)

        inner = self.env.unwrapped
        family = KNOWN_FAMILIES.get(type(inner).__module__.split(".")[0])
        self._success_fn, positions_fn = family if family else (None, None)
        self._positions_fn = positions_fn
        self.reports_success = self._success_fn is not None
        self.position_dim = 2 if positions_fn else 0
        self._get_state = getattr(inner, "get_state", None)
        self._get_avail = getattr(inner, "get_avail_actions", None)

        self._obs = np.zeros((self.n_agents, self.obs_dim), np.float32)
        self._base_avail = np.zeros((self.n_agents, self.n_actions), np.float32)
        for i, n in enumerate(self._act_ns):
            self._base_avail[i, :n] = 1.0
        self._avail = self._base_avail.copy()
        self._success = False
        self.state_dim = int(np.asarray(self._get_state()).size) if self._get_state else self.n_agents * self.obs_dim
        super().__init__()

    # -- ingest the env's outputs -------------------------------------------------------------
    def _ingest(self, obs, info: dict) -> None:
        for i, (space, o) in enumerate(zip(self._obs_spaces, obs)):
            flat = np.asarray(o, np.float32).reshape(-1) if isinstance(space, gym.spaces.Box) else gym.spaces.flatten(space, o)
            self._obs[i, : flat.shape[0]] = flat
        mask = next((info[k] for k in MASK_KEYS if k in info), None)
        if mask is None and self._get_avail is not None:
            mask = self._get_avail()
        if mask is None:
            self._avail[:] = self._base_avail
        else:
            for i, n in enumerate(self._act_ns):
                self._avail[i, :n] = np.asarray(mask[i], np.float32).reshape(-1)[:n]

    def _reset(self, rng, options):
        obs, info = self.env.reset(seed=int(rng.integers(2**31 - 1)), options=options)
        self._success = False
        self._ingest(obs, info)
        return self._info(info)

    def _step(self, actions):
        actions = tuple(int(a) for a in actions)
        obs, rewards, done, truncated, info = self.env.step(actions)
        rewards = np.asarray(rewards, np.float64).reshape(-1)
        reward = float(rewards.sum() if self.team_reward == "sum" or rewards.size == 1 else rewards.mean())
        done = bool(np.all(done))
        truncated = bool(np.all(truncated))
        self._ingest(obs, info)
        if "success" in info:
            self._success = bool(info["success"])
        elif self._success_fn is not None:
            self._success = self._success_fn(self.env.unwrapped, rewards, self._success)
        # An env that ends itself at its own time limit without solving the task has truncated the episode.
        at_own_limit = self._own_limit is not None and self._t + 1 >= self._own_limit
        if done and at_own_limit and not self._success:
            done, truncated = False, True
        self._env_truncated = truncated
        return reward, done, self._info(info)

    def _info(self, info: dict) -> dict:
        out = {k: v for k, v in info.items() if k not in MASK_KEYS}
        if self._success_fn is not None or "success" in info:
            out["success"] = self._success
        return out

    # -- TeamEnv ------------------------------------------------------------------------------
    def get_obs(self):
        return self._obs

    def get_state(self):
        if self._get_state is not None:
            return np.asarray(self._get_state(), np.float32).reshape(-1)
        return self._obs.reshape(-1)

    def get_avail_actions(self):
        return self._avail

    def get_positions(self):
        return self._positions_fn(self.env.unwrapped) if self._positions_fn else None

    def close(self):
        self.env.close()


def _gym_spec(env_id: str):
    """The gymnasium spec of ``id`` or ``module:id`` (the module is imported first, as ``gym.make`` does)."""
    if ":" in env_id:
        module, _, env_id = env_id.partition(":")
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise MarlxError(f"cannot import {module!r} for the gymnasium env {env_id!r}: {e}") from None
    try:
        return gym.spec(env_id)
    except gym.error.Error as e:
        raise MarlxError(f"{env_id!r} is not a registered gymnasium id: {e}") from None


def make_gym_team(env_id: str, time_limit: int | None = None, team_reward: str = "sum", **env_kwargs: Any) -> GymTeamEnv:
    """``lbf/<task>``, ``rware/<task>`` and ``env: module:EnvId``: see :class:`GymTeamEnv`."""
    return GymTeamEnv(env_id, time_limit=time_limit, team_reward=team_reward, **env_kwargs)


#: Level-Based Foraging tasks registered as ``lbf/<task>`` -> ``lbforaging:Foraging-<task>-v3``; the ones of
#: EPyMARL's benchmark paper and LBF's README. ``2s``: sight 2 (partial observability), ``coop``: every food
#: item needs all agents.
LBF_TASKS = (
    "8x8-2p-2f-coop", "2s-8x8-2p-2f-coop", "8x8-2p-3f", "8x8-2p-3f-coop", "10x10-3p-3f", "2s-10x10-3p-3f",
    "15x15-3p-4f", "15x15-4p-3f", "15x15-4p-4f", "5x5-2p-1f-coop",
)
#: Multi-Robot Warehouse tasks registered as ``rware/<task>`` -> ``rware:rware-<task>-v2``.
RWARE_TASKS = (
    "tiny-2ag", "tiny-4ag", "tiny-2ag-hard", "tiny-4ag-hard", "small-2ag", "small-4ag", "medium-4ag",
    "medium-2ag-hard", "large-4ag",
)
#: EPyMARL's time limits: 50 steps for LBF, 500 for RWARE (its benchmark configs).
LBF_TIME_LIMIT, RWARE_TIME_LIMIT = 50, 500
LBF_INSTALL, RWARE_INSTALL = "pip install lbforaging==2.0.0", "pip install rware==2.0.0"


def gym_team_specs() -> list:
    """``lbf/<task>`` and ``rware/<task>`` (nothing imported: listing stays cheap)."""
    return [
        *family_specs(
            "lbf", "marlx.envs.gym_team:make_gym_team",
            {t: f"Level-Based Foraging {t} (sparse: food loaded by enough agents at once; success: all food)"
             for t in LBF_TASKS},
            key="env_id", value=lambda t: f"lbforaging:Foraging-{t}-v3", defaults={"time_limit": LBF_TIME_LIMIT},
            requires=("lbforaging",), install=LBF_INSTALL,
        ),
        *family_specs(
            "rware", "marlx.envs.gym_team:make_gym_team",
            {t: f"Multi-Robot Warehouse {t} (very sparse: +1 per delivered shelf; success: a delivery)"
             for t in RWARE_TASKS},
            key="env_id", value=lambda t: f"rware:rware-{t}-v2", defaults={"time_limit": RWARE_TIME_LIMIT},
            requires=("rware",), install=RWARE_INSTALL,
        ),
    ]
