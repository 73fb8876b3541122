"""Intrinsic-reward components: one interface for FoX's formation bonuses, FIM's influence, and the user's own.

A component is configured by name under ``intrinsic`` in the algorithm config (YAML ``config: intrinsic:``)::

    intrinsic:
      fox_count: {beta1: 0.01}
      fim: {cog_samples: 2000}

Every team algorithm builds each configured component twice: once on the driver (``where="driver"``, inside
the Algorithm, which sees whole episodes as they are collected and replay batches as they are sampled) and
once inside every Learner (``where="learner"``, which sees the padded training batch and the module's
forward outputs). A component implements the methods its mechanism needs; the others are no-ops:

* driver: :meth:`IntrinsicReward.observe` (after collection, e.g. count visits or fit a detector) and
  :meth:`IntrinsicReward.annotate` (add numpy columns ``[B, T]`` to a sampled batch, e.g. a count bonus);
* learner: :meth:`IntrinsicReward.bonus` (a per-step bonus ``[B, T]`` added to the team reward before the TD
  target in QMIX, before GAE in MAPPO) and :meth:`IntrinsicReward.update` (train the component's own models
  on the batch, return metrics);
* both: :meth:`get_state` / :meth:`set_state`, saved with the algorithm (driver) and the learner (learner).
"""

from __future__ import annotations

import importlib
from typing import Any

from marlx.errors import MarlxError, UnknownNameError

INTRINSIC_KEY = "intrinsic"

_INTRINSIC: dict[str, type["IntrinsicReward"]] = {}

#: marlx's own component modules, imported on first lookup so that their ``@register_intrinsic`` runs.
BUILTIN_MODULES = ("marlx.intrinsic.fox", "marlx.intrinsic.fim", "marlx.intrinsic.constant")


class IntrinsicReward:
    """Base class. ``options`` are the component's entries under ``intrinsic: {<name>: {...}}``.

    Args:
        options: validated options.
        observation_space: the team observation space (Dict ``obs``/``state``/``avail``/...).
        action_space: the joint action space (``MultiDiscrete``).
        model_config: the module's model config (``state_names`` and the like where the env has them).
        where: ``"driver"`` or ``"learner"``.
    """

    name = "base"

    def __init__(self, options: dict, observation_space, action_space, model_config: dict | None = None,
                 where: str = "learner"):
        self.options = dict(options)
        self.observation_space, self.action_space = observation_space, action_space
        self.model_config = dict(model_config or {})
        self.where = where

    @classmethod
    def check_options(cls, options: dict) -> None:
        """Raise :class:`ValueError` naming a bad option; called before Ray starts."""

    # -- driver side --------------------------------------------------------------------------
    def observe(self, episodes: list) -> None:
        """Collected :class:`~marlx.runtime.episode.TeamEpisode` s, before they reach replay or GAE."""

    def annotate(self, batch: dict) -> None:
        """Add columns to a sampled numpy batch in place (its ``mask [B, T]`` marks valid steps)."""

    # -- learner side -------------------------------------------------------------------------
    def bonus(self, batch: dict, fwd_out: dict, module) -> Any:
        """The per-step bonus ``[B, T]`` (torch) added to the team reward, or ``None``."""
        return None

    def update(self, batch: dict, fwd_out: dict, module) -> dict[str, float]:
        """Train the component's own models on the batch (after the bonus was taken); return metrics."""
        return {}

    def to(self, device) -> "IntrinsicReward":
        return self

    # -- checkpoints --------------------------------------------------------------------------
    def get_state(self) -> dict:
        return {}

    def set_state(self, state: dict) -> None:
        pass


def register_intrinsic(name: str):
    """Class decorator: make an :class:`IntrinsicReward` subclass available as ``intrinsic: {<name>: {...}}``."""

    def deco(cls):
        cls.name = name
        _INTRINSIC[name] = cls
        return cls

    return deco


def _import_builtins() -> None:
    for mod in BUILTIN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def intrinsic_names() -> list[str]:
    _import_builtins()
    return sorted(_INTRINSIC)


