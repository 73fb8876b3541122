"""Push-Box: the Push-2-Box toy of the FIM paper as a numpy-only team env, in two modes.

``mode="strict"`` (the default, marlx's harder variant) is described first; ``mode="paper_like"`` follows.

Agents move on a ``size x size`` grid (x to the right, y downwards, origin top-left). Each box is heavy:
it moves one cell only when at least ``pushers_needed`` (default 2) agents push it in the same direction at
the same step. An agent pushes a box in direction d when it stands next to the box and moves in
direction d into the box's cell. A pushed box that moves takes its pushers one cell along; a push that
fails (too few pushers, or the box would leave the grid or hit another box) leaves pushers in place.
The goal edge is the top row (y = 0): a box that reaches it is delivered, gives the team +1 and is removed
from the grid. The episode terminates with success when every box is delivered; the time limit
(``episode_limit``) truncates it. There is no other reward: the task is sparse.

Agents may share cells. Moves off the grid are unavailable (masked in ``avail``; if taken anyway they
leave the agent in place). Boxes start in row ``box_start_row`` at random columns away from the side edges.

``mode="paper_like"`` approximates the paper's Figure 1 (its exact mechanics are not published; spec
shared/specs/fim.md section 4): 2 boxes by default; a push by fewer than ``pushers_needed`` agents still moves
the box with probability ``p_single`` (default 0.25) per push, so one agent is slow and two are fast; the
episode terminates with success when the first box reaches the wall (``require_all_boxes=True``: all boxes),
+1 per box at the wall. Its global state has no delivered flags (a box at the wall has y = 0, which only a
delivered box can have): ``agent{i}_x, agent{i}_y`` then ``box{j}_x, box{j}_y``.

Actions: 0 stay, 1 up (y-1), 2 down (y+1), 3 left (x-1), 4 right (x+1).

Observation of agent i (fully observed, all coordinates divided by ``size - 1``):
own (x, y); for each box (dx, dy, delivered); for each other agent (dx, dy).

Global state, in the order of ``state_names``:
``agent{i}_x, agent{i}_y`` for every agent, then ``box{j}_x, box{j}_y, box{j}_delivered`` for every box
(coordinates divided by ``size - 1``; a delivered box keeps its last coordinates).
"""

from __future__ import annotations

import numpy as np

from marlx.envs.team import TeamEnv

STAY, UP, DOWN, LEFT, RIGHT = range(5)
MOVES = np.array([[0, 0], [0, -1], [0, 1], [-1, 0], [1, 0]], np.int64)  # (dx, dy)


