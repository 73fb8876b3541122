"""Predator-Prey with joint capture: a numpy-only sparse-reward team env.

Predators (the agents) and prey move on a ``size x size`` grid (x to the right, y downwards). After the
predators move, every prey with at least ``capture_needed`` (default 2) predators on the four cells next to it
is captured at once: the team gets ``capture_reward`` per prey and the prey leaves the grid. A single
predator next to a prey achieves nothing. Then each remaining prey moves to a random free neighbouring
cell (or stays) with probability ``prey_move_prob``. The episode terminates with success when every prey
is captured; the time limit truncates it. Optional ``step_penalty`` is added at every step (default 0:
the reward is purely sparse).

Predators may share cells but cannot enter a prey's cell (that move leaves them in place); moves off the
grid are unavailable. Actions: 0 stay, 1 up, 2 down, 3 left, 4 right.

Partial observability: predator i sees the ``(2r+1) x (2r+1)`` window around itself (``r = obs_radius``)
in three channels (other predators, prey, outside the grid), plus its own (x, y) divided by ``size - 1``.

Global state, in the order of ``state_names``: ``pred{i}_x, pred{i}_y`` for every predator, then
``prey{j}_x, prey{j}_y, prey{j}_alive`` for every prey (coordinates divided by ``size - 1``).
"""

from __future__ import annotations

import numpy as np

from marlx.envs.builtin.push_box import MOVES
from marlx.envs.team import TeamEnv


