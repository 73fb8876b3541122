"""Write frames to an MP4 (imageio + imageio-ffmpeg, which ships its own ffmpeg) or a GIF (Pillow)."""

from __future__ import annotations

import os

import numpy as np

from marlx.errors import MarlxError, MissingDependencyError

VIDEO_INSTALL = "pip install 'marlx[video]'"
FORMATS = (".mp4", ".gif")


def check_video_path(path: str) -> str:
    """The path's format (``.mp4`` or ``.gif``), checked before any episode is played."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise MarlxError(f"--video {path!r}: the file must end in .mp4 or .gif")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise MarlxError(f"--video {path!r}: folder {folder} does not exist")
    if ext == ".mp4":
        for module in ("imageio", "imageio_ffmpeg"):
            try:
                __import__(module)
            except ImportError:
                raise MissingDependencyError("an .mp4 video", module, VIDEO_INSTALL + " (or write a .gif)") from None
    return ext


def write_video(frames: list[np.ndarray], path: str, fps: float = 4.0) -> str:
    """Write ``frames`` (equal-sized ``(H, W, 3) uint8``) to ``path``; returns the path."""
    from marlx.render.draw import pad_to_multiple

    if not frames:
        raise MarlxError("no frames to write")
    ext = check_video_path(path)
    if ext == ".gif":
        from PIL import Image

        images = [Image.fromarray(np.asarray(f, np.uint8)) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(round(1000 / fps)), loop=0)
        return path
    import imageio.v2 as imageio

    # H.264 works on 16-pixel macro blocks: pad instead of letting the writer rescale
    with imageio.get_writer(path, fps=fps, codec="libx264", quality=7, macro_block_size=16,
                            ffmpeg_log_level="error") as writer:
        for f in frames:
            writer.append_data(pad_to_multiple(np.asarray(f, np.uint8)))
    return path


def read_video(path: str) -> list[np.ndarray]:
    """The frames of a video written by :func:`write_video` (used by tests and by users checking a file)."""
    if path.lower().endswith(".gif"):
        from PIL import Image, ImageSequence

        with Image.open(path) as im:
            return [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
    import imageio.v2 as imageio

    return [np.asarray(f) for f in imageio.mimread(path, memtest=False)]
