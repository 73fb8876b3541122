"""Small raster helpers shared by marlx's renderers (Pillow only; no display needed).

Every renderer returns an RGB frame ``(H, W, 3) uint8``. :func:`add_caption` puts the text band under a frame
(step, reward, return, episode) and marks attacked steps: a red border and the attacked agents' indices.
Renderers that know where agents are on the frame ring them too (:meth:`GridCanvas.agent`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Agent colours (tab10 without red, which marks attacks), cycled for teams of more than nine agents.
AGENT_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (148, 103, 189), (140, 86, 75),
                 (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
ATTACK_COLOUR = (220, 20, 20)
BACKGROUND = (250, 250, 250)
GRID_LINE = (200, 200, 200)
TEXT = (20, 20, 20)
#: Height of the caption band under each frame, in pixels.
CAPTION_HEIGHT = 48
#: Frames of grid envs are at least this wide (cells grow on small grids), so that the caption fits.
MIN_WIDTH = 320


def font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size only
        return ImageFont.load_default()


def agent_colour(i: int) -> tuple[int, int, int]:
    return AGENT_COLOURS[i % len(AGENT_COLOURS)]


def _attacked_list(attacked, n: int | None = None) -> list[int]:
    if attacked is None:
        return []
    mask = np.asarray(attacked).reshape(-1).astype(bool)
    return [int(i) for i in np.flatnonzero(mask[: n if n is not None else len(mask)])]


class GridCanvas:
    """A ``width x height`` cell grid drawn with Pillow; cell ``(x, y)`` has x to the right, y downwards."""

    def __init__(self, width: int, height: int, cell: int = 40):
        self.width, self.height = int(width), int(height)
        self.cell = cell = max(int(cell), -(-MIN_WIDTH // self.width))
        self.image = Image.new("RGB", (self.width * self.cell, self.height * self.cell), BACKGROUND)
        self.draw = ImageDraw.Draw(self.image)
        for i in range(self.width + 1):
            self.draw.line([(i * cell, 0), (i * cell, self.height * cell)], fill=GRID_LINE)
        for j in range(self.height + 1):
            self.draw.line([(0, j * cell), (self.width * cell, j * cell)], fill=GRID_LINE)

    def box(self, x: int, y: int) -> tuple[int, int, int, int]:
        c = self.cell
        return (int(x) * c, int(y) * c, (int(x) + 1) * c, (int(y) + 1) * c)

    def fill_cell(self, x: int, y: int, colour, inset: int = 0, outline=None) -> None:
        x0, y0, x1, y1 = self.box(x, y)
        self.draw.rectangle((x0 + inset, y0 + inset, x1 - inset, y1 - inset), fill=colour, outline=outline)

    def diamond(self, x: int, y: int, colour) -> None:
        x0, y0, x1, y1 = self.box(x, y)
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, self.cell * 0.35
        self.draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)

    def agent(self, x: int, y: int, index: int, attacked: bool = False, slot: int = 0, slots: int = 1) -> None:
        """A numbered disc; agents sharing a cell get ``slots`` smaller discs side by side."""
        x0, y0, _, _ = self.box(x, y)
        c = self.cell
        r = c * (0.32 if slots == 1 else 0.45 / slots + 0.05)
        cx = x0 + c * (slot + 0.5) / slots
        cy = y0 + c / 2
        self.draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=agent_colour(index),
                          outline=ATTACK_COLOUR if attacked else None, width=3 if attacked else 1)
        self.draw.text((cx, cy), str(index), fill=(255, 255, 255), font=font(max(8, int(r))), anchor="mm")

    def agents(self, positions: np.ndarray, attacked=None) -> None:
        """Every agent at its integer cell ``positions [n, 2]``; agents on one cell share it."""
        hit = set(_attacked_list(attacked, len(positions)))
        cells: dict[tuple[int, int], list[int]] = {}
        for i, (x, y) in enumerate(np.asarray(positions, np.int64)):
            cells.setdefault((int(x), int(y)), []).append(i)
        for (x, y), members in cells.items():
            for slot, i in enumerate(members):
                self.agent(x, y, i, attacked=i in hit, slot=slot, slots=len(members))

    def to_array(self) -> np.ndarray:
        return np.asarray(self.image, np.uint8)


def add_caption(frame: np.ndarray, lines: list[str], attacked=None) -> np.ndarray:
    """``frame`` with a text band below it (up to two ``lines``, then the attacked agents in red); an attacked
    step also gets a red border. The band has a fixed height, so every frame of an env has one size."""
    frame = np.asarray(frame, np.uint8)[..., :3]
    w = frame.shape[1]
    hit = _attacked_list(attacked)
    band = Image.new("RGB", (w, CAPTION_HEIGHT), (255, 255, 255))
    d = ImageDraw.Draw(band)
    f = font(12)
    for k, line in enumerate(lines[:2]):
        d.text((4, 2 + 15 * k), line, fill=TEXT, font=f)
    if hit:
        d.text((4, 32), "attacked: " + ", ".join(map(str, hit)), fill=ATTACK_COLOUR, font=f)
    out = np.concatenate([frame, np.asarray(band, np.uint8)], axis=0)
    if hit:
        out[:3], out[-3:], out[:, :3], out[:, -3:] = ATTACK_COLOUR, ATTACK_COLOUR, ATTACK_COLOUR, ATTACK_COLOUR
    return out


def figure_to_array(fig) -> np.ndarray:
    """An RGB array of a matplotlib figure drawn on its (Agg) canvas."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba(), np.uint8)[..., :3].copy()


def pad_to_multiple(frame: np.ndarray, multiple: int = 16) -> np.ndarray:
    """White padding on the right and bottom up to a multiple of ``multiple`` pixels (H.264 macro blocks)."""
    h, w = frame.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not ph and not pw:
        return frame
    return np.pad(frame, ((0, ph), (0, pw), (0, 0)), constant_values=255)
