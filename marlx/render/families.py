"""One RGB frame of any marlx team env, whatever its family.

* built-ins (push_box, predator_prey): the env's own ``render_frame(attacked)`` (marlx's grid renderer);
* MPE and other PettingZoo envs: the wrapped env's ``render()`` in ``render_mode="rgb_array"``
  (:func:`render_env_config` asks for that mode when the env is made);
* SMAX: JaxMARL's SMAX picture (what its ``SMAXVisualizer`` animates), drawn from the state with Pillow;
* LBF and RWARE (any wrapper that holds their gymnasium env): their own renderers need a display (pyglet), so
  marlx draws the grid from the env's state;
* GRF: a 2D pitch from gfootball's raw observation (its own renderer needs an OpenGL display);
* anything else: :class:`CannotRender`, one line naming the env.

An ``attacked`` mask ``[n_agents]`` (the WALL issue's attacks) is drawn on the agents where the renderer knows
where they are; :func:`marlx.render.draw.add_caption` marks the step for every family.
"""

from __future__ import annotations

import numpy as np

from marlx.errors import MarlxError


class CannotRender(MarlxError):
    """An env family that marlx cannot draw (yet)."""


def render_env_config(env_name: str) -> dict:
    """Extra env config that an env needs to render (MPE's ``render_mode``), merged into the env config."""
    family = env_name.split("/", 1)[0]
    if family == "mpe":
        return {"render_mode": "rgb_array"}
    return {}


def _inner_gym_env(env, depth: int = 4):
    """The innermost gymnasium/PettingZoo env a marlx adapter wraps (attribute ``env``, ``_env`` or ``gym_env``)."""
    for _ in range(depth):
        inner = next((getattr(env, a) for a in ("env", "_env", "gym_env") if getattr(env, a, None) is not None), None)
        if inner is None:
            break
        env = inner
    return getattr(env, "unwrapped", env)


def frame(env, attacked=None, actions=None) -> np.ndarray:
    """The current frame of a team env, ``(H, W, 3) uint8``; raises :class:`CannotRender`.

    ``actions``: the joint action of the step that led here (SMAX draws the shots it fired).
    """
    if callable(getattr(env, "render_frame", None)):  # envs that draw themselves (the built-ins)
        return np.asarray(env.render_frame(attacked), np.uint8)
    out = _family_frame(env, attacked, actions)
    if out is None:
        raise CannotRender(
            f"{type(env).__name__} cannot render: marlx draws the built-ins, MPE/PettingZoo (rgb_array), SMAX, "
            "LBF, RWARE and GRF, not this env"
        )
    return out


def _family_frame(env, attacked, actions):
    from marlx.envs.pettingzoo import PettingZooTeamEnv
    from marlx.envs.smax import SMAXTeamEnv

    if isinstance(env, SMAXTeamEnv):
        return smax_frame(env, attacked, actions)
    if type(env).__name__ == "GRFTeamEnv":  # no gfootball import just to check the type
        from marlx.render.grid import football_pitch_frame

        return football_pitch_frame(env._raw[0], env._active(), attacked)
    inner = _inner_gym_env(env)
    module = type(inner).__module__
    if module.startswith("lbforaging"):
        return lbf_frame(inner, attacked)
    if module.startswith("rware"):
        return rware_frame(inner, attacked)
    if isinstance(env, PettingZooTeamEnv):
        if getattr(env.env.unwrapped, "render_mode", None) != "rgb_array":
            raise CannotRender(
                f"{type(env.env.unwrapped).__name__} renders only when made with render_mode='rgb_array' "
                "(add it to env_config)"
            )
        out = env.env.render()
        return None if out is None else np.array(out, np.uint8)  # a copy: the env reuses its buffer
    return None


