"""Plug optimisation techniques into any RLlib ``TorchLearner`` from config, without editing an algorithm.

In YAML (or ``config.learners(learner_config_dict={"optim": {...}})`` in Python)::

    config:
      optim:
        sam: {rho: 0.05, variant: layerwise, layers: 2}

:func:`apply_optim` stores the techniques' options in ``learner_config_dict["optim"]`` and sets the learner
class to :func:`with_optim_hooks` of the algorithm's default learner: a subclass that builds one
:class:`LearnerHook` per configured technique and calls them at three points of the update.

Every use of a private RLlib name for this lives in this file (checked against Ray 2.60.0):
``TorchLearner._uncompiled_update`` (one forward/backward/step on a batch; a two-pass method such as SAM
must wrap it, public hooks like ``compute_gradients`` never see the batch) and
``AlgorithmConfig._learner_class``/``get_default_learner_class`` through the public ``learners()``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from marlx.errors import MarlxError, UnknownNameError

OPTIM_KEY = "optim"

_HOOKS: dict[str, type["LearnerHook"]] = {}


class LearnerHook:
    """One optimisation technique inside a TorchLearner. Override what the technique needs.

    Attributes:
        learner: the TorchLearner (``learner.module``, ``learner.get_optimizers_for_module``, ...).
        options: the technique's options from config (validated by the subclass).
    """

    name = "base"

    def __init__(self, learner, **options: Any) -> None:
        self.learner = learner
        self.options = options

    @classmethod
    def prepare_module(cls, learner, **options: Any) -> None:
        """Before the learner's optimisers take the module's parameters (the hook is not built yet).

        A technique that changes the module's structure (``lowrank`` converts layers) does it here, so
        the optimisers, the parameter registry and a DDP wrapper all see the final parameters.
        """

    @classmethod
    def check_options(cls, **options: Any) -> None:
        """Raise a clear error for bad options; called by :func:`apply_optim` before any Ray actor starts."""

    @classmethod
    def check_config(cls, config, **options: Any) -> None:
        """Raise a clear error if the technique cannot run with this AlgorithmConfig (e.g. it needs
        ``num_learners >= 2``); called by :func:`apply_optim` after :meth:`check_options`."""

    def on_build(self) -> None:
        """After the learner has built its module and optimisers."""

    def update(self, batch: dict, default_update: Callable[[dict], tuple]) -> tuple:
        """One update on ``batch``; ``default_update(batch)`` is RLlib's forward/backward/step.

        Returns what ``_uncompiled_update`` returns: ``(fwd_out, loss_per_module, extra)``.
        """
        return default_update(batch)

    def after_update(self, timesteps: dict) -> None:
        """Once per ``Learner.update()`` call, after all gradient steps on that train batch."""

    def get_state(self) -> dict:
        """State to checkpoint with the learner."""
        return {}

    def set_state(self, state: dict) -> None:
        """Restore what :meth:`get_state` returned."""


def register_hook(cls: type[LearnerHook]) -> type[LearnerHook]:
    """Class decorator: make a hook available under ``cls.name`` in ``optim:`` configs."""
    _HOOKS[cls.name] = cls
    return cls


def hook_names() -> list[str]:
    _import_builtin_hooks()
    return sorted(_HOOKS)


def get_hook(name: str) -> type[LearnerHook]:
    _import_builtin_hooks()
    if name not in _HOOKS:
        raise UnknownNameError("optim technique", name, _HOOKS)
    return _HOOKS[name]


def _import_builtin_hooks() -> None:
    """Import the modules that register marlx's own hooks (each technique registers itself)."""
    import importlib

    for module in ("marlx.optim.sam", "marlx.optim.lowrank", "marlx.optim.local_sgd", "marlx.optim.fl"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:  # a technique's own dependency is missing: say so
                raise


class _OptimHookedMixin:
    """Mixed in front of a TorchLearner class by :func:`with_optim_hooks`."""

    def build(self) -> None:
        super().build()
        cfg = (self.config.learner_config_dict or {}).get(OPTIM_KEY) or {}
        self._optim_hooks = [get_hook(name)(self, **(opts or {})) for name, opts in cfg.items()]
        for hook in self._optim_hooks:
            hook.on_build()

    def configure_optimizers(self) -> None:
        # Learner.build() calls this right after building the module (Ray 2.60).
        for name, opts in ((self.config.learner_config_dict or {}).get(OPTIM_KEY) or {}).items():
            get_hook(name).prepare_module(self, **(opts or {}))
        super().configure_optimizers()

    def compute_gradients(self, loss_per_module, **kwargs):
        # A parameter that took no part in the loss (the idle form of a lowrank layer) has no gradient;
        # RLlib 2.60's apply_gradients assumes every parameter has one. Skip it, as torch optimisers do.
        grads = super().compute_gradients(loss_per_module, **kwargs)
        return {ref: g for ref, g in grads.items() if g is not None}

    # Private RLlib name (Ray 2.60): the single forward/backward/step on one batch.
    def _uncompiled_update(self, batch, **kwargs):
        update = functools.partial(super()._uncompiled_update, **kwargs)
        for hook in reversed(self._optim_hooks):
            update = functools.partial(hook.update, default_update=update)
        return update(batch)

    def after_gradient_based_update(self, *, timesteps):
        super().after_gradient_based_update(timesteps=timesteps)
        for hook in self._optim_hooks:
            hook.after_update(timesteps)

    def get_state(self, *args, **kwargs):
        state = super().get_state(*args, **kwargs)
        hooks = {h.name: h.get_state() for h in getattr(self, "_optim_hooks", [])}
        if any(hooks.values()):
            state["marlx_optim"] = hooks
        return state

    def set_state(self, state):
        hooks = state.get("marlx_optim", {})
        state = {k: v for k, v in state.items() if k != "marlx_optim"}
        super().set_state(state)
        for hook in getattr(self, "_optim_hooks", []):
            if hook.name in hooks:
                hook.set_state(hooks[hook.name])


@functools.lru_cache(maxsize=None)
def with_optim_hooks(learner_cls: type) -> type:
    """A subclass of ``learner_cls`` that runs the hooks named in ``learner_config_dict["optim"]``."""
    if issubclass(learner_cls, _OptimHookedMixin):
        return learner_cls
    return type(f"OptimHooked{learner_cls.__name__}", (_OptimHookedMixin, learner_cls), {})


def apply_optim(config, optim: dict[str, dict] | None):
    """Configure ``config`` (an AlgorithmConfig) to train with the techniques in ``optim``.

    Unknown technique names raise a clear error here, before any Ray actor starts.
    """
    if not optim:
        return config
    for name, opts in optim.items():
        if opts is not None and not isinstance(opts, dict):
            raise MarlxError(f"optim.{name} must map option names to values, got {opts!r}")
        try:
            get_hook(name).check_options(**(opts or {}))
            get_hook(name).check_config(config, **(opts or {}))
        except MarlxError:
            raise
        except (ValueError, TypeError, KeyError) as e:
            raise MarlxError(f"optim.{name}: {e}") from None
    base = config._learner_class or config.get_default_learner_class()
    config.learners(learner_class=with_optim_hooks(base), learner_config_dict={OPTIM_KEY: dict(optim)})
    return config
