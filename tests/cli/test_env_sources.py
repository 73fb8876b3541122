"""Environments from YAML beyond the registered names: the user's own TeamEnv (by import path, or registered by a
module in the file's `imports:`), and gymnasium multi-agent ids (`lbforaging:Foraging-...`), also on remote env
runners."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from marlx.cli import marlx_cmd
from marlx.cli.experiment import parse_experiments
from marlx.envs.registry import IMPORTS_KEY, is_registered, make_rllib_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)

# A user's package: a TeamEnv subclass and a register_env call, as README "Adding an environment" shows.
USER_MODULE = textwrap.dedent('''
    import numpy as np

    from marlx.envs import EnvSpec, TeamEnv, register_env


    class Corridor(TeamEnv):
        """Two agents on a line of `length` cells; the team earns +1 when both reach the end (action 1 steps right)."""

        n_agents, n_actions, obs_dim, state_dim = 2, 2, 1, 2

        def __init__(self, length=3, episode_limit=6):
            self.length, self.episode_limit = length, episode_limit
            super().__init__()

        def _reset(self, rng, options):
            self.pos = np.zeros(2)
            return {}

        def _step(self, actions):
            self.pos = np.minimum(self.pos + actions, self.length)
            done = bool((self.pos == self.length).all())
            return float(done), done, {"success": done}

        def get_obs(self):
            return (self.pos / self.length).reshape(2, 1)

        def get_state(self):
            return self.pos / self.length


    def make_corridor(**kwargs):
        return Corridor(**kwargs)


    register_env(EnvSpec("mine/corridor", "MODULE:Corridor", defaults={"length": 2}), overwrite=True)
''')

TINY_QMIX = {"num_envs_per_env_runner": 2, "batch_size_episodes": 2, "learning_starts_episodes": 2, "seed": 0}


def write_user_module(tmp_path, name):
    (tmp_path / f"{name}.py").write_text(USER_MODULE.replace("MODULE", name))
    return str(tmp_path)


def test_imports_register_the_users_env_and_travel_in_env_config(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(write_user_module(tmp_path, "user_envs_a"))
    (exp,) = parse_experiments({
        "imports": ["user_envs_a"],
        "e": {"run": "QMIX", "env": "mine/corridor", "config": {"env_config": {"length": 3}}},
    })
    assert is_registered("mine/corridor")
    assert exp.config.env_config == {"length": 3, IMPORTS_KEY: ["user_envs_a"]}
    env = make_rllib_env("mine/corridor", exp.config.env_config)  # what an env runner does
    assert type(env).__name__ == "Corridor" and env.length == 3


def test_import_path_to_a_team_env_class_or_factory(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(write_user_module(tmp_path, "user_envs_b"))
    for target in ("user_envs_b:Corridor", "user_envs_b:make_corridor"):
        (exp,) = parse_experiments({"e": {"run": "VDN", "env": target, "config": {"env_config": {"length": 4}}}})
        env = make_rllib_env(exp.config.env, exp.config.env_config)
        assert type(env).__name__ == "Corridor" and env.length == 4


def test_bad_env_sources_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(write_user_module(tmp_path, "user_envs_c"))

    def error(data):
        path = tmp_path / "exp.yaml"
        path.write_text(yaml.safe_dump(data))
        assert marlx_cmd.main(["train", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        return err

    assert "cannot import 'no_such_module'" in error({"imports": ["no_such_module"], "e": {"run": "QMIX"}})
    assert "imports must be a list of module names" in error({"imports": {"a": 1}, "e": {"run": "QMIX"}})
    err = error({"e": {"run": "QMIX", "env": "user_envs_c:Nothing"}})
    assert "registered no gymnasium id 'Nothing'" in err and "has no attribute 'Nothing'" in err
    err = error({"e": {"run": "QMIX", "env": "user_envs_c:np"}})
    assert "is a module" in err
    err = error({"e": {"run": "QMIX", "env": "builtin/push_bx"}})  # close matches for team algorithms too
    assert "did you mean 'builtin/push_box'" in err


@pytest.mark.slow
def test_users_env_and_lbf_train_from_yaml_on_remote_env_runners(tmp_path):
    """One `marlx train` file: a user-registered env and an LBF gymnasium id, both sampled by a remote env runner
    (which imports the user's module itself), and a TeamEnv class by import path on the local runner."""
    pytest.importorskip("lbforaging")  # the lbf extra (CI installs it; the README's quick start does not)
    user_dir = write_user_module(tmp_path, "user_envs_d")
    runs = tmp_path / "runs"
    one = {"stop": {"training_iteration": 1}, "checkpoint_config": {"checkpoint_at_end": False}}
    data = {
        "imports": ["user_envs_d"],
        "user-registered": {"run": "QMIX", "env": "mine/corridor", **one,
                            "config": {**TINY_QMIX, "num_env_runners": 1, "env_config": {"episode_limit": 4}}},
        "user-class": {"run": "QMIX", "env": "user_envs_d:Corridor", **one,
                       "config": {**TINY_QMIX, "num_env_runners": 0, "env_config": {"length": 9, "episode_limit": 3}}},
        "lbf": {"run": "QMIX", "env": "lbforaging:Foraging-8x8-2p-2f-coop-v3", **one,
                "config": {**TINY_QMIX, "num_env_runners": 1, "env_config": {"time_limit": 7}}},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_DEDUP_LOGS="0",
               PYTHONPATH=os.pathsep.join([user_dir, ROOT, os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([os.path.join(BIN, "marlx"), "train", str(path), "--storage-path", str(runs)],
                         capture_output=True, text=True, timeout=900, env=env, cwd=str(tmp_path))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    def episode_lengths(name):
        (trial,) = [d for d in (runs / name).iterdir() if d.is_dir()]
        rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines() if line.strip()]
        return rows[-1]["env_runners"]["episode_len_mean"]

    # each env's own episode limits show that the right env ran with the file's env_config
    assert 1 <= episode_lengths("user-registered") <= 4  # length 2: both agents may arrive after 2 steps
    assert episode_lengths("user-class") == 3  # length 9 cannot be reached in 3 steps
    assert episode_lengths("lbf") <= 7
