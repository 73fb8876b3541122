"""A replay buffer of whole team episodes in preallocated arrays (PyMARL's ``EpisodeBatch`` layout).

Shared by every off-policy team algorithm (QMIX, VDN, FoX, WALL, FIM on QMIX); it stores the
:class:`~marlx.runtime.episode.TeamEpisode` s that :class:`~marlx.runtime.runner.TeamEnvRunner` returns.

Every leaf of the team observation (``obs``, ``state``, ``avail``, ``positions``, ...) is stored ONCE per step
in an array ``[capacity, L+1, ...]``: step ``t``'s next observation is entry ``t+1`` of the same array.
Actions ``[capacity, L, n]`` are stored as the smallest unsigned integer type, ``avail`` as ``bool``, other
observation leaves as ``float32`` (or ``float16`` with ``obs_dtype="float16"``); ``L`` grows to the longest
episode seen. The capacity is counted in episodes; the oldest episode is overwritten first.

:meth:`sample` returns ``batch_size`` distinct episodes cut to the longest of them, as numpy arrays:
observation leaves ``[B, T+1, ...]``, ``actions [B, T, n]`` (int64), ``rewards``/``terminateds``/``mask``
``[B, T]`` (float32), and each of ``extra_columns`` (per-step arrays from ``TeamEpisode.extras`` or
``executed_actions``) as ``[B, T, ...]``.

Checkpoints: the position, counters and sampling RNG are always saved; the contents only with
``include_data`` (QMIX's ``store_buffer_in_checkpoints``). A buffer restored without its contents is EMPTY: it
refills from fresh episodes and learning resumes once it holds ``learning_starts_episodes`` again (at most
``buffer_size`` episodes of experience are lost, never trained on as zeros).
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from ray.rllib.core.columns import Columns

from marlx.runtime.columns import AVAIL, EXECUTED_ACTIONS, MASK
from marlx.runtime.episode import TeamEpisode


def episode_arrays(episode: TeamEpisode, extra_columns: Iterable[str] = ()) -> dict[str, Any]:
    """The arrays of one finished :class:`TeamEpisode` as the replay stores them."""
    extras = {}
    for name in extra_columns:
        if name == EXECUTED_ACTIONS:
            extras[name] = episode.executed_actions
        elif name in episode.extras:
            extras[name] = episode.extras[name]
        else:
            raise KeyError(f"replay column {name!r} is not in the episode (its extras: {sorted(episode.extras)})")
    return {"obs": episode.obs, "actions": episode.actions, "rewards": episode.rewards,
            "terminated": bool(episode.terminated), "extras": extras}


class TeamEpisodeReplay:
    """Whole-episode replay of capacity ``capacity`` episodes.

    Args:
        capacity: episodes kept (PyMARL ``buffer_size`` = 5000).
        obs_dtype: dtype of float observation leaves (``"float32"`` or ``"float16"``).
        seed: seed of the sampling generator.
        extra_columns: per-step columns of the episodes to store too (``TeamEpisode.extras`` names or
            ``"executed_actions"``), returned by :meth:`sample` as ``[B, T, ...]``.
    """

    def __init__(self, capacity: int = 5000, obs_dtype: str = "float32", seed: int | None = None,
                 extra_columns: Iterable[str] = ()):
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1 episode, got {capacity}")
        self.capacity = int(capacity)
        self.obs_dtype = np.dtype(obs_dtype)
        self.rng = np.random.default_rng(seed)
        self.max_len = 0
        self.size = 0
        self.pos = 0
        self.episodes_added = 0
        self.steps_added = 0
        self.data: dict[str, np.ndarray] = {}
        self.obs_keys: list[str] = []
        self.extra_columns = list(extra_columns)

    # -- storage ------------------------------------------------------------------------------
    def _allocate(self, ep: dict, length: int) -> None:
        # the action set's size is the last axis of the availability mask
        n_actions = ep["obs"][AVAIL].shape[-1] if AVAIL in ep["obs"] else 1 << 31
        self.obs_keys = list(ep["obs"])
        data = {}
        for k, v in ep["obs"].items():
            dtype = np.bool_ if k == AVAIL else (self.obs_dtype if v.dtype.kind == "f" else v.dtype)
            data[k] = np.zeros((self.capacity, length + 1, *v.shape[1:]), dtype)
        act_dtype = np.uint8 if n_actions <= 256 else np.int32
        data[Columns.ACTIONS] = np.zeros((self.capacity, length, *ep["actions"].shape[1:]), act_dtype)
        data[Columns.REWARDS] = np.zeros((self.capacity, length), np.float32)
        data[Columns.TERMINATEDS] = np.zeros((self.capacity, length), np.bool_)
        for name, v in ep.get("extras", {}).items():
            v = np.asarray(v)
            dtype = self.obs_dtype if v.dtype.kind == "f" else v.dtype
            data[name] = np.zeros((self.capacity, length, *v.shape[1:]), dtype)
        self.data = data
        self.lengths = np.zeros(self.capacity, np.int32)
        self.max_len = length

    def _grow(self, length: int) -> None:
        """Extend the time axis to ``length`` steps (a longer episode arrived)."""
        for k, v in self.data.items():
            extra = length - self.max_len
            self.data[k] = np.concatenate([v, np.zeros((v.shape[0], extra, *v.shape[2:]), v.dtype)], axis=1)
        self.max_len = length

    def add(self, episodes: Iterable) -> int:
        """Store finished :class:`TeamEpisode` s; returns how many were stored."""
        n = 0
        for episode in episodes:
            if not episode.is_done or episode.start_t != 0:
                raise ValueError("TeamEpisodeReplay stores whole episodes only (sample_mode='episodes')")
            self.add_arrays(episode_arrays(episode, self.extra_columns))
            n += 1
        return n

    def add_arrays(self, ep: dict) -> None:
        length = len(ep["rewards"])
        if not self.data:
            self._allocate(ep, length)
        elif length > self.max_len:
            self._grow(length)
        i = self.pos
        for k in self.obs_keys:
            arr = self.data[k]
            arr[i, : length + 1] = ep["obs"][k]
            arr[i, length + 1 :] = 0
        pairs = [(Columns.ACTIONS, ep["actions"]), (Columns.REWARDS, ep["rewards"]), *ep.get("extras", {}).items()]
        for key, value in pairs:
            self.data[key][i, :length] = value
            self.data[key][i, length:] = 0
        term = self.data[Columns.TERMINATEDS]
        term[i] = False
        term[i, length - 1] = ep["terminated"]
        self.lengths[i] = length
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)
        self.episodes_added += 1
        self.steps_added += length

    # -- sampling -----------------------------------------------------------------------------
    def can_sample(self, batch_size: int) -> bool:
        return self.size >= batch_size

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        if not self.can_sample(batch_size):
            raise ValueError(f"replay holds {self.size} episodes, cannot sample {batch_size}")
        idx = np.sort(self.rng.choice(self.size, batch_size, replace=False))
        return self.gather(idx)

    def gather(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        lengths = self.lengths[idx]
        T = int(lengths.max())
        out = {k: self.data[k][idx, : T + 1] for k in self.obs_keys}
        out = {k: (v.astype(np.float32) if v.dtype != np.float32 else v) for k, v in out.items()}
        out[Columns.ACTIONS] = self.data[Columns.ACTIONS][idx, :T].astype(np.int64)
        out[Columns.REWARDS] = self.data[Columns.REWARDS][idx, :T]
        out[Columns.TERMINATEDS] = self.data[Columns.TERMINATEDS][idx, :T].astype(np.float32)
        out[MASK] = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
        for name in self.extra_columns:
            v = self.data[name][idx, :T]
            out[name] = v.astype(np.float32) if v.dtype.kind == "f" else v
        return out

    # -- size ---------------------------------------------------------------------------------
    def bytes_per_step(self) -> int:
        """Bytes of storage per env-step slot (each observation leaf once, plus action/reward/flag)."""
        return int(sum(v.itemsize * int(np.prod(v.shape[2:])) for v in self.data.values()))

    def nbytes(self) -> int:
        return int(sum(v.nbytes for v in self.data.values())) + (self.lengths.nbytes if self.data else 0)

    def __len__(self) -> int:
        return self.size

    # -- checkpointing ------------------------------------------------------------------------
    def get_state(self, include_data: bool = False) -> dict:
        state = {
            "pos": self.pos, "size": self.size, "episodes_added": self.episodes_added,
            "steps_added": self.steps_added, "rng": self.rng.bit_generator.state,
        }
        if include_data and self.data:
            state.update(data=self.data, lengths=self.lengths, max_len=self.max_len, obs_keys=self.obs_keys)
        return state

    def set_state(self, state: dict) -> None:
        self.pos, self.episodes_added = state["pos"], state["episodes_added"]
        self.steps_added = state.get("steps_added", 0)
        self.rng.bit_generator.state = state["rng"]
        if "data" in state:
            self.data, self.lengths = state["data"], state["lengths"]
            self.max_len, self.obs_keys = state["max_len"], state["obs_keys"]
            self.size = state["size"]
        else:  # contents not checkpointed: the buffer is empty and refills from fresh episodes
            self.size = 0
            self.pos = 0


class PrioritisedTeamEpisodeReplay(TeamEpisodeReplay):
    """Episode replay sampled in proportion to ``priority ** alpha`` (FoX's GRF run, ``fox_qmix_prior``).

    As the released ``ReplayBuffer_Prior`` (``FOX_GRF/config/algs/FOX_QMIX.yaml``: ``alpha: 0.3``): a new episode
    gets priority 1, a trained episode the mean squared TD error of its valid steps (:meth:`update_priorities`),
    and there is no importance-sampling correction. marlx draws a batch's episodes without replacement (distinct
    episodes, like the uniform replay); a priority is kept >= ``min_priority`` so that every episode stays drawable.

    ``priority_source``: an optional callable returning the priorities of the previous batch (or ``None``); it
    is called before each draw, so that the learner's TD errors of one update set the priorities of the next.
    """

    def __init__(self, capacity: int = 5000, obs_dtype: str = "float32", seed: int | None = None,
                 extra_columns: Iterable[str] = (), alpha: float = 0.3, min_priority: float = 1e-6):
        super().__init__(capacity, obs_dtype, seed, extra_columns)
        self.alpha = float(alpha)
        self.min_priority = float(min_priority)
        self.priorities = np.ones(self.capacity, np.float64)
        self.last_indices: np.ndarray | None = None
        self.priority_source = None
        self._overwritten: set[int] = set()

    def add_arrays(self, ep: dict) -> None:
        self.priorities[self.pos] = 1.0
        self._overwritten.add(self.pos)  # a new episode here: the previous batch's TD error is not its own
        super().add_arrays(ep)

    def probabilities(self) -> np.ndarray:
        p = np.maximum(self.priorities[: self.size], self.min_priority) ** self.alpha
        return p / p.sum()

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        if not self.can_sample(batch_size):
            raise ValueError(f"replay holds {self.size} episodes, cannot sample {batch_size}")
        if self.priority_source is not None and self.last_indices is not None:
            values = self.priority_source()
            if values is not None:
                values = np.asarray(values, np.float64).reshape(-1)
                if len(values) != len(self.last_indices):
                    raise ValueError(f"{len(values)} priorities for {len(self.last_indices)} sampled episodes")
                keep = np.array([int(i) not in self._overwritten for i in self.last_indices], bool)
                self.update_priorities(self.last_indices[keep], values[keep])
        idx = np.sort(self.rng.choice(self.size, batch_size, replace=False, p=self.probabilities()))
        self.last_indices = idx
        self._overwritten = set()
        return self.gather(idx)

    def update_priorities(self, indices: np.ndarray, values: np.ndarray) -> None:
        values = np.asarray(values, np.float64).reshape(-1)
        if len(values) != len(indices):
            raise ValueError(f"{len(values)} priorities for {len(indices)} sampled episodes")
        self.priorities[np.asarray(indices)] = values

    def get_state(self, include_data: bool = False) -> dict:
        return super().get_state(include_data) | {"priorities": self.priorities.copy()}

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        if "priorities" in state and "data" in state:
            self.priorities = np.asarray(state["priorities"], np.float64)
        else:
            self.priorities = np.ones(self.capacity, np.float64)
        self.last_indices = None
