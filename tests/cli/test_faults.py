"""Faults a real run survives: SIGTERM/SIGINT during `marlx train` write a checkpoint and `--resume` continues
from it (iteration, env-step counter, epsilon and replay consistent)."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MARLX = os.path.join(os.path.dirname(sys.executable), "marlx")
ENV = dict(os.environ, OMP_NUM_THREADS="1", RAY_DEDUP_LOGS="0")

#: QMIX on push_box, 4 sub-envs x 20 steps: <= 80 env steps and exactly 4 episodes per iteration.
EPS_START, EPS_FINISH, EPS_ANNEAL = 1.0, 0.05, 2000
QMIX_TINY = {
    "env_config": {"size": 4, "box_start_row": 1, "episode_limit": 20},
    "num_env_runners": 0, "num_envs_per_env_runner": 4,
    "batch_size_episodes": 8, "learning_starts_episodes": 8, "buffer_size": 200,
    "epsilon_start": EPS_START, "epsilon_finish": EPS_FINISH, "epsilon_anneal_time": EPS_ANNEAL, "seed": 0,
}
ITERATIONS = 40


def _results(trial_dir):
    with open(os.path.join(trial_dir, "result.json")) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _train_until_signal(f, sig, after_iteration):
    """`marlx train f` as a subprocess, sent ``sig`` once its progress line for ``after_iteration`` is out."""
    proc = subprocess.Popen([MARLX, "train", f], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ENV, cwd=ROOT)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(f"iter {after_iteration:4d} "):
                proc.send_signal(sig)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, "".join(lines)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_writes_a_checkpoint_and_resume_continues_from_it(tmp_path, sig):
    runs = tmp_path / "runs"
    f = tmp_path / "exp.yaml"
    # periodic checkpoints every 25 iterations: the one the signal writes is the only one after iteration 25
    f.write_text(yaml.safe_dump({"stopped": {
        "run": "QMIX", "env": "builtin/push_box", "stop": {"training_iteration": ITERATIONS},
        "checkpoint_config": {"checkpoint_frequency": 25, "checkpoint_at_end": True},
        "config": QMIX_TINY, "storage_path": str(runs)}}))
    code, out = _train_until_signal(str(f), sig, after_iteration=6)
    assert code == 128 + sig, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    m = re.search(rf"stopped by {sig.name}; checkpoint at iteration (\d+) \((\d+) env steps\): (\S+)\. ", out)
    assert m, out[-3000:]
    stopped_at, steps_at, ckpt = int(m.group(1)), int(m.group(2)), m.group(3)
    assert 6 <= stopped_at < 25, out[-3000:]  # not the periodic checkpoint: the signal wrote it
    assert os.path.isfile(os.path.join(ckpt, "rllib_checkpoint.json"))
    assert os.path.isfile(os.path.join(ckpt, "marlx_checksums.json"))  # marlx evaluate checks every byte
    trial_dir = os.path.dirname(ckpt)
    before = {r["training_iteration"]: r for r in _results(trial_dir)}
    assert before[stopped_at]["num_env_steps_sampled_lifetime"] == steps_at

    res = subprocess.run([MARLX, "train", str(f), "--resume"], capture_output=True, text=True, timeout=400,
                         env=ENV, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Traceback" not in res.stdout + res.stderr
    iters = [int(line.split()[1]) for line in res.stdout.splitlines() if line.startswith("iter ")]
    assert iters[0] == stopped_at + 1 and iters[-1] == ITERATIONS, iters  # from the newest checkpoint, to the end
    after = {r["training_iteration"]: r for r in _results(trial_dir) if r["training_iteration"] > stopped_at}
    first = after[stopped_at + 1]
    # the env-step counter continues: one more iteration of at most 4 x 20 steps
    assert steps_at < first["num_env_steps_sampled_lifetime"] <= steps_at + 80
    # epsilon follows the lifetime env steps (PyMARL's linear schedule), not a restarted counter
    for r in after.values():
        t = r["num_env_steps_sampled_lifetime"]
        expected = max(EPS_FINISH, EPS_START - (EPS_START - EPS_FINISH) * t / EPS_ANNEAL)
        assert r["epsilon"] == pytest.approx(expected, abs=1e-6), (r["training_iteration"], t, r["epsilon"])
    # the replay was checkpointed without contents: it restarts empty and refills with 4 episodes per iteration,
    # while the lifetime episode counter goes on
    assert first["replay_episodes"] == 4
    assert after[stopped_at + 2]["replay_episodes"] == 8
    assert first["num_episodes_sampled_lifetime"] == before[stopped_at]["num_episodes_sampled_lifetime"] + 4
    # and learning resumed once the replay held learning_starts_episodes again
    assert after[ITERATIONS]["learners"]["default_policy"]["num_module_steps_trained_lifetime"] > \
        before[stopped_at]["learners"]["default_policy"]["num_module_steps_trained_lifetime"]
