"""What `marlx train` prints: no lines a user cannot act on (Ray's token notice, RLlib's RLModule deprecation,
Tune's gputil hint and its TensorBoard line pointing into the Ray session folder), marlx's own run-folder line,
and a success column only for envs that report success (push_box does, CartPole does not)."""

import os
import subprocess
import sys

import pytest
import yaml

from marlx.cli.runner import format_progress, reports_success

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MARLX = os.path.join(os.path.dirname(sys.executable), "marlx")
NOISE = ("Token authentication is enabled", "has been deprecated", "Install gputil", "tensorboard --logdir /tmp/ray",
         "session_", "driver_artifacts", "Configuration for experiment", "View detailed results here", "Traceback")


def _result(success=None, ret=1.5, restarts=0):
    er = {"episode_return_mean": ret, "num_env_steps_sampled": 100, "num_env_steps_sampled_lifetime": 300}
    if success is not None:
        er["success_rate"] = success
    return {"training_iteration": 3, "num_env_steps_sampled_lifetime": 300, "env_runners": er,
            "time_this_iter_s": 0.5, "time_total_s": 2.0,
            "fault_tolerance": {"num_remote_worker_restarts": restarts}}


def test_progress_line_values():
    assert format_progress(_result(0.25)) == \
        "iter    3 | env steps       300 | return    1.500 | success  0.25 |     200 steps/s |     2.0 s"
    assert format_progress(_result()) == "iter    3 | env steps       300 | return    1.500 |     200 steps/s |     2.0 s"
    # no episode ended yet: return and success both nan (the env may still report success)
    assert "| success   nan |" in format_progress(_result(ret=float("nan")))
    assert format_progress(_result(0.5, restarts=2)).endswith("| env-runner restarts 2")
    # per trial: success once seen, none once episodes ended without it, unknown before
    assert reports_success(_result(ret=float("nan")), None) is None
    assert reports_success(_result(), None) is False
    assert reports_success(_result(0.0), None) is True
    assert reports_success(_result(ret=float("nan")), True) is True


@pytest.mark.slow
def test_marlx_train_console_is_clean(tmp_path):
    runs = tmp_path / "runs"
    f = tmp_path / "exp.yaml"
    f.write_text(yaml.safe_dump({
        "cartpole": {"run": "PPO", "env": "CartPole-v1", "stop": {"training_iteration": 2},
                     "storage_path": str(runs),
                     "config": {"num_env_runners": 0, "train_batch_size": 200, "minibatch_size": 100,
                                "num_epochs": 1, "seed": 0}},
        "pushbox": {"run": "QMIX", "env": "builtin/push_box", "stop": {"training_iteration": 2},
                    "storage_path": str(runs),
                    "config": {"env_config": {"size": 4, "box_start_row": 1, "episode_limit": 20},
                               "num_env_runners": 0, "num_envs_per_env_runner": 2,
                               "batch_size_episodes": 2, "learning_starts_episodes": 2, "seed": 0}},
    }))
    res = subprocess.run([MARLX, "train", str(f)], capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    for noise in NOISE:
        assert noise not in out, (noise, out[-3000:])
    for name in ("cartpole", "pushbox"):
        folder = str(runs / name)
        assert f"run folder: {folder} (tensorboard --logdir {folder})" in res.stdout
    lines = [line for line in res.stdout.splitlines() if line.startswith("iter ")]
    assert len(lines) == 4, res.stdout
    assert all("success" not in line for line in lines[:2]), lines  # CartPole reports no success
    assert all("| success  0.00 |" in line or "| success  1.00 |" in line for line in lines[2:]), lines
    # the rest of stdout: checkpoints and the done lines, nothing else
    other = [line for line in res.stdout.splitlines() if line.strip() and not line.startswith(("iter ", "run folder: "))]
    assert all(line.startswith(("checkpoint: ", "done: ", "  last checkpoint: ", "  tensorboard --logdir ")) for line in other), other
