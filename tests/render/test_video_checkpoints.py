"""Videos and printed traces of greedy episodes from tiny real checkpoints (QMIX on push_box, predator_prey, MPE; SMAX
and GRF when installed), through the player and through `marlx evaluate --video` / `--trace`."""

import importlib.util
import json

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
    gif = tmp_path / "attacked.gif"
    assert marlx_cmd.main(["evaluate", checkpoints["builtin/push_box"], "--video", str(gif), "--attack", "random",
                           "--budget", "2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["attack"]["name"] == "random" and res["attack"]["budget"] == 2 and 0 <= res["attacked_steps_mean"] <= 2
    assert len(read_video(str(gif))) == res["frames"]
    code = marlx_cmd.main(["evaluate", checkpoints["builtin/push_box"], "--video", str(gif), "--attack", "random",
                           "--budget", "-1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--budget must be >= 0" in err


def test_evaluate_trace_prints_the_episodes_played(checkpoints, capsys):
    """`marlx evaluate --trace` prints what the policy did: replaying its printed joint actions in a fresh env from
    the same seeds gives exactly its printed rewards, returns, lengths and endings; the table names the actions."""
    from marlx.cli import marlx_cmd
    from marlx.envs import make_env

    ckpt, env_name = checkpoints["builtin/predator_prey"], "builtin/predator_prey"
    assert marlx_cmd.main(["evaluate", ckpt, "--trace", "--episodes", "2", "--seed", "3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["algorithm"] == "QMIX" and res["env"] == env_name and len(res["episodes"]) == 2
    assert res["action_names"] == ["stay", "up", "down", "left", "right"]
    env = make_env(env_name, **ENVS[env_name])
    for k, ep in enumerate(res["episodes"]):
        env.reset(seed=3 + k)
        assert len(ep["steps"]) == ep["length"] >= 1
        ret = 0.0
        for i, st in enumerate(ep["steps"]):
            assert st["t"] == i + 1 and st["attacked"] == []
            _, r, term, trunc, info = env.step(np.array(st["actions"]))
            ret += r
            assert st["reward"] == pytest.approx(r) and st["return"] == pytest.approx(ret)
            assert (term or trunc) == (i == len(ep["steps"]) - 1)
        expected = "success" if info["success"] else "terminated" if term else "time limit"
        assert ep["outcome"] == expected and ep["success"] == info["success"] and ep["return"] == pytest.approx(ret)
    assert marlx_cmd.main(["evaluate", ckpt, "--trace", "--episodes", "1", "--seed", "3"]) == 0
    text = capsys.readouterr().out
    first = res["episodes"][0]
    assert f"greedy episode 1/1 (reset seed 3)" in text and f"ended after {first['length']} steps" in text
    names = ", ".join(res["action_names"][a] for a in first["steps"][0]["actions"])
    assert f"   1  {names}" in text
    # an attack marks the agents it hit, and spends at most its budget of attacked steps
    assert marlx_cmd.main(["evaluate", ckpt, "--trace", "--episodes", "2", "--attack", "random", "--budget", "2",
                           "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["attack"]["name"] == "random"
    for ep in res["episodes"]:
        assert sum(bool(st["attacked"]) for st in ep["steps"]) <= 2
    code = marlx_cmd.main(["evaluate", ckpt, "--trace", "--video", "x.gif"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "pass one of them" in err


@pytest.mark.parametrize("name", ["random", "wolfpack"])
def test_attacked_video_marks_exactly_the_attacked_steps(checkpoints, name):
    """An attack played by the video player goes through the runtime's seam: it spends at most its budget, the
    frames of attacked steps (and only those) carry the red mark, and every executed action reaches the env."""
    player = CheckpointPlayer(checkpoints["builtin/predator_prey"])
    spec = {"name": name, "budget": 3, **({"prob": 1.0} if name == "random" else {})}
    if name == "wolfpack":
        from marlx.cli.evaluate import attack_spec

        spec = attack_spec("wolfpack", 3, player.algo_class)
    executed = []
    real_step = player.team.step

    def step(actions):
        executed.append(np.array(actions))
        return real_step(actions)

    player.team.step = step
    recs = player.play(2, seed=0, attack=spec)
    total = sum(r.length for r in recs)
    assert len(executed) == total
    for rec in recs:
        assert rec.attacked_steps <= 3
        red = [bool((f[:3] == (220, 20, 20)).all()) for f in rec.frames[1:]]
        assert sum(red) == rec.attacked_steps
    if name == "random":  # probability 1: every agent redrawn; over 2 x 8 steps some step is attacked
        assert sum(r.attacked_steps for r in recs) >= 1
    # the same episodes without the attack: greedy actions, which the attacked steps replaced
    player.team.step = real_step
    natural = player.play(2, seed=0, render=False)
    assert all(r.attacked_steps == 0 for r in natural)


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
