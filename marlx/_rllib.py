"""Every private Ray/RLlib API that marlx uses, in one place.

Each function is small and names the Ray version whose internals it relies on (Ray 2.60). When Ray is upgraded,
this file is the one to check; nothing else in marlx reaches into private attributes.
"""

from __future__ import annotations


def set_tuner_callbacks(tuner, callbacks: list) -> None:
    """Replace the callbacks of a restored ``tune.Tuner``.

    Ray 2.60: ``Tuner.restore`` keeps the stored ``RunConfig`` (callbacks are not picklable in general, so they are
    dropped) and has no public setter; the run config lives at ``tuner._local_tuner._run_config``.
    """
    tuner._local_tuner._run_config.callbacks = list(callbacks)


def translate_config_key(algo_config, key: str) -> str:
    """The attribute name that ``AlgorithmConfig.update_from_dict`` writes ``key`` to (old names translated).

    Ray 2.60: ``AlgorithmConfig._translate_special_keys`` is private; marlx calls it to validate YAML keys exactly as
    RLlib will read them.
    """
    return algo_config._translate_special_keys(key, warn_deprecated=False)


def module_forward(module, batch: dict, explore: bool, t: int) -> dict:
    """One sampling forward pass of an RLModule that is already in eval mode.

    Ray 2.60: ``TorchRLModule.forward_exploration/forward_inference`` call ``self.eval()`` (a recursive walk over
    all sub-modules) before every pass, which costs more than the pass itself at one env; the team runner puts its
    module in eval mode once and calls the documented override points ``_forward_exploration`` /
    ``_forward_inference`` directly, exactly as those public methods do.
    """
    if module.training:
        module.eval()
    if explore:
        return module._forward_exploration(batch, t=t)
    return module._forward_inference(batch)


def parallel_sample(env_runner_group, sample_timeout_s):
    """``synchronous_parallel_sample`` with the new-stack flags RLlib's own algorithms pass (Ray 2.60).

    ``_uses_new_env_runners`` and ``_return_metrics`` are underscored keyword arguments of a public function.
    """
    from ray.rllib.execution.rollout_ops import synchronous_parallel_sample

    return synchronous_parallel_sample(worker_set=env_runner_group, concat=True, sample_timeout_s=sample_timeout_s,
                                       _uses_new_env_runners=True, _return_metrics=True)
