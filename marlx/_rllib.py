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
