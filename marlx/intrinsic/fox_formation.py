"""FoX formation keys and the formation visit counter (Jo et al., AAAI 2024; spec: shared/specs/fox.md §1).

A *formation* abstracts a team state by how the agents stand relative to each other. For each agent i, with
``d_ij = ||o_i - o_j||_2`` between observation vectors rounded to ``round_decimals``:

* ``far(i) = argmax_j d_ij`` and ``near(i) = argmin_{j != i} d_ij`` (ties: the lowest index, as numpy does);
* agent i contributes ``(d_{i,far}, d_{i,near}, hash(o_i - o_far), hash(o_i - o_near))``, where
  ``hash(v)`` is the 9-bit sign code of ``A v`` for a fixed random matrix ``A`` (9 x dim, Uniform[0, 1),
  drawn once from ``seed``): bit k is 1 when ``(A v)_k > 0``, read as an integer in [0, 511] with projection 0 as
  the most significant bit (``bit_order="msb"``, default: the released runner builds the binary string
  ``"".join(bits)`` and reads it base 2, ``FOX_GRF/runners/episode_runner.py``) or as the least significant
  bit (``"lsb"``, marlx's earlier order). Both orders give the same counts (a bijection); they differ in the
  integers the VAE's decoder regresses;
* the formation key ``F`` is all agents' 4-tuples in agent order (length 4n).

The index set of agent i is ``{i, far(i), near(i)}``; the VAE uses it. Keys are computed in float64 so that
the rounding is reproducible.
"""

from __future__ import annotations

import numpy as np

HASH_BITS = 9


