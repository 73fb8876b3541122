"""Frames of the built-in grid envs (push_box, predator_prey) and a 2D football pitch, from the env's own state."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from marlx.render.draw import ATTACK_COLOUR, GridCanvas, _attacked_list, agent_colour

GOAL_ROW = (210, 240, 210)
BOX = (150, 100, 50)
PREY = (200, 60, 60)


def push_box_frame(env, attacked=None, cell: int = 40) -> np.ndarray:
    """Goal edge (top row) green, undelivered boxes brown, agents as numbered discs."""
    canvas = GridCanvas(env.size, env.size, cell)
    for x in range(env.size):
        canvas.fill_cell(x, 0, GOAL_ROW, inset=1)
    for j in range(env.n_boxes):
        if not env.delivered[j]:
            canvas.fill_cell(*env.boxes[j], BOX, inset=4)
    canvas.agents(env.agents, attacked)
    return canvas.to_array()


def predator_prey_frame(env, attacked=None, cell: int = 40) -> np.ndarray:
    """Live prey as red diamonds, predators as numbered discs."""
    canvas = GridCanvas(env.size, env.size, cell)
    for j in range(env.n_prey):
        if env.alive[j]:
            canvas.diamond(*env.prey[j], PREY)
    canvas.agents(env.preds, attacked)
    return canvas.to_array()


#: gfootball's pitch: x in [-1, 1], y in [-0.42, 0.42] (y downwards on screen).
PITCH_X, PITCH_Y = 1.0, 0.42


def football_pitch_frame(raw: dict, controlled: list[int] | None = None, attacked=None, width: int = 480) -> np.ndarray:
    """A top view of one gfootball raw observation: left team (ours) blue, right team orange, ball white.

    ``controlled``: indices of the left players the team's agents control (ringed, numbered by agent).
    """
    height = int(width * PITCH_Y / PITCH_X)
    img = Image.new("RGB", (width, height), (70, 140, 70))
    d = ImageDraw.Draw(img)

    def px(p) -> tuple[float, float]:
        return ((float(p[0]) + PITCH_X) / (2 * PITCH_X) * width, (float(p[1]) + PITCH_Y) / (2 * PITCH_Y) * height)

    d.rectangle((1, 1, width - 2, height - 2), outline=(255, 255, 255))
    d.line([(width / 2, 0), (width / 2, height)], fill=(255, 255, 255))
    goal = 0.044 / (2 * PITCH_Y) * height * 2
    for gx in (0, width - 4):
        d.rectangle((gx, height / 2 - goal, gx + 4, height / 2 + goal), fill=(255, 255, 255))
    r = max(3, width // 80)
    hit = set(_attacked_list(attacked))
    controlled = list(controlled or [])
    for team, colour in (("right_team", (240, 150, 40)), ("left_team", (40, 90, 220))):
        for i, p in enumerate(np.asarray(raw.get(team, []), np.float32).reshape(-1, 2)):
            x, y = px(p)
            outline = None
            if team == "left_team" and i in controlled:
                a = controlled.index(i)
                outline = ATTACK_COLOUR if a in hit else agent_colour(a)
            d.ellipse((x - r, y - r, x + r, y + r), fill=colour, outline=outline, width=2)
    bx, by = px(np.asarray(raw.get("ball", [0, 0, 0]))[:2])
    d.ellipse((bx - r * 0.7, by - r * 0.7, bx + r * 0.7, by + r * 0.7), fill=(255, 255, 255), outline=(0, 0, 0))
    score = raw.get("score")
    if score is not None:
        d.text((width / 2, 4), f"{int(score[0])} : {int(score[1])}", fill=(255, 255, 255), anchor="mt")
    return np.asarray(img, np.uint8)

