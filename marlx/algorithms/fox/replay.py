"""QMIX's episode replay with FoX's formation visit counter: counts live where the training data is.

Every step of every *training* episode that enters the replay is counted once (evaluation episodes never do).
Formation keys are computed from the stored arrays (so a float16 replay counts and looks up the same keys). A
sampled batch carries, besides QMIX's arrays: ``fox_keys [B, T+1, 4n]``, ``fox_far``/``fox_near``
``[B, T+1, n]`` (the index sets) and ``fox_count_bonus [B, T]`` (the count bonus of the next formation
F_{t+1}, from the counts at sampling time). The counter is saved with the replay's state in checkpoints.
"""

from __future__ import annotations

import numpy as np

from marlx.algorithms.fox.formation import FormationCounter, FormationKeyer, count_bonus
from marlx.runtime.columns import MASK
from marlx.runtime.replay import TeamEpisodeReplay

FOX_KEYS, FOX_FAR, FOX_NEAR, FOX_COUNT_BONUS = "fox_keys", "fox_far", "fox_near", "fox_count_bonus"


class FormationCountingReplay(TeamEpisodeReplay):
    """Args beyond :class:`TeamEpisodeReplay`: ``source`` ("obs" or "positions"), ``round_decimals``,
    ``hash_seed``, ``beta1`` and ``normalisation`` ("grf" or "smac") of the count bonus."""

    def __init__(self, capacity=5000, obs_dtype="float32", seed=None, *, source="obs", round_decimals=3,
                 hash_seed=0, beta1=0.01, normalisation="grf"):
        super().__init__(capacity, obs_dtype, seed)
        if source not in ("obs", "positions"):
            raise ValueError(f"formation source must be 'obs' or 'positions', got {source!r}")
        self.source = source
        self.round_decimals = round_decimals
        self.hash_seed = hash_seed
        self.beta1 = beta1
        self.normalisation = normalisation
        self.counter = FormationCounter()
        self.keyer: FormationKeyer | None = None

    def _vectors(self, arrays: dict) -> np.ndarray:
        if self.source not in arrays:
            raise ValueError(
                "formation_source='positions' needs an env with agent positions (observation key 'positions')"
            )
        return arrays[self.source]

    def _keys(self, vectors: np.ndarray):
        if self.keyer is None:
            self.keyer = FormationKeyer(vectors.shape[-1], self.round_decimals, self.hash_seed)
        return self.keyer.keys_and_index_sets(vectors)

    def add_arrays(self, ep: dict) -> None:
        i = self.pos
        super().add_arrays(ep)
        length = int(self.lengths[i])
        keys, _, _ = self._keys(self._vectors(self.data)[i, : length + 1])
        self.counter.update(keys)

    def gather(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        out = super().gather(idx)
        keys, far, near = self._keys(self._vectors(out))
        mask = out[MASK]
        counts = self.counter.lookup(keys[:, 1:])
        out[FOX_COUNT_BONUS] = count_bonus(counts, self.beta1, self.normalisation, mask).astype(np.float32) * mask
        out[FOX_KEYS] = keys.astype(np.float32)
        out[FOX_FAR], out[FOX_NEAR] = far.astype(np.int64), near.astype(np.int64)
        return out

    def get_state(self, include_data: bool = False) -> dict:
        return {**super().get_state(include_data), "formation_counter": self.counter.get_state()}

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        if "formation_counter" in state:
            self.counter.set_state(state["formation_counter"])
