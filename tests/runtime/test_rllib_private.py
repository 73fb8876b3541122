"""marlx's private RLlib uses (marlx/_rllib.py) still exist in the pinned Ray 2.60 with the shape marlx relies on."""

import inspect

import ray
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.execution.rollout_ops import synchronous_parallel_sample


def test_ray_is_the_pinned_version():
    assert ray.__version__ == "2.60.0"


def test_runner_private_uses_exist():
    params = inspect.signature(synchronous_parallel_sample).parameters
    assert {"_uses_new_env_runners", "_return_metrics"} <= set(params)
    assert hasattr(TorchRLModule, "_forward_exploration") and hasattr(TorchRLModule, "_forward_inference")
    # the reason marlx bypasses the public forward_*: Ray 2.60 calls eval() on every pass
    assert "self.eval()" in inspect.getsource(TorchRLModule.forward_exploration)


def test_tune_private_uses_exist():
    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
    from ray.tune import Tuner
    from ray.tune.impl.tuner_internal import TunerInternal
    from ray.tune.logger.logger import LoggerCallback

    assert "self._local_tuner" in inspect.getsource(Tuner.__init__)  # set_tuner_callbacks
    assert "self._run_config" in inspect.getsource(TunerInternal.__init__)
    assert hasattr(AlgorithmConfig, "_translate_special_keys")  # translate_config_key
    # the Ray behaviour that upload_longer_trial_files works around (KeepTrialLogs, tests/cli/test_trial_logs.py)
    assert hasattr(LoggerCallback, "_restore_from_remote")


class _Trial:
    """The two attributes of a Tune ``Trial`` that upload_longer_trial_files reads, on a real StorageContext."""

    def __init__(self, storage, local_path):
        self.storage, self.local_path = storage, local_path


def test_upload_longer_trial_files(tmp_path):
    from ray.train._internal.storage import StorageContext

    from marlx._rllib import upload_longer_trial_files

    storage = StorageContext(str(tmp_path / "stored"), "exp", trial_dir_name="trial_0")
    remote = tmp_path / "stored" / "exp" / "trial_0"
    remote.mkdir(parents=True)
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "result.json").write_text('{"i": 1}\n{"i": 2}\n{"i": 3}\n')  # longer than the stored copy
    (remote / "result.json").write_text('{"i": 1}\n')
    (staging / "progress.csv").write_text("i\n1\n")  # shorter than the stored copy: left alone
    (remote / "progress.csv").write_text("i\n1\n2\n")
    trial = _Trial(storage, str(staging))
    assert storage.trial_fs_path == str(remote)

    assert upload_longer_trial_files(trial, ("result.json", "progress.csv", "missing.txt")) == ["result.json"]
    assert (remote / "result.json").read_text() == '{"i": 1}\n{"i": 2}\n{"i": 3}\n'
    assert (remote / "progress.csv").read_text() == "i\n1\n2\n"
    (remote / "result.json").unlink()  # a stored copy that does not exist yet is uploaded too
    assert upload_longer_trial_files(trial, ("result.json",)) == ["result.json"]
    assert upload_longer_trial_files(_Trial(storage, None), ("result.json",)) == []


def test_registered_env_creator():
    from ray.tune import register_env

    from marlx._rllib import registered_env_creator

    def creator(cfg):
        return cfg

    register_env("marlx_test_private_env", creator)
    assert registered_env_creator("marlx_test_private_env")({"a": 1}) == {"a": 1}
    assert registered_env_creator("marlx_no_such_env") is None
