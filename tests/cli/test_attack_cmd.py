"""`marlx attack CHECKPOINT --attack wolfpack|random ...` end to end on a tiny QMIX checkpoint of builtin/push_box:
Wolfpack fits its attacker against the frozen policy (progress lines, saved beside the results), a second call
reuses it and gives the same numbers (so does `rllib evaluate ... --attack`), --refit fits again; the table; bad
input (unknown attack, a PPO checkpoint, budget < 0, fit steps < 1) gives one line and exit 2 before Ray starts."""

import json
import os

import pytest
import torch

from marlx.algorithms.qmix import QMIXConfig
from marlx.attacks.fit import ATTACKER_FILE
from marlx.cli import marlx_cmd, rllib_cmd

from cli_helpers import error_of as cli_error_of

TINY = {"size": 4, "box_start_row": 1, "episode_limit": 12}
# 12-step episodes on 2 envs: >= 35 episodes, attacker updates once the replay holds 32
FIT = ["--fit-steps", "420"]


@pytest.fixture(scope="module")
def qmix_checkpoint(ray_session, tmp_path_factory):
    cfg = (QMIXConfig().environment("builtin/push_box", env_config=TINY)
           .env_runners(num_envs_per_env_runner=2)
           .training(batch_size_episodes=2, learning_starts_episodes=2, buffer_size=10, rnn_hidden_dim=8,
                     mixing_embed_dim=4, hypernet_embed=8).debugging(seed=0))
    algo = cfg.build_algo()
    try:
        algo.train()
        algo.train()
        return str(algo.save_to_path(tmp_path_factory.mktemp("qmix") / "ckpt"))
    finally:
        algo.stop()


@pytest.fixture(scope="module")
def ppo_checkpoint(ray_session, tmp_path_factory):
    from ray.rllib.algorithms.ppo import PPOConfig

    algo = (PPOConfig().environment("CartPole-v1").env_runners(num_env_runners=0)
            .rl_module(model_config={"fcnet_hiddens": [8]})).build_algo()
    try:
        return str(algo.save_to_path(tmp_path_factory.mktemp("ppo") / "ckpt"))
    finally:
        algo.stop()


def run_json(main, argv, capsys):
    assert main(argv) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out.strip().splitlines()[-1]), captured.err


def test_wolfpack_fits_then_reuses_then_refits(qmix_checkpoint, tmp_path, capsys):
    out = str(tmp_path / "attacker")
    argv = ["attack", qmix_checkpoint, "--attack", "wolfpack", "--budget", "3", "--episodes", "4", "--seed", "7",
            "--json", "--attacker-dir", out, *FIT]
    first, err = run_json(marlx_cmd.main, argv, capsys)
    assert "fitting the Wolfpack attacker" in err and "fit 420/420 env steps" in err and "saved the fitted" in err
    a = first["attacker"]
    assert a["source"] == "fitted" and a["fit_steps"] == 420 and a["updates"] >= 1 and a["fit_budget"] == 12
    assert a["env_steps"] >= 420 and a["path"] == os.path.join(out, ATTACKER_FILE) and os.path.isfile(a["path"])
    saved = torch.load(a["path"], weights_only=False)
    assert {"qdiff_transformer", "planning_transformer", "dims", "meta"} <= set(saved)
    # the JSON form
    assert {"checkpoint", "attack", "budget", "episodes", "natural", "attacked"} <= set(first)
    assert first["attack"] == {"name": "wolfpack", "budget": 3, "schedule": "planner"} and first["budget"] == 3
    assert set(first["natural"]) == {"return_mean", "success_rate", "length_mean"}
    att = first["attacked"]
    assert set(att) == {"return_mean", "success_rate", "length_mean", "attacked_steps_mean", "attacked_steps_max",
                        "hits_per_agent"}
    assert 0 < att["attacked_steps_mean"] <= att["attacked_steps_max"] <= 3
    assert len(att["hits_per_agent"]) == 2 and sum(att["hits_per_agent"]) >= att["attacked_steps_mean"]
    with open(first["results_file"]) as f:
        assert json.load(f)["attacked"] == att
    assert os.path.dirname(first["results_file"]) == out

    # a second call reuses the saved attacker (no fitting) and gives the same result; so does rllib evaluate
    second, err = run_json(marlx_cmd.main, argv[:-2], capsys)
    assert "reusing the Wolfpack attacker fitted for 420 env steps" in err and "fitting" not in err
    assert second["attacker"]["source"] == "reused"
    assert second["natural"] == first["natural"] and second["attacked"] == att
    ev = ["evaluate", qmix_checkpoint, "--attack", "wolfpack", "--budget", "3", "--episodes", "4", "--seed", "7",
          "--json", "--attacker-dir", out]
    third, _ = run_json(rllib_cmd.main, ev, capsys)
    assert third["attacker"]["source"] == "reused" and third["attacked"] == att and third["natural"] == first["natural"]

    # --refit fits again (same seed and steps: the same attacker, hence the same result)
    fourth, err = run_json(marlx_cmd.main, argv + ["--refit"], capsys)
    assert "fitting the Wolfpack attacker" in err and fourth["attacker"]["source"] == "fitted"
    assert fourth["attacked"] == att


