"""When a Wolfpack attack starts: the window rule and the softmax draw (``episode_runner.py:207-252``).

The Q-difference transformer predicts ``ΔQ[k]`` for an initial attack ``k = 0..L-1`` steps from now (max over
agents). Only starts inside the current period of ``L`` steps count: at step ``t > 0`` the last
``min(t - last_initial_step, L - 1)`` entries are replaced by a very low value, so once ``L - 1`` (19) steps have
passed since the last initial attack only ``k = 0`` is left and the attack is forced. ``k`` is drawn from
``softmax(ΔQ / T)`` and the attack starts now iff ``k == 0``.
"""

from __future__ import annotations

import numpy as np

#: the released padding value for cut entries (``-9999999``)
CUT_VALUE = -9999999.0


def window_cut(dq: np.ndarray, t: int, last_initial_step: int) -> np.ndarray:
    """Apply the window rule to one env's ``ΔQ [L]``."""
    dq = np.asarray(dq, dtype=np.float64).copy()
    length = dq.shape[-1]
    if t > 0:
        drop = min(t - last_initial_step, length - 1)
        if drop > 0:
            dq[length - drop:] = CUT_VALUE
    return dq


def start_probabilities(dq: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(ΔQ / T)`` (numerically stable)."""
    z = np.asarray(dq, dtype=np.float64) / temperature
    z = z - z.max()
    p = np.exp(z)
    return p / p.sum()


def draw_start(dq: np.ndarray, t: int, last_initial_step: int, temperature: float, rng: np.random.Generator) -> bool:
    """Whether an initial attack starts now (``k == 0`` drawn)."""
    p = start_probabilities(window_cut(dq, t, last_initial_step), temperature)
    return int(rng.choice(p.shape[0], p=p)) == 0


def history_window(states: list, t: int, length: int, faithful_time: bool) -> tuple[np.ndarray, np.ndarray]:
    """The planner's input at step ``t`` from the episode's states ``s_0..s_t``: ``(timesteps [L], states [L, S])``.

    Left zero-padded while ``t < L`` with time steps ``0..t`` right-aligned. From ``t >= L`` on, the states are
    ``s_{t-L+1..t}`` with time steps ``t-L+1..t`` (how the learner trains it), or ``t..t+L-1`` with
    ``faithful_time`` (the released runner's quirk, spec §0 #11).
    """
    s = np.asarray(states[max(0, t - length + 1): t + 1], dtype=np.float32)
    out = np.zeros((length, s.shape[-1]), dtype=np.float32)
    times = np.zeros(length, dtype=np.int64)
    out[length - s.shape[0]:] = s
    if t < length:
        times[length - (t + 1):] = np.arange(t + 1)
    elif faithful_time:
        times[:] = np.arange(t, t + length)
    else:
        times[:] = np.arange(t - length + 1, t + 1)
    return times, out
