"""Joining a Ray cluster by HOST:PORT: a head started with `ray start --head --port P` (Ray 2.60 enables token
authentication there), `marlx train --address 127.0.0.1:P` trains on it; without the head's token the error is
one line that names token authentication. The head is this test's own: a free port, its own temp dir, stopped
by its own process group (never `ray stop`, which would stop every cluster on the machine)."""

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
ENV = dict(os.environ, OMP_NUM_THREADS="1")
ENV.pop("RAY_ADDRESS", None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_group(proc, wait_s=90):
    """SIGTERM the head's process group (ray start --block, gcs_server, raylet, workers), then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + wait_s
        while time.time() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                proc.wait(timeout=10)
                return
            proc.poll()  # reap the leader so that the group can empty
            time.sleep(1)


@pytest.mark.slow
def test_train_joins_a_cluster_by_host_port_with_token_auth(tmp_path):
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="marlx-ray-", dir="/tmp")  # Ray's socket paths must stay short
    log = open(tmp_path / "head.log", "w")
    head = subprocess.Popen(
        [os.path.join(BIN, "ray"), "start", "--head", "--port", str(port), "--temp-dir", temp, "--num-cpus", "2",
         "--include-dashboard=false", "--disable-usage-stats", "--block"],
        stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
    try:
        deadline = time.time() + 240
        while "Ray runtime started" not in (tmp_path / "head.log").read_text():
            assert head.poll() is None and time.time() < deadline, (tmp_path / "head.log").read_text()[-3000:]
            time.sleep(1)
        assert "Token authentication is enabled" in (tmp_path / "head.log").read_text()

        f = tmp_path / "exp.yaml"
        f.write_text(yaml.safe_dump({"on-cluster": {
            "run": "QMIX", "env": "builtin/push_box", "stop": {"training_iteration": 2},
            "storage_path": str(tmp_path / "runs"),
            "config": {"env_config": {"size": 4, "box_start_row": 1, "episode_limit": 20},
                       "num_env_runners": 1, "num_envs_per_env_runner": 2,
                       "batch_size_episodes": 4, "learning_starts_episodes": 4}}}))
        res = subprocess.run([os.path.join(BIN, "marlx"), "train", str(f), "--address", f"127.0.0.1:{port}"],
                             capture_output=True, text=True, timeout=400, env=ENV, cwd=ROOT)
        out = res.stdout + res.stderr
        assert res.returncode == 0, out[-3000:]
        assert "InvalidAuthToken" not in out and "Traceback" not in out, out[-3000:]
        iters = [int(line.split()[1]) for line in res.stdout.splitlines() if line.startswith("iter ")]
        assert iters == [1, 2], out[-3000:]
        # it ran on that head: the driver's log is in the head's session folder
        assert glob.glob(os.path.join(temp, "session_*", "logs", "python-core-driver-*"))

        # a machine without the head's token: one line naming the cause and the fix
        home = tmp_path / "home"
        home.mkdir()
        env = {k: v for k, v in ENV.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")}
        res = subprocess.run([os.path.join(BIN, "marlx"), "train", str(f), "--address", f"127.0.0.1:{port}"],
                             capture_output=True, text=True, timeout=400, env={**env, "HOME": str(home)}, cwd=ROOT)
        err = res.stderr.strip()
        assert res.returncode == 2, res.stdout[-2000:] + err[-2000:]
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err[-3000:]
        assert "uses token authentication" in err and "ray get-auth-token" in err and "RAY_AUTH_TOKEN" in err, err
    finally:
        _stop_group(head)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)
