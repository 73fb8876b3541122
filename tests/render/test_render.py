"""Frames of every env family: what is drawn where (pixel checks on hand-set states), attacked agents marked,
captions of fixed size, MP4/GIF round trips."""

import importlib.util

import numpy as np
import pytest

from marlx.envs.registry import make_env
from marlx.render.draw import ATTACK_COLOUR, CAPTION_HEIGHT, add_caption, agent_colour
from marlx.render.families import CannotRender, frame, render_env_config
from marlx.render.grid import BOX, PREY, football_pitch_frame


def centre(img, cell, x, y):
    return tuple(int(v) for v in img[int((y + 0.5) * cell), int((x + 0.5) * cell)])


def test_push_box_frame_draws_agents_boxes_and_goal_row_where_the_state_says():
    env = make_env("builtin/push_box", size=5, n_boxes=2)
    env.reset(seed=0)
    env.agents[:] = [[0, 4], [3, 2]]
    env.boxes[:] = [[2, 3], [1, 1]]
    env.delivered[:] = [False, True]  # a delivered box is not drawn
    img = frame(env)
    cell = img.shape[1] // 5
    assert img.shape == (5 * cell, 5 * cell, 3) and img.dtype == np.uint8
    assert centre(img, cell, 2, 3) == BOX
    assert centre(img, cell, 1, 1) != BOX
    # agent discs carry their colour (the centre pixel may be the index digit: look just beside it)
    for i, (x, y) in enumerate(env.agents):
        px = img[int((y + 0.5) * cell), int((x + 0.5) * cell) - cell // 5]
        assert tuple(int(v) for v in px) == agent_colour(i)
    assert centre(img, cell, 4, 0) == (210, 240, 210)  # goal edge
    assert centre(img, cell, 4, 4) == (250, 250, 250)  # empty cell


def test_predator_prey_frame_and_attacked_ring():
    env = make_env("builtin/predator_prey", size=6, n_predators=2, n_prey=2)
    env.reset(seed=0)
    env.preds[:] = [[0, 0], [5, 5]]
    env.prey[:] = [[2, 2], [4, 1]]
    env.alive[:] = [True, False]
    plain = frame(env)
    cell = plain.shape[1] // 6
    assert centre(plain, cell, 2, 2) == PREY
    assert centre(plain, cell, 4, 1) != PREY  # captured prey gone
    hit = frame(env, attacked=np.array([False, True]))
    diff = np.any(hit != plain, axis=2)
    ys, xs = np.nonzero(diff)
    # only agent 1's cell changed, and it gained red
    assert xs.min() >= 5 * cell and ys.min() >= 5 * cell
    assert (hit[diff] == ATTACK_COLOUR).all(axis=1).any()


def test_caption_band_has_fixed_height_and_marks_attacked_steps():
    img = np.full((100, 320, 3), 250, np.uint8)
    calm = add_caption(img, ["episode 1/1 | step 3", "reward +0.00 | return 0.00"])
    loud = add_caption(img, ["episode 1/1 | step 3", "reward +0.00 | return 0.00"], attacked=np.array([0, 1, 1]))
    assert calm.shape == loud.shape == (100 + CAPTION_HEIGHT, 320, 3)
    assert tuple(loud[0, 0]) == ATTACK_COLOUR and tuple(calm[0, 0]) != ATTACK_COLOUR
    assert np.array_equal(calm[:100, 10:-10], img[:, 10:-10]) and not np.array_equal(calm[100:], loud[100:])


def test_mpe_frames_come_from_mpe2_rgb_array_and_change_as_agents_move():
    pytest.importorskip("mpe2")
    env = make_env("mpe/simple_spread", **render_env_config("mpe/simple_spread"))
    env.reset(seed=0)
    first = frame(env)
    for _ in range(4):
        env.step(np.array([1, 2, 3]))
    later = frame(env)
    assert first.shape == later.shape and first.shape[2] == 3 and first.shape[0] >= 100
    assert (first != later).any()


def test_mpe_without_rgb_array_mode_says_how_to_get_it():
    pytest.importorskip("mpe2")
    env = make_env("mpe/simple_spread")
    env.reset(seed=0)
    with pytest.raises(CannotRender, match="render_mode='rgb_array'"):
        frame(env)


def test_an_env_without_renderer_says_so_in_one_line():
    from marlx.envs.team import TeamEnv

    class Bare(TeamEnv):
        n_agents, n_actions, obs_dim, state_dim, episode_limit = 1, 2, 1, 1, 3

    with pytest.raises(CannotRender) as e:
        frame(Bare())
    assert "Bare cannot render" in str(e.value) and "\n" not in str(e.value)


def test_football_pitch_places_ball_and_players():
    raw = {"left_team": np.array([[-1.0, 0.0], [0.5, 0.2]]), "right_team": np.array([[1.0, 0.0]]),
           "ball": np.array([0.0, 0.0, 0.1]), "score": [1, 0]}
    img = football_pitch_frame(raw, controlled=[1], attacked=np.array([True]), width=400)
    h, w = img.shape[:2]
    assert (w, h) == (400, int(400 * 0.42))
    assert tuple(img[h // 2, w // 2]) == (255, 255, 255)  # ball in the centre (centre line is white too)
    lx, ly = int((0.5 + 1) / 2 * w), int((0.2 + 0.42) / 0.84 * h)
    assert tuple(img[ly, lx]) == (40, 90, 220)  # left player 1
    assert (img == ATTACK_COLOUR).all(axis=2).any()  # the controlled, attacked player is ringed red


@pytest.mark.skipif(importlib.util.find_spec("lbforaging") is None, reason="lbforaging not installed")
def test_lbf_frame_from_state():
    import gymnasium as gym
    import lbforaging  # noqa: F401  (registers the env ids)

    from marlx.render.families import lbf_frame

    env = gym.make("Foraging-8x8-2p-2f-v3").unwrapped
    env.reset(seed=0)
    img = lbf_frame(env)
    cell = img.shape[1] // env.field.shape[1]
    r, c = (int(v) for v in np.argwhere(env.field)[0])
    assert tuple(int(v) for v in img[r * cell + 8, c * cell + 8]) == (240, 200, 80)  # a food cell
    row, col = env.players[0].position
    assert tuple(int(v) for v in img[int((row + 0.5) * cell), int((col + 0.5) * cell) - cell // 5]) == agent_colour(0)


@pytest.mark.skipif(importlib.util.find_spec("rware") is None, reason="rware not installed")
def test_rware_frame_from_state():
    import gymnasium as gym
    import rware  # noqa: F401  (registers the env ids)

    from marlx.render.families import rware_frame

    env = gym.make("rware-tiny-2ag-v2").unwrapped
    env.reset(seed=0)
    img = rware_frame(env)
    cell = img.shape[1] // env.grid_size[1]
    gx, gy = env.goals[0]
    assert centre(img, cell, gx, gy) == (60, 60, 60)
    s = env.request_queue[0]
    assert centre(img, cell, s.x, s.y) in ((240, 150, 40), agent_colour(0), agent_colour(1))


@pytest.mark.parametrize("ext", [".gif", ".mp4"])
def test_video_round_trip(tmp_path, ext):
    if ext == ".mp4":
        pytest.importorskip("imageio_ffmpeg")
    from marlx.render.video import read_video, write_video

    frames = [np.full((50, 60, 3), v, np.uint8) for v in (0, 120, 255)]
    path = write_video(frames, str(tmp_path / f"v{ext}"), fps=5)
    back = read_video(path)
    assert len(back) == 3
    means = [float(f[:50, :60].mean()) for f in back]
    assert means[0] < 10 and 100 < means[1] < 140 and means[2] > 245


def test_bad_video_path_is_one_line(tmp_path):
    from marlx.errors import MarlxError
    from marlx.render.video import check_video_path

    with pytest.raises(MarlxError, match="must end in .mp4 or .gif"):
        check_video_path(str(tmp_path / "x.avi"))
    with pytest.raises(MarlxError, match="does not exist"):
        check_video_path(str(tmp_path / "nope" / "x.gif"))