def test_fit_budget_is_the_fitting_episodes_budget(qmix_checkpoint, tmp_path):
    """``fit_budget`` (benchmarks/robustness.py --train-budget) replaces the training budget 12 of the fit, and a saved
    attacker fitted with another budget is not reused."""
    from marlx.cli.evaluate import evaluate_checkpoint

    lines = []
    kw = dict(attack="wolfpack", budget=2, episodes=2, seed=7, fit_steps=420, out=str(tmp_path), log=lines.append)
    first = evaluate_checkpoint(qmix_checkpoint, fit_budget=3, **kw)
    assert first["attacker"]["source"] == "fitted" and first["attacker"]["fit_budget"] == 3
    assert any("(budget 3)" in line for line in lines), lines
    lines.clear()
    second = evaluate_checkpoint(qmix_checkpoint, fit_budget=5, **kw)
    assert second["attacker"]["source"] == "fitted" and second["attacker"]["fit_budget"] == 5
    assert any("with budget 3, 420 env steps with budget 5 asked: fitting again" in line for line in lines), lines
    third = evaluate_checkpoint(qmix_checkpoint, fit_budget=5, **kw)
    assert third["attacker"]["source"] == "reused"


def test_random_attack_table(qmix_checkpoint, tmp_path, capsys):
    assert marlx_cmd.main(["attack", qmix_checkpoint, "--attack", "random", "--budget", "2", "--episodes", "3",
                           "--seed", "1", "--attacker-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "3 greedy episodes each, attack random (budget 2 steps)" in out
    lines = out.splitlines()
    natural = next(line for line in lines if line.strip().startswith("natural"))
    attacked = next(line for line in lines if line.strip().startswith("attacked"))
    assert len(natural.split()) == 4 and len(attacked.split()) == 5  # return success length [steps mean/max]
    assert int(attacked.split()[-1].split("/")[1]) <= 2
    assert "hits per agent" in out and "results: " + str(tmp_path) in out
    assert not os.path.exists(os.path.join(str(tmp_path), ATTACKER_FILE))  # random fits nothing


def error_of(argv, capsys, main=marlx_cmd.main):
    return cli_error_of(main, argv, capsys)


def test_bad_input(qmix_checkpoint, ppo_checkpoint, capsys):
    err = error_of(["attack", qmix_checkpoint, "--attack", "wolfpak"], capsys)
    assert "unknown attack 'wolfpak'" in err and "wolfpack" in err
    err = error_of(["attack", qmix_checkpoint, "--attack", "wolfpack", "--budget", "-1"], capsys)
    assert "--budget must be >= 0" in err
    err = error_of(["attack", qmix_checkpoint, "--attack", "wolfpack", "--fit-steps", "0"], capsys)
    assert "--fit-steps must be >= 1" in err
    err = error_of(["attack", qmix_checkpoint, "--attack", "none"], capsys)
    assert "needs --attack wolfpack or --attack random" in err
    err = error_of(["attack", ppo_checkpoint, "--attack", "wolfpack"], capsys)
    assert "needs per-agent Q values" in err and "PPO" in err
    err = error_of(["attack", ppo_checkpoint, "--attack", "random"], capsys)
    assert "PPO does not run on marlx's team runner" in err
    err = error_of(["evaluate", ppo_checkpoint, "--attack", "wolfpack"], capsys, main=rllib_cmd.main)
    assert "needs per-agent Q values" in err


@pytest.fixture(scope="module")
def mappo_checkpoint(ray_session, tmp_path_factory):
    from marlx.algorithms.mappo import MAPPOConfig

    algo = (MAPPOConfig().environment("builtin/push_box", env_config=TINY).env_runners(num_envs_per_env_runner=2)
            .training(train_batch_size_per_learner=48, num_epochs=1, hidden_size=8).debugging(seed=0)).build_algo()
    try:
        algo.train()
        return str(algo.save_to_path(tmp_path_factory.mktemp("mappo") / "ckpt"))
    finally:
        algo.stop()


def test_random_on_mappo_and_wolfpack_refused(mappo_checkpoint, tmp_path, capsys):
    res, _ = run_json(marlx_cmd.main, ["attack", mappo_checkpoint, "--attack", "random", "--budget", "2",
                                       "--episodes", "3", "--seed", "2", "--json", "--attacker-dir", str(tmp_path)],
                      capsys)
    assert res["algorithm"] == "MAPPO" and res["attack"]["name"] == "random" and "attacker" not in res
    assert res["attacked"]["attacked_steps_max"] <= 2 and len(res["attacked"]["hits_per_agent"]) == 2
    err = error_of(["attack", mappo_checkpoint, "--attack", "wolfpack"], capsys)
    assert "needs per-agent Q values" in err and "MAPPO" in err


@pytest.mark.parametrize("algo", ["FoX", "FIM"])
def test_wolfpack_on_other_value_based_checkpoints(ray_session, tmp_path, capsys, algo):
    """FoX (formation-aware agent) and FIM (QMIX + intrinsic reward) checkpoints: the attacker fit and Wolfpack run
    on them as on QMIX (a fit too short for an update: the pipeline, not the attacker's quality)."""
    from marlx.algorithms import get_algorithm_class

    cfg = (get_algorithm_class(algo).get_default_config().environment("builtin/push_box", env_config=TINY)
           .training(batch_size_episodes=2, learning_starts_episodes=2, buffer_size=10, rnn_hidden_dim=8,
                     mixing_embed_dim=4, hypernet_embed=8).debugging(seed=0))
    built = cfg.build_algo()
    try:
        built.train()
        ckpt = str(built.save_to_path(tmp_path / "ckpt"))
    finally:
        built.stop()
    res, err = run_json(marlx_cmd.main, ["attack", ckpt, "--attack", "wolfpack", "--budget", "3", "--episodes", "4",
                                         "--fit-steps", "24", "--json"], capsys)
    assert res["algorithm"] == algo and res["attacker"]["source"] == "fitted" and "fit 24/24 env steps" in err
    assert os.path.isfile(os.path.join(ckpt + "_attack", ATTACKER_FILE))
    assert res["attacked"]["attacked_steps_max"] <= 3
