"""``TeamEpisode``: one whole episode of a team env (or one chunk of it) as numpy arrays.

This is what :class:`~marlx.runtime.runner.TeamEnvRunner` returns from ``sample()``. It carries everything a
team learner needs and nothing per step in Python objects:

* ``obs``: the observation leaves ``{leaf: [T+1, ...]}``; entry ``T`` is the observation after the chunk's last
  step (the final observation of a finished episode, the bootstrap observation of an unfinished chunk);
* ``actions`` ``[T, n]`` (the module's intended joint actions) and ``executed_actions`` ``[T, n]`` (what the
  env executed; equal to ``actions`` without an attack);
* ``rewards`` ``[T]`` (team reward), ``terminated`` / ``truncated`` (only a finished chunk has one set);
* ``extras``: every per-step module output other than the action and the recurrent state (e.g. ``q_values
  [T, n, A]``, ``action_logp [T, n]``), the attack's per-step arrays, and with ``keep_state_out`` the recurrent
  state after each step under ``state_out/<key>``;
* ``state_in``: the recurrent state before the chunk's first step;
* ``infos_last``: the last step's info dict (``success`` and env-specific counters).

It answers the few questions RLlib asks of episodes (``env_steps()``, ``agent_steps()``, ``get_return()``,
``is_done``, ``get_infos(-1)``, ``len``), so RLlib's evaluation loop and callbacks work with it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class TeamEpisode:
    obs: dict[str, np.ndarray]
    actions: np.ndarray
    executed_actions: np.ndarray
    rewards: np.ndarray
    terminated: bool = False
    truncated: bool = False
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    state_in: dict[str, np.ndarray] = field(default_factory=dict)
    infos_last: dict = field(default_factory=dict)
    id_: str = field(default_factory=lambda: uuid.uuid4().hex)
    env_index: int = 0
    #: Step index of the chunk's first step inside its episode (0 for a whole episode).
    start_t: int = 0
    #: Wall-clock seconds the chunk took to sample.
    duration_s: float = 0.0

    # -- what RLlib asks of an episode ----------------------------------------------------------
    def __len__(self) -> int:
        return int(len(self.rewards))

    @property
    def is_done(self) -> bool:
        return bool(self.terminated or self.truncated)

    @property
    def is_terminated(self) -> bool:
        return bool(self.terminated)

    @property
    def is_truncated(self) -> bool:
        return bool(self.truncated)

    @property
    def n_agents(self) -> int:
        return int(self.actions.shape[-1]) if self.actions.ndim > 1 else 1

    def env_steps(self) -> int:
        return len(self)

    def agent_steps(self) -> int:
        return len(self)

    def get_return(self) -> float:
        return float(np.sum(self.rewards))

    def get_duration_s(self) -> float:
        return float(self.duration_s)

    def get_infos(self, index: int = -1) -> Any:
        if index != -1:
            raise IndexError("TeamEpisode keeps the last step's info only (index -1)")
        return self.infos_last

    @property
    def success(self) -> bool:
        return bool(self.infos_last.get("success", False)) if isinstance(self.infos_last, dict) else False

    @property
    def attacked_steps(self) -> int:
        """Steps at which an attack changed at least one agent's action."""
        from marlx.runtime.columns import ATTACKED

        att = self.extras.get(ATTACKED)
        return 0 if att is None else int(np.asarray(att).reshape(len(self), -1).any(axis=1).sum())

    def initial_state_key(self) -> bytes:
        """Bytes of the first observation (all leaves): equal for equal start states."""
        return b"".join(np.ascontiguousarray(self.obs[k][0]).tobytes() for k in sorted(self.obs))