class PredatorPreyEnv(TeamEnv):
    """Predators that must corner prey together; sparse capture reward.

    Args:
        size: grid side length.
        n_predators: number of agents.
        n_prey: number of prey.
        obs_radius: half-width of each predator's view window.
        capture_needed: predators that must be next to a prey at once to capture it.
        capture_reward: team reward per captured prey.
        step_penalty: reward added at every step (e.g. -0.01); 0 keeps the task sparse.
        prey_move_prob: probability that a prey tries to move at a step.
        episode_limit: time limit (truncation).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self,
        size: int = 8,
        n_predators: int = 3,
        n_prey: int = 3,
        obs_radius: int = 2,
        capture_needed: int = 2,
        capture_reward: float = 1.0,
        step_penalty: float = 0.0,
        prey_move_prob: float = 1.0,
        episode_limit: int = 50,
    ):
        if size < 2:
            raise ValueError(f"predator_prey needs size >= 2, got {size}")
        if capture_needed > n_predators:
            raise ValueError(f"capture_needed={capture_needed} exceeds n_predators={n_predators}: unsolvable")
        if capture_needed > 4:
            raise ValueError("at most 4 predators fit next to a prey: capture_needed must be <= 4")
        if n_prey + 1 > size * size:
            raise ValueError("grid too small for that many prey")
        self.size = size
        self.n_agents = n_predators
        self.n_prey = n_prey
        self.obs_radius = obs_radius
        self.capture_needed = capture_needed
        self.capture_reward = capture_reward
        self.step_penalty = step_penalty
        self.prey_move_prob = prey_move_prob
        self.episode_limit = episode_limit
        self.n_actions = 5
        self.action_names = ["stay", "up", "down", "left", "right"]
        w = 2 * obs_radius + 1
        self.obs_dim = 3 * w * w + 2
        self.state_dim = 2 * n_predators + 3 * n_prey
        self.position_dim = 2
        self.state_names = [f"pred{i}_{c}" for i in range(n_predators) for c in "xy"] + [
            f"prey{j}_{c}" for j in range(n_prey) for c in ("x", "y", "alive")
        ]
        self._scale = 1.0 / (size - 1)
        self.preds = np.zeros((n_predators, 2), np.int64)
        self.prey = np.zeros((n_prey, 2), np.int64)
        self.alive = np.ones(n_prey, bool)
        self._rng = np.random.default_rng()
        p = size + 2 * obs_radius
        self._grid = np.zeros((3, p, p), np.float32)
        super().__init__()

    def _reset(self, rng, options):
        self._rng = rng
        cells = rng.choice(self.size * self.size, self.n_agents + self.n_prey, replace=False)
        xy = np.stack([cells % self.size, cells // self.size], axis=1)
        self.preds[:] = xy[: self.n_agents]
        self.prey[:] = xy[self.n_agents :]
        self.alive[:] = True
        return {"captured": 0}

    def _step(self, actions):
        size = self.size
        prey_at = np.zeros((size, size), bool)  # [y, x]
        live = np.flatnonzero(self.alive)
        prey_at[self.prey[live, 1], self.prey[live, 0]] = True
        target = self.preds + MOVES[actions]
        inside = np.all((target >= 0) & (target < size), axis=1)
        ok = inside.copy()
        ok[inside] = ~prey_at[target[inside, 1], target[inside, 0]]
        self.preds[ok] = target[ok]
        reward = self.step_penalty
        if len(live):
            # predators on the four cells next to each live prey, all prey at once
            dist = np.abs(self.preds[:, None, :] - self.prey[None, live, :]).sum(axis=2)
            caught = live[(dist == 1).sum(axis=0) >= self.capture_needed]
            if len(caught):
                self.alive[caught] = False
                prey_at[self.prey[caught, 1], self.prey[caught, 0]] = False
                reward += self.capture_reward * len(caught)
        rng = self._rng
        pred_at = np.zeros((size, size), bool)
        pred_at[self.preds[:, 1], self.preds[:, 0]] = True
        for j in np.flatnonzero(self.alive):
            if rng.random() >= self.prey_move_prob:
                continue
            x, y = int(self.prey[j, 0]), int(self.prey[j, 1])
            options = [
                (nx, ny)
                for nx, ny in ((x, y - 1), (x, y + 1), (x - 1, y), (x + 1, y))
                if 0 <= nx < size and 0 <= ny < size and not pred_at[ny, nx] and not prey_at[ny, nx]
            ]
            k = int(rng.integers(len(options) + 1))  # the extra option is staying put
            if k < len(options):
                prey_at[y, x] = False
                self.prey[j] = options[k]
                prey_at[options[k][1], options[k][0]] = True
        terminated = not self.alive.any()
        captured = int(self.n_prey - self.alive.sum())
        return reward, terminated, {"success": terminated, "captured": captured}

    def get_obs(self):
        r, s = self.obs_radius, self.size
        g = self._grid
        g.fill(0.0)
        g[2] = 1.0
        g[2, r : r + s, r : r + s] = 0.0
        np.add.at(g[0], (self.preds[:, 1] + r, self.preds[:, 0] + r), 1.0)
        live = self.prey[self.alive]
        g[1, live[:, 1] + r, live[:, 0] + r] = 1.0
        w = 2 * r + 1
        obs = np.empty((self.n_agents, self.obs_dim), np.float32)
        for i, (x, y) in enumerate(self.preds):
            view = g[:, y : y + w, x : x + w].copy()
            view[0, r, r] -= 1.0  # the predator itself is not an "other predator"
            obs[i, :-2] = view.reshape(-1)
        obs[:, -2:] = self.preds * self._scale
        return obs

    def get_state(self):
        s = self._scale
        prey = np.concatenate([self.prey * s, self.alive[:, None]], axis=1)
        return np.concatenate([(self.preds * s).reshape(-1), prey.reshape(-1)]).astype(np.float32)

    def get_avail_actions(self):
        target = self.preds[:, None, :] + MOVES[None, :, :]
        return np.all((target >= 0) & (target < self.size), axis=2).astype(np.float32)

    def get_positions(self):
        return self.preds.astype(np.float32)

    # -- rendering -------------------------------------------------------------------------------
    def render_frame(self, attacked=None):
        """The current grid as an RGB array ``(H, W, 3) uint8``; ``attacked`` [n_agents] rings those agents red."""
        from marlx.render.grid import predator_prey_frame

        return predator_prey_frame(self, attacked)

    def render(self):
        return self.render_frame()
