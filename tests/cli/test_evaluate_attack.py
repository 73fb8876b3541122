"""`marlx evaluate CKPT --attack ...` and `rllib evaluate ... --attack ...`: natural and attacked episodes of a saved
QMIX (Wolfpack's attacker fitted, then reused) and WALL (its own attacker) checkpoint in one table / JSON object, the
budget respected, repeatable with --seed; bad input (unknown attack, budget < 0, Wolfpack on a policy without Q
values, an attack on a checkpoint off the team runner) gives one line and exit 2 before Ray starts."""

import json

import pytest

from marlx.algorithms.qmix import QMIXConfig
from marlx.algorithms.wall import WALLConfig
from marlx.cli import marlx_cmd, rllib_cmd

from cli_helpers import error_of

TINY = {"size": 4, "box_start_row": 1, "episode_limit": 12}


@pytest.fixture(scope="module")
def checkpoints(ray_session, tmp_path_factory):
    out = {}
    for name, cls in (("qmix", QMIXConfig), ("wall", WALLConfig)):
        cfg = (cls().environment("builtin/push_box", env_config=TINY)
               .training(batch_size_episodes=2, learning_starts_episodes=2, buffer_size=10, rnn_hidden_dim=8,
                         mixing_embed_dim=4, hypernet_embed=8).debugging(seed=0))
        algo = cfg.build_algo()
        try:
            algo.train()
            algo.train()
            out[name] = str(algo.save_to_path(tmp_path_factory.mktemp(name) / "ckpt"))
        finally:
            algo.stop()
    return out


def run_json(main, argv, capsys):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("which", ["qmix", "wall"])
def test_wolfpack_json_natural_and_attacked(checkpoints, capsys, which, tmp_path):
    # (a short fit: the replay never reaches 32 episodes, so the attacker is saved untrained; test_attack_cmd fits)
    argv = ["evaluate", checkpoints[which], "--attack", "wolfpack", "--budget", "3", "--episodes", "4", "--seed", "5",
            "--json", "--fit-steps", "60", "--attacker-dir", str(tmp_path)]
    if which == "wall":
        argv = argv[:-4]  # a WALL checkpoint times its attacks with its own Q-difference transformer
    res = run_json(marlx_cmd.main, argv, capsys)
    assert res["attack"]["name"] == "wolfpack" and res["budget"] == 3 and res["episodes"] == 4
    # QMIX has no Q-difference transformer: one is fitted against the frozen policy (and reused below)
    assert res["attack"]["schedule"] == "planner"
    assert res["attacker"]["source"] == ("checkpoint" if which == "wall" else "fitted")
    assert set(res["natural"]) == {"return_mean", "success_rate", "length_mean"}
    att = res["attacked"]
    assert 0 <= att["attacked_steps_mean"] <= att["attacked_steps_max"] <= 3
    assert len(att["hits_per_agent"]) == 2 and sum(att["hits_per_agent"]) >= att["attacked_steps_mean"]
    assert res["natural"]["length_mean"] == res["length_mean"]
    # the same seed gives the same result (rllib evaluate too)
    again = run_json(rllib_cmd.main, argv, capsys)
    assert again["attacked"] == att and again["natural"] == res["natural"]
    assert again["attacker"]["source"] == ("checkpoint" if which == "wall" else "reused")


def test_random_attack_table(checkpoints, capsys):
    assert marlx_cmd.main(["evaluate", checkpoints["qmix"], "--attack", "random", "--budget", "2",
                           "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "attack random (budget 2 steps)" in out and "natural" in out and "attacked" in out
    assert "hits per agent" in out


def test_bad_attack_input(checkpoints, capsys):
    err = error_of(marlx_cmd.main, ["evaluate", checkpoints["qmix"], "--attack", "wolfpak"], capsys)
    assert "unknown attack 'wolfpak'" in err and "wolfpack" in err
    err = error_of(marlx_cmd.main, ["evaluate", checkpoints["qmix"], "--attack", "random", "--budget", "-1"], capsys)
    assert "--budget must be >= 0" in err


def test_wolfpack_needs_a_value_based_policy():
    from ray.rllib.algorithms.ppo import PPO

    from marlx.cli.evaluate import attack_spec
    from marlx.errors import MarlxError

    from marlx.algorithms.fox import FoX
    from marlx.algorithms.qmix import QMIX, VDN
    from marlx.algorithms.wall import WALL
    from marlx.algorithms.fim import FIM

    with pytest.raises(MarlxError, match="needs per-agent Q values"):
        attack_spec("wolfpack", None, PPO)
    with pytest.raises(MarlxError, match="does not run on marlx's team runner"):
        attack_spec("random", 4, PPO)
    assert attack_spec("none", None, PPO) is None
    for cls in (QMIX, VDN, FoX, WALL, FIM):
        assert attack_spec("wolfpack", 5, cls, fitted_planner=True) == {"name": "wolfpack", "budget": 5}
        assert attack_spec("random", 4, cls) == {"name": "random", "budget": 4}
        # without a fitted attacker (the video player) only WALL brings a Q-difference transformer
        unfitted = attack_spec("wolfpack", 5, cls)
        assert unfitted.get("schedule") == (None if cls is WALL else "random")