# -- SMAX ----------------------------------------------------------------------------------------------
def smax_frame(env, attacked=None, actions=None, width: int = 400) -> np.ndarray:
    """The current SMAX state, drawn the way JaxMARL's ``SMAXVisualizer`` draws it (allies blue, enemies green,
    unit-type letters, the allies' shots as grey lines) plus health bars.

    JaxMARL's own ``init_render`` works headless but re-traces its ``lax.cond`` calls on every frame (3 s a frame
    on this machine), so the drawing is done here with Pillow from the same state and unit tables. The view is a
    square around the live units (the map is 32 x 32, units start in its middle). On the step that ends an episode
    the drawn state is the one before that step (the adapter keeps no terminal state).
    """
    from PIL import Image, ImageDraw

    from marlx.render.draw import ATTACK_COLOUR, font

    inner = env.core.env._env  # the two-team SMAX under HeuristicEnemySMAX
    state = env._state.state
    positions = np.asarray(state.unit_positions, np.float64)
    alive = np.asarray(state.unit_alive, bool)
    types = np.asarray(state.unit_types, np.int64)
    health = np.asarray(state.unit_health, np.float64)
    radius = np.asarray(inner.unit_type_radiuses, np.float64)[types]
    max_health = np.asarray(inner.unit_type_health, np.float64)[types]
    reach = np.asarray(inner.unit_type_attack_ranges, np.float64)[types]
    n_allies = inner.num_allies
    pts = positions[alive] if alive.any() else positions
    centre = (pts.min(0) + pts.max(0)) / 2
    half = max(float((pts.max(0) - pts.min(0)).max()) / 2 + 3.0, 6.0)
    scale = width / (2 * half)

    def px(p):  # map y points up, image y down
        return ((p[0] - centre[0] + half) * scale, (centre[1] + half - p[1]) * scale)

    img = Image.new("RGB", (width, width), (255, 255, 255))
    d = ImageDraw.Draw(img)
    hit = set() if attacked is None else {int(i) for i in np.flatnonzero(np.asarray(attacked).reshape(-1))}
    n_moves = inner.num_movement_actions
    for i, a in enumerate([] if actions is None else np.asarray(actions).reshape(-1)):
        target = n_allies + int(a) - n_moves
        if a >= n_moves and target < len(positions) and alive[i] and alive[target] and \
                np.linalg.norm(positions[i] - positions[target]) < reach[i]:
            d.line([px(positions[i]), px(positions[target])], fill=(130, 130, 130), width=2)
    f = font(max(8, int(0.5 * scale)))
    for u in np.flatnonzero(alive):
        x, y = px(positions[u])
        r = radius[u] * scale
        colour = (0, 0, 255) if u < n_allies else (0, 128, 0)
        outline = ATTACK_COLOUR if (u < n_allies and u in hit) else None
        d.ellipse((x - r, y - r, x + r, y + r), fill=colour, outline=outline, width=3)
        d.text((x, y), inner.unit_type_shorthands[types[u]], fill=(255, 255, 255), font=f, anchor="mm")
        frac = float(np.clip(health[u] / max_health[u], 0.0, 1.0))
        d.rectangle((x - r, y - r - 6, x - r + 2 * r * frac, y - r - 3), fill=(220, 60, 60))
    return np.asarray(img, np.uint8)


# -- LBF and RWARE from their state ---------------------------------------------------------------------
def lbf_frame(lbf, attacked=None, cell: int = 40) -> np.ndarray:
    """Level-based foraging: food cells with their level, agents as discs (numbered by agent) with their level."""
    from marlx.render.draw import GridCanvas, font

    rows, cols = lbf.field.shape
    canvas = GridCanvas(cols, rows, cell)
    for r, c in zip(*np.nonzero(lbf.field)):
        canvas.fill_cell(c, r, (240, 200, 80), inset=6)
        x0, y0, x1, y1 = canvas.box(c, r)
        canvas.draw.text(((x0 + x1) / 2, (y0 + y1) / 2), str(int(lbf.field[r, c])), fill=(0, 0, 0), font=font(14),
                         anchor="mm")
    positions = np.array([[p.position[1], p.position[0]] for p in lbf.players], np.int64)
    canvas.agents(positions, attacked)
    for p in lbf.players:
        x0, y0, _, _ = canvas.box(p.position[1], p.position[0])
        canvas.draw.text((x0 + 2, y0 + 1), f"L{int(p.level)}", fill=(0, 0, 0), font=font(10))
    return canvas.to_array()


def rware_frame(rware, attacked=None, cell: int = 32) -> np.ndarray:
    """Robotic warehouse: shelves grey (requested ones orange), goals dark, agents as discs; a carried shelf
    is drawn under its agent."""
    from marlx.render.draw import GridCanvas

    rows, cols = rware.grid_size
    canvas = GridCanvas(cols, rows, cell)
    for gx, gy in rware.goals:
        canvas.fill_cell(gx, gy, (60, 60, 60), inset=1)
    requested = {id(s) for s in rware.request_queue}
    for s in rware.shelfs:
        canvas.fill_cell(s.x, s.y, (240, 150, 40) if id(s) in requested else (170, 170, 170), inset=3)
    canvas.agents(np.array([[a.x, a.y] for a in rware.agents], np.int64), attacked)
    return canvas.to_array()