class FormationKeyer:
    """Computes formation keys (and far/near indices) from per-agent vectors.

    Args:
        dim: length of the vectors (observation size, or position size with ``source="positions"``).
        round_decimals: decimals kept of each distance (paper: 3 for GRF, 1 in the SMAC example).
        seed: seed of the hash matrix ``A``.
        bit_order: ``"msb"`` (released: projection 0 is the most significant bit) or ``"lsb"``.
    """

    def __init__(self, dim: int, round_decimals: int = 3, seed: int = 0, bit_order: str = "msb"):
        if bit_order not in ("msb", "lsb"):
            raise ValueError(f"bit_order must be 'msb' or 'lsb', got {bit_order!r}")
        self.dim = dim
        self.round_decimals = round_decimals
        self.hash_matrix = np.random.default_rng(seed).random((HASH_BITS, dim))
        bits = np.arange(HASH_BITS)
        self._bit_values = (1 << (bits if bit_order == "lsb" else HASH_BITS - 1 - bits)).astype(np.int64)

    def sign_hash(self, v: np.ndarray) -> np.ndarray:
        """(..., dim) -> (...,) integer sign codes of ``A v``."""
        proj = np.asarray(v, np.float64) @ self.hash_matrix.T
        return ((proj > 0).astype(np.int64) * self._bit_values).sum(-1)

    def far_near(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(..., n, dim) -> rounded distances (..., n, n), far (..., n), near (..., n)."""
        x = np.asarray(x, np.float64)
        diff = x[..., :, None, :] - x[..., None, :, :]
        dist = np.round(np.sqrt((diff**2).sum(-1)), self.round_decimals)
        n = x.shape[-2]
        far = dist.argmax(-1)
        masked = dist + np.where(np.eye(n, dtype=bool), np.inf, 0.0)
        near = masked.argmin(-1) if n > 1 else np.zeros_like(far)
        return dist, far, near

    def keys(self, x: np.ndarray) -> np.ndarray:
        """(..., n, dim) -> formation keys (..., 4n) float64; also see :meth:`keys_and_index_sets`."""
        return self.keys_and_index_sets(x)[0]

    def keys_and_index_sets(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(..., n, dim) -> keys (..., 4n), far (..., n), near (..., n)."""
        x = np.asarray(x, np.float64)
        dist, far, near = self.far_near(x)
        d_far = np.take_along_axis(dist, far[..., None], -1)[..., 0]
        d_near = np.take_along_axis(dist, near[..., None], -1)[..., 0]
        o_far = np.take_along_axis(x, far[..., None].repeat(x.shape[-1], -1), -2)
        o_near = np.take_along_axis(x, near[..., None].repeat(x.shape[-1], -1), -2)
        h_far = self.sign_hash(x - o_far)
        h_near = self.sign_hash(x - o_near)
        per_agent = np.stack([d_far, d_near, h_far.astype(np.float64), h_near.astype(np.float64)], -1)
        return per_agent.reshape(*per_agent.shape[:-2], -1), far, near


class FormationCounter:
    """Visit counts N(F) of formation keys; updated from training data only.

    Keys are stored as their float64 bytes, so counting is exact. The state is a plain dict, saved with
    checkpoints (see :meth:`get_state`).
    """

    def __init__(self) -> None:
        self.counts: dict[bytes, int] = {}
        self.total = 0

    @staticmethod
    def _key(row: np.ndarray) -> bytes:
        return np.ascontiguousarray(row, np.float64).tobytes()

    def update(self, keys: np.ndarray) -> None:
        """Count every key of ``keys`` (..., 4n) once."""
        flat = np.asarray(keys, np.float64).reshape(-1, np.shape(keys)[-1])
        rows, counts = np.unique(flat, axis=0, return_counts=True)
        for row, c in zip(rows, counts):
            k = self._key(row)
            self.counts[k] = self.counts.get(k, 0) + int(c)
        self.total += len(flat)

    def update_sequential(self, keys: np.ndarray) -> np.ndarray:
        """Count the keys (..., 4n) one after the other; -> (...,) each key's count right after its own visit.

        This is the ``visit`` the released runner stores with each step when it is collected (F1).
        """
        keys = np.asarray(keys, np.float64)
        flat = keys.reshape(-1, keys.shape[-1])
        out = np.empty(len(flat), np.int64)
        for i, row in enumerate(flat):
            k = self._key(row)
            out[i] = self.counts[k] = self.counts.get(k, 0) + 1
        self.total += len(flat)
        return out.reshape(keys.shape[:-1])

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """N(F) for each key of ``keys`` (..., 4n) -> (...,) int64 (0 for unseen formations)."""
        keys = np.asarray(keys, np.float64)
        flat = keys.reshape(-1, keys.shape[-1])
        out = np.fromiter((self.counts.get(self._key(r), 0) for r in flat), np.int64, len(flat))
        return out.reshape(keys.shape[:-1])

    def __len__(self) -> int:
        return len(self.counts)

    def get_state(self) -> dict:
        return {"counts": dict(self.counts), "total": self.total}

    def set_state(self, state: dict) -> None:
        self.counts = dict(state["counts"])
        self.total = int(state["total"])


def count_bonus(counts: np.ndarray, beta1: float, normalisation: str = "grf", mask: np.ndarray | None = None) -> np.ndarray:
    """FoX's count bonus from visit counts of the next formation (spec §4).

    ``"grf"``: ``beta1 * N^(-1/2)``; ``"smac"``: ``beta1 * (N^(-1/2) - max over the batch of N^(-1/2))``
    (the max over valid steps when ``mask`` is given). A formation that was never counted (N = 0: the terminal
    formation when it is not counted) gives ``N^(-1/2) = 0``, as the released ``where(visit != 0)``.
    """
    counts = np.asarray(counts, np.float64)
    inv = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1.0)), 0.0)
    if normalisation == "grf":
        return beta1 * inv
    if normalisation == "smac":
        valid = inv if mask is None else inv[np.asarray(mask, bool)]
        return beta1 * (inv - (valid.max() if valid.size else 0.0))
    raise ValueError(f"normalisation must be 'grf' or 'smac', got {normalisation!r}")
