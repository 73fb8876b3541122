"""Bad input, one line each, exit 2, no traceback: a config value of the wrong type (generic, from the config
class's defaults) and a damaged checkpoint, whichever file is damaged (also weights that still unpickle)."""

import os
import shutil

import pytest
import yaml

from marlx.cli import marlx_cmd, rllib_cmd
from marlx.cli.evaluate import CHECKSUMS_FILE, check_checkpoint_files, write_checksums
from marlx.cli.experiment import check_value_type, parse_experiments
from marlx.errors import MarlxError, NotACheckpointError

from cli_helpers import error_of


def write_yaml(tmp_path, config, run="QMIX"):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"exp": {"run": run, "env": "builtin/push_box", "config": config}}))
    return str(path)


# -- config values of the wrong type ---------------------------------------------------------------

def test_wrong_type_names_key_expected_type_and_value(tmp_path, capsys):
    err = error_of(marlx_cmd.main, ["train", write_yaml(tmp_path, {"batch_size_episodes": "lots"})], capsys)
    assert err == ("marlx: error: exp.config.batch_size_episodes must be an integer (its default is 32), "
                   "got the string 'lots'")
    err = error_of(marlx_cmd.main, ["train", write_yaml(tmp_path, {"double_q": "yes please"})], capsys)
    assert "exp.config.double_q must be true or false" in err and "'yes please'" in err
    err = error_of(rllib_cmd.main, ["train", "file", write_yaml(tmp_path, {"mixer": 3})], capsys)
    assert "exp.config.mixer must be a string (its default is 'qmix'), got the integer 3" in err
    # an RLlib algorithm's keys too, and the --config flag
    f = write_yaml(tmp_path, {"train_batch_size": 200}, run="PPO")
    err = error_of(marlx_cmd.main, ["train", f, "--config", '{"gamma": [0.9]}'], capsys)
    assert "exp.config.gamma must be a number" in err and "[0.9]" in err
    err = error_of(marlx_cmd.main, ["train", f, "--config", '{"model_config": 5}'], capsys)
    assert "model_config" in err


def test_values_rllib_accepts_pass():
    (exp,) = parse_experiments({"exp": {"run": "PPO", "env": "builtin/push_box", "config": {
        "lr": "1e-3",                              # YAML 1.1 reads 1e-3 as a string: converted, with a notice
        "entropy_coeff": [[0, 0.01], [1000, 0.0]],  # a schedule for a float
        "num_cpus_per_learner": 0.5,                # a number for the default "auto"
        "rollout_fragment_length": "auto",          # "auto" for an int
        "train_batch_size": 400.0, "seed": None, "num_env_runners": 0}}})
    assert exp.config.lr == pytest.approx(1e-3)
    assert any("'1e-3' is read as the number 0.001" in n for n in exp.notices), exp.notices
    assert exp.config.entropy_coeff == [[0, 0.01], [1000, 0.0]]


def test_check_value_type_rules():
    assert check_value_type(5, "7", "k", []) == 7
    assert check_value_type(None, "anything", "k") == "anything"  # no default type: not checked
    assert check_value_type(int, 3, "k") == 3  # a class default: not checked
    assert check_value_type(True, None, "k") is None
    with pytest.raises(MarlxError, match=r"k must be an integer \(its default is 5\), got the string '7.5'"):
        check_value_type(5, "7.5", "k")
    with pytest.raises(MarlxError, match="k must be a mapping"):
        check_value_type({}, [1], "k")
    with pytest.raises(MarlxError, match="k must be a list"):
        check_value_type([], "a", "k")


# -- damaged checkpoints -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def qmix_checkpoint(tmp_path_factory, ray_session):
    from marlx.cli.experiment import parse_experiments

    (exp,) = parse_experiments({"c": {"run": "QMIX", "env": "builtin/push_box", "config": {
        "env_config": {"size": 4, "box_start_row": 1, "episode_limit": 10}, "num_env_runners": 0,
        "num_envs_per_env_runner": 2, "batch_size_episodes": 2, "learning_starts_episodes": 2}}})
    algo = exp.config.build_algo()
    try:
        algo.train()
        path = str(tmp_path_factory.mktemp("ckpt") / "checkpoint_000000")
        algo.save_to_path(path)
    finally:
        algo.stop()
    return path


def _copy(src, tmp_path, name):
    dst = str(tmp_path / name)
    shutil.copytree(src, dst)
    return dst


