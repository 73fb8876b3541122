"""`marlx evaluate CKPT --attack ...` and `rllib evaluate ... --attack ...`: natural and attacked episodes of a saved
QMIX and WALL checkpoint in one table / JSON object, the budget respected, repeatable with --seed; bad input (unknown
attack, budget < 0, Wolfpack on a policy without Q values) gives one line and exit 2 before Ray starts."""

import json

import pytest

from marlx.algorithms.qmix import QMIXConfig
from marlx.algorithms.wall import WALLConfig
from marlx.cli import marlx_cmd, rllib_cmd

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
def test_wolfpack_json_natural_and_attacked(checkpoints, capsys, which):
    argv = ["evaluate", checkpoints[which], "--attack", "wolfpack", "--budget", "3", "--episodes", "4", "--seed", "5",
            "--json"]
    res = run_json(marlx_cmd.main, argv, capsys)
    assert res["attack"]["name"] == "wolfpack" and res["budget"] == 3 and res["episodes"] == 4
    # QMIX has no Q-difference transformer: Wolfpack times its attacks with the random schedule there
    assert res["attack"]["schedule"] == ("planner" if which == "wall" else "random")
    assert set(res["natural"]) == {"return_mean", "success_rate", "length_mean"}
    att = res["attacked"]
    assert 0 <= att["attacked_steps_mean"] <= att["attacked_steps_max"] <= 3
    assert len(att["hits_per_agent"]) == 2 and sum(att["hits_per_agent"]) >= att["attacked_steps_mean"]
    assert res["natural"]["length_mean"] == res["length_mean"]
    # the same seed gives the same result (rllib evaluate too)
    again = run_json(rllib_cmd.main, argv, capsys)
    assert again["attacked"] == att and again["natural"] == res["natural"]


def test_random_attack_table(checkpoints, capsys):
    assert marlx_cmd.main(["evaluate", checkpoints["qmix"], "--attack", "random", "--budget", "2",
                           "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "attack random (budget 2 steps)" in out and "natural" in out and "attacked" in out
    assert "hits per agent" in out


def error_of(main, argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_bad_attack_input(checkpoints, capsys):
    err = error_of(marlx_cmd.main, ["evaluate", checkpoints["qmix"], "--attack", "wolfpak"], capsys)
    assert "unknown attack 'wolfpak'" in err and "wolfpack" in err
    err = error_of(marlx_cmd.main, ["evaluate", checkpoints["qmix"], "--attack", "random", "--budget", "-1"], capsys)
    assert "--budget must be >= 0" in err


def test_wolfpack_needs_a_value_based_policy():
    from ray.rllib.algorithms.ppo import PPO

    from marlx.cli.evaluate import attack_spec
    from marlx.errors import MarlxError

    with pytest.raises(MarlxError, match="needs per-agent Q values"):
        attack_spec("wolfpack", None, PPO)
    assert attack_spec("random", 4, PPO) == {"name": "random", "budget": 4}
    assert attack_spec("none", None, PPO) is None