class PushBoxEnv(TeamEnv):
    """Heavy boxes that only move when agents push them together; +1 per box at the goal edge.

    Args:
        size: grid side length.
        n_agents: number of agents.
        n_boxes: number of boxes.
        pushers_needed: agents that must push in the same direction for a box to move.
        box_start_row: the boxes' start row, i.e. the number of joint pushes up to the goal edge;
            ``None`` puts them in the second row from the bottom (the bottom row is excluded: nobody
            could push a box up from below it). More rows mean more joint pushes and a sparser task.
        episode_limit: time limit (truncation).
        random_start: agents start at random free cells (else in the bottom corners).
        mode: "strict" (joint pushes only, 1 box, all boxes to deliver) or "paper_like" (see the module doc).
        p_single: probability that a push by fewer than ``pushers_needed`` agents moves the box
            (default 0 in strict mode, 0.25 in paper-like mode, a marlx guess at "slower").
        require_all_boxes: terminate only when every box is delivered (default: True in strict mode, False in
            paper-like mode, where the first box at the wall ends the episode).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self,
        size: int = 6,
        n_agents: int = 2,
        n_boxes: int | None = None,
        pushers_needed: int = 2,
        box_start_row: int | None = None,
        episode_limit: int = 50,
        random_start: bool = True,
        mode: str = "strict",
        p_single: float | None = None,
        require_all_boxes: bool | None = None,
    ):
        if mode not in ("strict", "paper_like"):
            raise ValueError(f"push_box mode must be 'strict' or 'paper_like', got {mode!r}")
        paper = mode == "paper_like"
        n_boxes = (2 if paper else 1) if n_boxes is None else n_boxes
        p_single = (0.25 if paper else 0.0) if p_single is None else float(p_single)
        if not 0.0 <= p_single <= 1.0:
            raise ValueError(f"p_single must be in [0, 1], got {p_single}")
        if size < 3:
            raise ValueError(f"push_box needs size >= 3, got {size}")
        if n_boxes > size - 2:
            raise ValueError(f"push_box fits at most size-2 = {size - 2} boxes, got {n_boxes}")
        if pushers_needed > n_agents:
            raise ValueError(f"pushers_needed={pushers_needed} exceeds n_agents={n_agents}: unsolvable")
        self.size = size
        self.n_agents = n_agents
        self.n_boxes = n_boxes
        self.pushers_needed = pushers_needed
        self.box_start_row = size - 2 if box_start_row is None else int(box_start_row)
        if not 1 <= self.box_start_row <= size - 2:
            raise ValueError(f"box_start_row must be in [1, {size - 2}] (size {size}), got {box_start_row}")
        self.episode_limit = episode_limit
        self.random_start = random_start
        self.mode = mode
        self.p_single = p_single
        self.require_all_boxes = (not paper) if require_all_boxes is None else bool(require_all_boxes)
        self._state_flags = not paper  # strict mode's state carries box{j}_delivered
        self.n_actions = 5
        self.action_names = ["stay", "up", "down", "left", "right"]
        self.obs_dim = 2 + 3 * n_boxes + 2 * (n_agents - 1)
        self.state_dim = 2 * n_agents + (3 if self._state_flags else 2) * n_boxes
        self.position_dim = 2
        self.state_names = [f"agent{i}_{c}" for i in range(n_agents) for c in "xy"] + [
            f"box{j}_{c}" for j in range(n_boxes) for c in (("x", "y", "delivered") if self._state_flags else ("x", "y"))
        ]
        self._scale = 1.0 / (size - 1)
        self.agents = np.zeros((n_agents, 2), np.int64)
        self.boxes = np.zeros((n_boxes, 2), np.int64)
        self.delivered = np.zeros(n_boxes, bool)
        self._others = [np.array([j for j in range(n_agents) if j != i]) for i in range(n_agents)]
        super().__init__()

    def _reset(self, rng, options):
        xs = rng.choice(np.arange(1, self.size - 1), self.n_boxes, replace=False)
        self.boxes[:, 0] = xs
        self.boxes[:, 1] = self.box_start_row
        self.delivered[:] = False
        box_cells = {tuple(b) for b in self.boxes}
        if self.random_start:
            free = [(x, y) for x in range(self.size) for y in range(1, self.size) if (x, y) not in box_cells]
            idx = rng.choice(len(free), self.n_agents, replace=True)
            self.agents[:] = np.array([free[k] for k in idx])
        else:
            for i in range(self.n_agents):
                self.agents[i] = ((self.size - 1) * (i % 2), self.size - 1)
        return {"delivered": 0}

    def _step(self, actions):
        moves = MOVES[actions]
        target = self.agents + moves
        reward = 0.0
        moved_box = np.zeros(self.n_agents, bool)
        for j in range(self.n_boxes):
            if self.delivered[j]:
                continue
            # pushers: agents whose move leads into the box's cell (so they stand next to it)
            pushing = np.all(target == self.boxes[j], axis=1) & (actions != STAY)
            if not pushing.any():
                continue
            d = self._push_direction(pushing, actions)
            if d is None:
                continue
            group = pushing & (actions == d)
            new = self.boxes[j] + MOVES[d]
            if not self._box_can_enter(new, j):
                continue
            self.boxes[j] = new
            moved_box |= group
            if new[1] == 0:
                self.delivered[j] = True
                reward += 1.0
        # agents: a move is blocked by the grid edge and by an undelivered box, unless the agent
        # was one of the successful pushers (it then follows the box into its old cell)
        inside = np.all((target >= 0) & (target < self.size), axis=1)
        blocked = ~inside
        for j in range(self.n_boxes):
            if not self.delivered[j]:
                blocked |= np.all(target == self.boxes[j], axis=1)
        go = moved_box | ~blocked
        self.agents[go] = target[go]
        terminated = bool(self.delivered.all() if self.require_all_boxes else self.delivered.any())
        return reward, terminated, {"success": terminated, "delivered": int(self.delivered.sum())}

    def _push_direction(self, pushing, actions) -> int | None:
        """The direction a box is pushed this step, or None: the first direction with ``pushers_needed``
        pushers; else (``p_single > 0``) the one direction of a weaker push, with probability ``p_single``
        (weaker pushes from several sides cancel)."""
        groups = [(d, int((pushing & (actions == d)).sum())) for d in (UP, DOWN, LEFT, RIGHT)]
        for d, size in groups:
            if size >= self.pushers_needed:
                return d
        weak = [d for d, size in groups if size > 0]
        if self.p_single > 0 and len(weak) == 1 and self.np_random.random() < self.p_single:
            return weak[0]
        return None

    def _box_can_enter(self, cell, j) -> bool:
        if not (0 <= cell[0] < self.size and 0 <= cell[1] < self.size):
            return False
        for k in range(self.n_boxes):
            if k != j and not self.delivered[k] and np.array_equal(self.boxes[k], cell):
                return False
        return True

    def get_obs(self):
        s = self._scale
        obs = np.empty((self.n_agents, self.obs_dim), np.float32)
        obs[:, 0:2] = self.agents * s
        rel = (self.boxes[None, :, :] - self.agents[:, None, :]) * s  # (n, boxes, 2)
        box_part = np.concatenate(
            [rel, np.broadcast_to(self.delivered[None, :, None], (self.n_agents, self.n_boxes, 1))], axis=2
        )
        obs[:, 2 : 2 + 3 * self.n_boxes] = box_part.reshape(self.n_agents, -1)
        if self.n_agents > 1:
            others = self.agents[np.stack(self._others)] - self.agents[:, None, :]
            obs[:, 2 + 3 * self.n_boxes :] = others.reshape(self.n_agents, -1) * s
        return obs

    def get_state(self):
        s = self._scale
        boxes = np.concatenate([self.boxes * s, self.delivered[:, None]], axis=1) if self._state_flags else (
            self.boxes * s)
        return np.concatenate([(self.agents * s).reshape(-1), boxes.reshape(-1)]).astype(np.float32)

    def get_avail_actions(self):
        target = self.agents[:, None, :] + MOVES[None, :, :]
        inside = np.all((target >= 0) & (target < self.size), axis=2)
        return inside.astype(np.float32)

    def get_positions(self):
        return self.agents.astype(np.float32)

    # -- rendering -------------------------------------------------------------------------------
    def render_frame(self, attacked=None):
        """The current grid as an RGB array ``(H, W, 3) uint8``; ``attacked`` [n_agents] rings those agents red."""
        from marlx.render.grid import push_box_frame

        return push_box_frame(self, attacked)

    def render(self):
        return self.render_frame()
