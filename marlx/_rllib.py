"""Every private Ray/RLlib API that marlx uses, in one place.

Each function is small and names the Ray version whose internals it relies on (Ray 2.60). When Ray is upgraded,
this file is the one to check; nothing else in marlx reaches into private attributes.
"""

from __future__ import annotations

import os


def set_tuner_callbacks(tuner, callbacks: list) -> None:
    """Replace the callbacks of a restored ``tune.Tuner``.

    Ray 2.60: ``Tuner.restore`` keeps the stored ``RunConfig`` (callbacks are not picklable in general, so they are
    dropped) and has no public setter; the run config lives at ``tuner._local_tuner._run_config``.
    """
    tuner._local_tuner._run_config.callbacks = list(callbacks)


def upload_longer_trial_files(trial, names) -> list[str]:
    """Upload each of a trial's driver-side (staging) files ``names`` to its storage path where the staging copy is
    the longer one (or the stored one is missing); returns the names uploaded.

    Ray 2.60: a Tune ``Trial`` keeps its staging directory at ``trial.local_path`` and its storage location in the
    private ``trial.storage`` (a ``StorageContext``: ``storage_filesystem``, ``trial_fs_path``).
    """
    import pyarrow.fs

    if not trial.local_path:
        return []
    fs = trial.storage.storage_filesystem
    uploaded = []
    for name in names:
        local = os.path.join(trial.local_path, name)
        if not os.path.isfile(local):
            continue
        remote = f"{trial.storage.trial_fs_path}/{name}"
        stored = fs.get_file_info(remote)
        if stored.type == pyarrow.fs.FileType.File and stored.size >= os.path.getsize(local):
            continue
        pyarrow.fs.copy_files(local, remote, destination_filesystem=fs)
        uploaded.append(name)
    return uploaded


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


def registered_env_creator(name: str):
    """The env creator registered under ``name`` with ``tune.register_env`` (None when there is none).

    Ray 2.60: Tune has no public lookup; RLlib's own env runners read the private ``ray.tune.registry._global_registry``.
    """
    from ray.tune.registry import ENV_CREATOR, _global_registry

    return _global_registry.get(ENV_CREATOR, name) if _global_registry.contains(ENV_CREATOR, name) else None


def parallel_sample(env_runner_group, sample_timeout_s):
    """``synchronous_parallel_sample`` with the new-stack flags RLlib's own algorithms pass (Ray 2.60).

    ``_uses_new_env_runners`` and ``_return_metrics`` are underscored keyword arguments of a public function.
    """
    from ray.rllib.execution.rollout_ops import synchronous_parallel_sample

    return synchronous_parallel_sample(worker_set=env_runner_group, concat=True, sample_timeout_s=sample_timeout_s,
                                       _uses_new_env_runners=True, _return_metrics=True)


def enable_token_auth_if_available() -> bool:
    """Turn on Ray's token authentication in this driver when a token is at hand; True if it is on.

    Ray 2.60: ``ray start --head`` enables token authentication whenever a token exists (``~/.ray/auth_token``,
    which every local ``ray.init()`` writes, ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``), but ``ray.init`` turns
    it on in a driver only for ``address=None/"auto"``: a driver given HOST:PORT connects without its token and
    the head rejects it (``InvalidAuthToken``). This is Ray's own private helper for the auto case,
    ``ray._private.authentication.authentication_token_setup.maybe_enable_token_auth_if_token_available``; it
    respects an explicit ``RAY_AUTH_MODE``.
    """
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

    return bool(maybe_enable_token_auth_if_token_available(warn_if_disabled=False))


#: Log lines that no marlx user can act on, by the (Ray 2.60) logger that writes them: the "Token authentication is
#: enabled for this Ray cluster" notice of every local start, RLlib's own ``RLModule(config=...)`` deprecation
#: (raised inside RLlib's module construction, not by marlx's call), Tune's "Install gputil" on every Trainable.
NOISY_RAY_LINES = {
    "ray._private.authentication.authentication_token_setup": ("Token authentication is enabled for this Ray",),
    "ray._common.deprecation": ("RLModule(config=",),
    "ray.tune.utils.util": ("Install gputil",),
}
NOISY_RAY_LOGGERS = tuple(NOISY_RAY_LINES)


class _DropLines:
    def __init__(self, fragments):
        self.fragments = fragments

    def filter(self, record) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record: let logging report it
            return True
        return not any(f in msg for f in self.fragments)


def quiet_ray_lines() -> None:
    """Drop :data:`NOISY_RAY_LINES` (only those lines: the loggers' other warnings stay)."""
    import logging

    for name, fragments in NOISY_RAY_LINES.items():
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) for f in log.filters):
            log.addFilter(_DropLines(fragments))
