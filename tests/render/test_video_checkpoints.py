"""Videos of greedy episodes from tiny real checkpoints (QMIX on push_box, predator_prey, MPE; SMAX and GRF when
installed), through the player and through `marlx evaluate --video`."""

import importlib.util

import numpy as np
import pytest
import torch

from marlx.render.play import CheckpointPlayer, record_video, team_forward
from marlx.render.video import read_video

TINY = {"rnn_hidden_dim": 8, "mixing_embed_dim": 4, "hypernet_embed": 8}
ENVS = {
    "builtin/push_box": {"size": 4, "box_start_row": 1, "episode_limit": 8},
    "builtin/predator_prey": {"size": 5, "n_predators": 2, "n_prey": 1, "episode_limit": 8},
    "mpe/simple_spread": {"max_cycles": 6},
}


def qmix_checkpoint(path, env, env_config):
    from marlx.algorithms.qmix import QMIXConfig

    algo = QMIXConfig().environment(env, env_config=env_config).training(**TINY).debugging(seed=0).build_algo()
    try:
        return algo.save_to_path(str(path))
    finally:
        algo.stop()


@pytest.fixture(scope="module")
def checkpoints(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {env: qmix_checkpoint(root / env.replace("/", "_"), env, cfg) for env, cfg in ENVS.items()}


@pytest.mark.parametrize("env", list(ENVS))
def test_video_of_greedy_episodes(checkpoints, tmp_path, env):
    if env.startswith("mpe/"):
        pytest.importorskip("mpe2")
    out = tmp_path / "greedy.gif"
    res = record_video(checkpoints[env], str(out), episodes=2, fps=5)
    frames = read_video(str(out))
    limit = ENVS[env].get("episode_limit", ENVS[env].get("max_cycles"))
    # one frame per reset and per step; every episode ends by the time limit at the latest
    assert res["frames"] == len(frames) == 2 * (res["length_mean"] + 1)
    assert 1 <= res["length_mean"] <= limit and res["env"] == env and res["algorithm"] == "QMIX"
    assert len({f.shape for f in frames}) == 1
    assert not np.array_equal(frames[0], frames[1])  # the step counter at least, usually the agents too


def test_player_plays_the_module_greedily(checkpoints):
    """The player's episode is the one the checkpoint's module plays greedily: at every step the argmax of its
    Q values over the available actions, fed its own recurrent state."""
    from ray.rllib.core.columns import Columns

    player = CheckpointPlayer(checkpoints["builtin/push_box"], render=False)
    rec = player.play(1, seed=5, render=False)[0]
    module, env = player.module, player.team
    obs, _ = env.reset(seed=5)
    state = {k: torch.as_tensor(v)[None] for k, v in module.get_initial_state().items()}
    ret, steps = 0.0, 0
    while True:
        with torch.no_grad():
            out = module.forward_inference({Columns.OBS: {k: torch.as_tensor(v)[None] for k, v in obs.items()},
                                            Columns.STATE_IN: state})
        q = out["q_values"][0].numpy()
        greedy = np.where(obs["avail"] > 0, q, -np.inf).argmax(-1)
        actions, _ = team_forward(module, obs, state, env.n_agents)
        assert np.array_equal(actions, greedy)
        state = out[Columns.STATE_OUT]
        obs, r, term, trunc, _ = env.step(greedy)
        ret, steps = ret + r, steps + 1
        if term or trunc:
            break
    assert (rec.ret, rec.length) == (ret, steps)


def test_action_hook_marks_attacked_agents(checkpoints):
    player = CheckpointPlayer(checkpoints["builtin/predator_prey"])
    seen = []

    def hook(t, obs, actions):
        seen.append(actions.copy())
        attacked = np.zeros(len(actions), bool)
        attacked[0] = t % 2 == 0
        return np.zeros_like(actions), attacked  # every agent made to stay

    rec = player.play(1, seed=0, action_hook=hook)[0]
    assert len(seen) == rec.length
    red = [bool((f[:3] == (220, 20, 20)).all()) for f in rec.frames[1:]]
    assert red == [t % 2 == 0 for t in range(rec.length)]


def test_evaluate_video_command(checkpoints, tmp_path, capsys):
    from marlx.cli import marlx_cmd, rllib_cmd

    out = tmp_path / "v.mp4"
    pytest.importorskip("imageio_ffmpeg")
    assert marlx_cmd.main(["evaluate", checkpoints["builtin/push_box"], "--video", str(out), "--episodes", "1"]) == 0
    text = capsys.readouterr().out
    assert "1 greedy episodes" in text and str(out) in text
    assert len(read_video(str(out))) > 1
    code = rllib_cmd.main(["evaluate", checkpoints["builtin/push_box"], "--video", str(tmp_path / "v.webm")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "must end in .mp4 or .gif" in err
    code = marlx_cmd.main(["evaluate", checkpoints["builtin/push_box"], "--video", str(out), "--attack", "random"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--video with --attack is not built yet" in err


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jaxmarl") is None, reason="jaxmarl not installed")
def test_smax_video(ray_session, tmp_path):
    ckpt = qmix_checkpoint(tmp_path / "smax", "smax/3m", {"max_steps": 10})
    res = record_video(ckpt, str(tmp_path / "smax.gif"), episodes=1)
    frames = read_video(str(tmp_path / "smax.gif"))
    assert res["frames"] == len(frames) == res["length_mean"] + 1 > 1
    assert not np.array_equal(frames[0], frames[-1])


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gfootball") is None, reason="gfootball not installed")
def test_grf_video(ray_session, tmp_path):
    ckpt = qmix_checkpoint(tmp_path / "grf", "grf/academy_3_vs_1_with_keeper", {"episode_limit": 6})
    res = record_video(ckpt, str(tmp_path / "grf.gif"), episodes=1)
    frames = read_video(str(tmp_path / "grf.gif"))
    assert res["frames"] == len(frames) > 1
    assert not np.array_equal(frames[0], frames[-1])