def get_intrinsic_class(name: str) -> type[IntrinsicReward]:
    _import_builtins()
    if name not in _INTRINSIC:
        raise UnknownNameError("intrinsic reward", name, _INTRINSIC)
    return _INTRINSIC[name]


def check_intrinsic_config(spec: dict | None) -> None:
    """Validate an ``intrinsic`` config entry (names and options) before Ray starts."""
    if not spec:
        return
    if not isinstance(spec, dict):
        raise MarlxError(f"intrinsic must be a mapping of component names to options, got {spec!r}; "
                         f"e.g. intrinsic: {{fox_count: {{beta1: 0.01}}}}")
    for name, options in spec.items():
        cls = get_intrinsic_class(name)
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise MarlxError(f"intrinsic.{name} must be a mapping of options, got {options!r}")
        try:
            cls.check_options(options)
        except ValueError as e:
            if isinstance(e, MarlxError):
                raise
            raise MarlxError(f"intrinsic.{name}: {e}") from None


def build_intrinsic(spec: dict | None, observation_space, action_space, model_config: dict | None,
                    where: str) -> list[IntrinsicReward]:
    """The configured components, in config order."""
    out = []
    for name, options in (spec or {}).items():
        cls = get_intrinsic_class(name)
        options = dict(options or {})
        cls.check_options(options)
        out.append(cls(options, observation_space, action_space, model_config, where))
    return out


#: key of the driver-side components' states in an algorithm checkpoint
INTRINSIC_STATE_KEY = "marlx_intrinsic"


class IntrinsicAlgorithmMixin:
    """The driver side of the intrinsic-reward components for a team ``Algorithm`` (QMIX, MAPPO and the methods
    built on them): :meth:`setup_intrinsic` builds them from the env runners' spaces (``observe`` / ``annotate``
    run in the algorithm's ``training_step``), and their states travel in the algorithm's checkpoints.
    Put it before ``Algorithm`` in the bases."""

    intrinsic: list = []

    def setup_intrinsic(self, config) -> None:
        spaces = self.env_runner_group.get_spaces() if self.env_runner_group else {}
        obs_space, act_space = spaces.get("default_policy", (None, None))
        self.intrinsic = build_intrinsic(config.intrinsic_spec(), obs_space, act_space, config.model_config, "driver")

    def get_state(self, *args, **kwargs):
        state = super().get_state(*args, **kwargs)
        if self.intrinsic:
            state[INTRINSIC_STATE_KEY] = [c.get_state() for c in self.intrinsic]
        return state

    def set_state(self, state) -> None:
        super().set_state(state)
        for component, part in zip(self.intrinsic, state.get(INTRINSIC_STATE_KEY, [])):
            component.set_state(part)


class IntrinsicLearnerMixin:
    """The learner side for a team ``TorchLearner``: :meth:`build_intrinsic_components` in ``build`` (per module,
    on the module's device), ``self._intrinsic_inputs[module_id] = (batch, fwd_out)`` when the bonus is computed,
    and :meth:`update_intrinsic_components` after the gradient step (each component's own update, its metrics
    logged as ``intrinsic/<name>/<key>``)."""

    def build_intrinsic_components(self) -> None:
        self.intrinsic = {}
        for module_id, module in self.module.items():
            module = module.unwrapped()
            self.intrinsic[module_id] = [
                c.to(next(module.parameters()).device)
                for c in build_intrinsic(self.config.intrinsic_spec(), module.observation_space,
                                         module.action_space, module.model_config, "learner")
            ]
        self._intrinsic_inputs: dict = {}

    def update_intrinsic_components(self) -> None:
        for module_id, (batch, fwd_out) in self._intrinsic_inputs.items():
            module = self.module[module_id].unwrapped()
            for component in self.intrinsic.get(module_id, []):
                for name, value in (component.update(batch, fwd_out, module) or {}).items():
                    self.metrics.log_value((module_id, f"intrinsic/{component.name}/{name}"), value, window=1)
        self._intrinsic_inputs = {}