def _truncate(file):
    with open(file, "rb") as f:
        data = f.read()
    with open(file, "wb") as f:
        f.write(data[: len(data) // 2])


WEIGHTS = os.path.join("learner_group", "learner", "rl_module", "default_policy", "module_state.pkl")


@pytest.mark.parametrize("rel", [os.path.join("env_runner", "state.pkl"), WEIGHTS, "algorithm_state.pkl",
                                 os.path.join("learner_group", "learner", "state.pkl"),
                                 os.path.join("learner_group", "learner", "metadata.json"), "rllib_checkpoint.json"])
def test_truncated_checkpoint_file_is_one_line(qmix_checkpoint, tmp_path, capsys, rel):
    check_checkpoint_files(qmix_checkpoint)  # the intact one passes
    path = _copy(qmix_checkpoint, tmp_path, "truncated")
    _truncate(os.path.join(path, rel))
    err = error_of(marlx_cmd.main, ["evaluate", path, "--episodes", "1"], capsys)
    assert f"checkpoint {path} is damaged: {rel} is truncated or corrupt" in err, err
    assert "use another checkpoint" in err


def test_missing_module_weights_are_not_evaluated_silently(qmix_checkpoint, tmp_path, capsys):
    path = _copy(qmix_checkpoint, tmp_path, "no_weights")
    shutil.rmtree(os.path.join(path, os.path.dirname(WEIGHTS)))  # RLlib itself would restore the rest silently
    err = error_of(rllib_cmd.main, ["evaluate", path], capsys)
    assert f"{WEIGHTS} is missing (the weights of module 'default_policy')" in err, err
    path = _copy(qmix_checkpoint, tmp_path, "no_learner_state")
    os.remove(os.path.join(path, "learner_group", "learner", "state.pkl"))
    err = error_of(marlx_cmd.main, ["evaluate", path], capsys)
    assert os.path.join("learner_group", "learner", "state.pkl") + " is missing" in err, err


def test_flipped_weight_bytes_are_caught_by_the_checksums(qmix_checkpoint, tmp_path, capsys):
    import pickle

    path = _copy(qmix_checkpoint, tmp_path, "flipped")
    write_checksums(path)  # what marlx train/tune do for every checkpoint
    check_checkpoint_files(path)
    weights = os.path.join(path, WEIGHTS)
    import numpy as np

    with open(weights, "rb") as f:
        data = f.read()
    arrays = []
    _collect_arrays(pickle.loads(data), arrays)
    biggest = max(arrays, key=lambda a: a.nbytes)
    at = data.find(biggest.tobytes())
    assert at > 0
    flipped = bytearray(data)
    flipped[at + biggest.nbytes // 2] ^= 0x40  # inside the largest weight tensor: it still unpickles
    with open(weights, "wb") as f:
        f.write(bytes(flipped))
    changed = []
    _collect_arrays(pickle.loads(bytes(flipped)), changed)
    assert sum(not np.array_equal(a, b) for a, b in zip(arrays, changed)) == 1  # other weights, silently
    err = error_of(marlx_cmd.main, ["evaluate", path, "--video", str(tmp_path / "v.gif")], capsys)
    assert f"{WEIGHTS} is corrupt: its bytes differ from those written with the checkpoint" in err, err
    assert os.path.isfile(os.path.join(path, CHECKSUMS_FILE))


def _collect_arrays(node, out):
    import numpy as np

    if isinstance(node, np.ndarray):
        out.append(node)
    elif isinstance(node, dict):
        for v in node.values():
            _collect_arrays(v, out)
    elif isinstance(node, (list, tuple)):
        for v in node:
            _collect_arrays(v, out)


def test_checkpoint_check_raises_not_a_checkpoint(qmix_checkpoint, tmp_path):
    path = _copy(qmix_checkpoint, tmp_path, "t")
    _truncate(os.path.join(path, WEIGHTS))
    with pytest.raises(NotACheckpointError):
        check_checkpoint_files(path)


def test_declared_types_of_the_config_class_decide(tmp_path, capsys):
    from marlx.algorithms.qmix import QMIXConfig
    from marlx.cli.experiment import declared_types

    declared = declared_types(QMIXConfig)
    assert declared["num_updates_per_iteration"] == "int | str"  # self.num_updates_per_iteration: int | str = 1
    (exp,) = parse_experiments({"exp": {"run": "QMIX", "env": "builtin/push_box",
                                        "config": {"num_updates_per_iteration": "per_episode"}}})
    assert exp.config.num_updates_per_iteration == "per_episode"
    capsys.readouterr()  # RLlib's new-API-stack notice of the direct call above (the commands silence it)
    err = error_of(marlx_cmd.main, ["train", write_yaml(tmp_path, {"num_updates_per_iteration": [2]})], capsys)
    assert "exp.config.num_updates_per_iteration must be an integer or a string (its default is 1), got the list [2]" \
        in err, err
    assert check_value_type(1, "3", "k", [], declared="int") == 3
    with pytest.raises(MarlxError, match=r"k must be a number \(its default is 0.5\), got the string 'x'"):
        check_value_type(0.5, "x", "k", declared="float | None")
    with pytest.raises(MarlxError, match="or a schedule"):  # beyond the simple types: the default's type decides
        check_value_type(0.5, "x", "k", declared="Callable | float")
