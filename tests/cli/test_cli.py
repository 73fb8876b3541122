"""The `rllib` and `marlx` commands: bad input gives one clear line and exit code 2 before Ray starts;
a YAML experiment trains end to end, writes checkpoints and TensorBoard events, evaluates, and resumes."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from marlx.cli import marlx_cmd, rllib_cmd

from cli_helpers import error_of

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)

TINY_PPO = {
    "env_config": {"size": 4, "box_start_row": 1, "episode_limit": 20},
    "num_env_runners": 0,
    "train_batch_size": 200,
    "minibatch_size": 100,
    "num_epochs": 1,
    "seed": 0,
}


def write_yaml(tmp_path, block, name="exp"):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({name: block}))
    return str(path)


def run_cli(*args, timeout=400):
    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_DEDUP_LOGS="0")
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


# -- bad input: one line, exit 2, no traceback -------------------------------------------------------

def test_unknown_algorithm_lists_valid_names(tmp_path, capsys):
    f = write_yaml(tmp_path, {"run": "QMXI", "env": "builtin/push_box"})
    err = error_of(rllib_cmd.main, ["train", "file", f], capsys)
    assert "unknown algorithm 'QMXI'" in err and "PPO" in err


def test_unknown_env_lists_valid_names(tmp_path, capsys):
    f = write_yaml(tmp_path, {"run": "PPO", "env": "builtin/push_bx"})
    err = error_of(marlx_cmd.main, ["train", f], capsys)
    assert "unknown env 'builtin/push_bx'" in err and "builtin/push_box" in err


def test_wrong_config_key_names_close_matches(tmp_path, capsys):
    f = write_yaml(tmp_path, {"run": "PPO", "env": "builtin/push_box", "config": {"train_bach_size": 100}})
    err = error_of(rllib_cmd.main, ["train", "file", f], capsys)
    assert "'train_bach_size'" in err and "train_batch_size" in err


def test_wrong_experiment_key(tmp_path, capsys):
    f = write_yaml(tmp_path, {"run": "PPO", "env": "builtin/push_box", "stpo": {}})
    err = error_of(marlx_cmd.main, ["train", f], capsys)
    assert "'stpo'" in err and "stop" in err


def test_wrong_env_config_key(tmp_path, capsys):
    f = write_yaml(tmp_path, {"run": "PPO", "env": "builtin/push_box", "config": {"env_config": {"sise": 4}}})
    err = error_of(marlx_cmd.main, ["train", f], capsys)
    assert "'sise'" in err and "size" in err


def test_missing_optional_dependency_prints_install_command(tmp_path, capsys, monkeypatch):
    from marlx.envs import registry

    spec = registry.EnvSpec("test/needs_missing", "marlx.envs.builtin.push_box:PushBoxEnv",
                            requires=("marlx_no_such_module",), install="pip install marlx-no-such-module")
    monkeypatch.setitem(registry._REGISTRY, spec.name, spec)
    f = write_yaml(tmp_path, {"run": "PPO", "env": spec.name})
    err = error_of(marlx_cmd.main, ["train", f], capsys)
    assert "pip install marlx-no-such-module" in err


def test_not_a_checkpoint(tmp_path, capsys):
    err = error_of(rllib_cmd.main, ["evaluate", str(tmp_path)], capsys)
    assert "not an RLlib checkpoint" in err
    err = error_of(marlx_cmd.main, ["evaluate", str(tmp_path / "nope")], capsys)
    assert "does not exist" in err


def test_bad_json_flag(capsys):
    err = error_of(rllib_cmd.main, ["train", "--algo", "PPO", "--env", "builtin/push_box", "--config", "{lr: 1"], capsys)
    assert "--config must be a JSON object" in err


def test_resume_without_a_run(tmp_path, capsys):
    f = write_yaml(tmp_path, {"run": "PPO", "env": "builtin/push_box", "config": TINY_PPO,
                              "storage_path": str(tmp_path / "runs")})
    err = error_of(marlx_cmd.main, ["train", f, "--resume"], capsys)
    assert "nothing to resume" in err


def test_marlx_envs_lists_names_and_install_state(capsys):
    assert marlx_cmd.main(["envs"]) == 0
    out = capsys.readouterr().out
    assert "builtin/push_box" in out and "builtin/predator_prey" in out and "mpe/simple_spread" in out
    assert "installed" in out


# -- end to end through the console scripts ----------------------------------------------------------

@pytest.mark.slow
def test_rllib_train_file_checkpoint_tensorboard_and_evaluate(tmp_path):
    runs = tmp_path / "runs"
    f = write_yaml(tmp_path, {
        "run": "PPO", "env": "builtin/push_box", "stop": {"training_iteration": 50},
        "checkpoint_config": {"checkpoint_frequency": 1, "checkpoint_at_end": True},
        "config": TINY_PPO,
    }, name="e2e")
    # --stop given with a file replaces the file's stop criteria
    res = run_cli(os.path.join(BIN, "rllib"), "train", "file", f, "--storage-path", str(runs),
                  "--stop", '{"training_iteration": 2}')
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "iter    2 | env steps" in res.stdout and "iter    3 |" not in res.stdout
    assert glob.glob(str(runs / "e2e" / "*" / "checkpoint_*"))
    events = glob.glob(str(runs / "e2e" / "*" / "events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(events[0])
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert any("episode_return_mean" in t for t in tags) and any("success_rate" in t for t in tags)

    res = run_cli(os.path.join(BIN, "rllib"), "evaluate", str(runs / "e2e"), "--episodes", "3", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["algorithm"] == "PPO" and result["episodes"] == 3 and result["length_mean"] > 0

    res = run_cli(os.path.join(BIN, "marlx"), "evaluate", str(runs / "e2e"), "--algo", "DQN")
    assert res.returncode == 2 and "written by PPO, not DQN" in res.stderr


@pytest.mark.slow
def test_marlx_train_resume_continues_interrupted_run(tmp_path):
    runs = tmp_path / "runs"
    f = write_yaml(tmp_path, {
        "run": "PPO", "env": "builtin/push_box", "stop": {"training_iteration": 6},
        "checkpoint_config": {"checkpoint_frequency": 1, "checkpoint_at_end": True},
        "config": TINY_PPO, "storage_path": str(runs),
    }, name="resumable")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([os.path.join(BIN, "marlx"), "train", f], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    deadline = time.time() + 300
    while time.time() < deadline and len(glob.glob(str(runs / "resumable" / "*" / "checkpoint_*"))) < 2:
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    trial_dir = glob.glob(str(runs / "resumable" / "*" / "checkpoint_*"))[0].rsplit("/", 1)[0]
    with open(os.path.join(trial_dir, "result.json")) as fh:
        done_before = [json.loads(line)["training_iteration"] for line in fh if line.strip()]
    assert 2 <= max(done_before) < 6, done_before

    res = run_cli(os.path.join(BIN, "marlx"), "train", f, "--resume")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resuming resumable" in res.stdout
    iters = [int(line.split()[1]) for line in res.stdout.splitlines() if line.startswith("iter ")]
    assert iters and iters[0] > 1 and iters[-1] == 6, iters  # continued, not restarted


def test_stop_key_typo_is_caught(tmp_path, capsys):
    f = write_yaml(tmp_path, {"run": "PPO", "env": "builtin/push_box", "stop": {"training_iterations": 3}})
    err = error_of(marlx_cmd.main, ["train", f], capsys)
    assert "'training_iterations'" in err and "training_iteration" in err


def test_team_algorithm_needs_a_team_env(tmp_path, capsys):
    f = write_yaml(tmp_path, {"run": "QMIX", "env": "CartPole-v1"})
    err = error_of(marlx_cmd.main, ["train", f], capsys)
    assert "QMIX trains on marlx team envs" in err


def test_algorithm_validation_runs_before_ray(tmp_path, capsys):
    f = write_yaml(tmp_path, {"run": "QMIX", "env": "builtin/push_box", "config": {"mixer": "qmx"}})
    err = error_of(rllib_cmd.main, ["train", "file", f], capsys)
    assert "mixer must be one of" in err


def test_model_config_and_classic_checkpoint_freq_are_accepted():
    from marlx.cli.experiment import parse_experiments

    (exp,) = parse_experiments({"e": {
        "run": "PPO", "env": "builtin/push_box", "checkpoint_config": {"checkpoint_freq": 3},
        "config": {"model_config": {"fcnet_hiddens": [32, 32]}},
    }})
    assert exp.config.model_config["fcnet_hiddens"] == [32, 32]
    assert exp.checkpoint_config == {"checkpoint_frequency": 3}


def test_optim_option_typo_is_caught_before_ray(tmp_path, capsys):
    f = write_yaml(tmp_path, {"run": "PPO", "env": "builtin/push_box", "config": {"optim": {"sam": {"rhoo": 0.1}}}})
    err = error_of(marlx_cmd.main, ["train", f], capsys)
    assert "'rhoo'" in err and "rho" in err


def test_flags_that_a_file_defines_are_rejected_with_a_file(tmp_path, capsys):
    f = write_yaml(tmp_path, {"run": "PPO", "env": "builtin/push_box"})
    err = error_of(rllib_cmd.main, ["train", "file", f, "--algo", "DQN"], capsys)
    assert "--algo cannot be combined with a file" in err


def test_apply_overrides_replaces_stop_and_merges_config_and_checkpoint_freq():
    from marlx.cli.experiment import apply_overrides

    data = {"a": {"run": "PPO", "stop": {"training_iteration": 50, "time_total_s": 9},
                  "config": {"lr": 0.1, "gamma": 0.9}, "checkpoint_config": {"num_to_keep": 2}},
            "b": {"run": "PPO"}}
    out = apply_overrides(data, stop={"training_iteration": 2}, config={"lr": 0.5}, checkpoint_freq=3)
    assert out["a"]["stop"] == {"training_iteration": 2}
    assert out["a"]["config"] == {"lr": 0.5, "gamma": 0.9}
    assert out["a"]["checkpoint_config"] == {"num_to_keep": 2, "checkpoint_frequency": 3}
    assert out["b"] == {"run": "PPO", "stop": {"training_iteration": 2}, "config": {"lr": 0.5},
                        "checkpoint_config": {"checkpoint_frequency": 3}}
    assert apply_overrides({"c": {"run": "PPO"}}) == {"c": {"run": "PPO"}}


def test_marlx_train_takes_the_rllib_override_flags(tmp_path, capsys):
    f = write_yaml(tmp_path, {"run": "PPO", "env": "builtin/push_box", "stop": {"training_iteration": 3}})
    err = error_of(marlx_cmd.main, ["train", f, "--stop", '{"training_iterations": 2}'], capsys)
    assert "'training_iterations'" in err
    err = error_of(marlx_cmd.main, ["train", f, "--config", '{"train_bach_size": 100}'], capsys)
    assert "'train_bach_size'" in err and "train_batch_size" in err
    err = error_of(marlx_cmd.main, ["train", f, "--checkpoint-freq", "-1"], capsys)
    assert "checkpoint_frequency must be a positive integer" in err


def test_private_rllib_apis_exist_in_this_ray():
    """marlx/_rllib.py names Ray 2.60 internals; this fails first when Ray changes them."""
    import ray
    from ray import tune
    from ray.rllib.algorithms.ppo import PPOConfig

    from marlx import _rllib

    assert ray.__version__ == "2.60.0"
    assert _rllib.translate_config_key(PPOConfig(), "num_workers") == "num_env_runners"
    assert "_local_tuner" in tune.Tuner.__init__.__code__.co_names
    from ray.tune.impl.tuner_internal import TunerInternal

    assert "_run_config" in TunerInternal.__init__.__code__.co_names
    import importlib

    from ray._private.authentication import authentication_token_setup as auth

    assert callable(auth.maybe_enable_token_auth_if_token_available)
    for name in _rllib.NOISY_RAY_LINES:
        assert importlib.import_module(name).logger.name == name
