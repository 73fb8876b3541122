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
