"""The action-time seam: a per-episode, stateful transform between the module's joint action and the env.

An :class:`Attack` runs on the env runner, once per step for all sub-envs of the runner together, after the
module's forward pass. It sees the module itself (agent network; the mixer too when the module keeps it on
runners, ``model_config["mixer_on_runners"] = True``), the step's observations, recurrent state and the
module's outputs (e.g. per-agent Q values), and returns the joint action the env executes. The runner stores
both: ``TeamEpisode.actions`` (intended: the module's choice, used by the TD loss and as last-action input)
and ``TeamEpisode.executed_actions``, plus every per-step array the attack returns (at least
:data:`~marlx.runtime.columns.ATTACKED`, which agents were attacked) in ``TeamEpisode.extras``.

The same attack therefore serves training against an adversary (WALL) and evaluation of any saved checkpoint
under attack. It is configured by name::

    config: {attack: {name: random, prob: 0.1, budget: 8}}

and built by :func:`make_attack` on every env runner (the evaluation config may carry its own ``attack``).
Attacks run under ``torch.no_grad()``; one that needs a gradient step (Wolfpack's follow-up selection) wraps it
in ``torch.enable_grad()`` on a copy of the parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from marlx.errors import MarlxError, UnknownNameError

ATTACK_KEY = "attack"

_ATTACKS: dict[str, type["Attack"]] = {}


@dataclass
class AttackContext:
    """What an attack sees at one step (rows = the runner's sub-envs that are stepping now)."""

    #: The runner's RLModule (``agent_q_values``, ``mix`` when the mixer is on runners, ...).
    module: Any
    #: The step's observation leaves as torch tensors ``[B, ...]`` (obs, state, avail, positions).
    obs: dict
    #: Recurrent state before this step ``{key: [B, ...]}`` (torch).
    state_in: dict
    #: The module's outputs of this step (e.g. ``q_values [B, n, A]``, ``STATE_OUT``), torch.
    outputs: dict
    #: The module's intended joint actions ``[B, n]`` (numpy int64).
    actions: np.ndarray
    #: Action masks ``[B, n, A]`` (numpy).
    avail: np.ndarray
    #: Step index inside the current episode, per row ``[B]``.
    t: np.ndarray
    #: Which sub-env each row is ``[B]`` (indices into the runner's envs).
    env_indices: np.ndarray
    #: Exploration (training) or greedy (evaluation) sampling.
    explore: bool


class Attack:
    """Base class of action-time attacks. Subclasses set ``name`` and implement :meth:`__call__`.

    Per-episode state (budget used, phase flags, ...) is kept per sub-env, indexed by ``env_index``, and reset by
    :meth:`begin_episode`, which the runner calls before the first step of every episode of that sub-env.
    """

    name = "base"

    def __init__(self, options: dict, num_envs: int, n_agents: int, n_actions: int, seed: int | None = None):
        self.options = dict(options)
        self.num_envs, self.n_agents, self.n_actions = int(num_envs), int(n_agents), int(n_actions)
        self.rng = np.random.default_rng(seed)

    @classmethod
    def check_options(cls, options: dict) -> None:
        """Raise :class:`ValueError` naming a bad option; called before Ray starts."""

    def begin_episode(self, env_index: int) -> None:
        """A new episode starts on sub-env ``env_index``: reset its per-episode state."""

    def __call__(self, ctx: AttackContext) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Return the executed joint actions ``[B, n]`` and per-step arrays ``{name: [B, ...]}`` to store."""
        raise NotImplementedError

    def get_state(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def set_state(self, state: dict) -> None:
        if "rng" in state:
            self.rng.bit_generator.state = state["rng"]


def register_attack(name: str):
    """Class decorator: make an :class:`Attack` subclass available as ``attack: {name: <name>}``."""

    def deco(cls):
        cls.name = name
        _ATTACKS[name] = cls
        return cls

    return deco


def attack_names() -> list[str]:
    _import_builtin_attacks()
    return sorted(_ATTACKS)


def get_attack_class(name: str) -> type[Attack]:
    _import_builtin_attacks()
    if name not in _ATTACKS:
        raise UnknownNameError("attack", name, _ATTACKS)
    return _ATTACKS[name]


def split_attack_config(spec: dict | str | None) -> tuple[str | None, dict]:
    """``{name: x, **options}`` (or just ``"x"``) -> ``(name, options)``; ``None``/``"none"`` -> ``(None, {})``."""
    if spec is None or spec == "none" or spec == {}:
        return None, {}
    if isinstance(spec, str):
        return spec, {}
    if not isinstance(spec, dict) or "name" not in spec:
        raise MarlxError(f"attack must be a name or a dict with a 'name' key, got {spec!r}; "
                         f"e.g. attack: {{name: random}}. Attacks: {', '.join(attack_names())}")
    options = {k: v for k, v in spec.items() if k != "name"}
    return spec["name"], options


def check_attack_config(spec) -> None:
    """Validate an ``attack`` config entry (name and options) before Ray starts."""
    name, options = split_attack_config(spec)
    if name is not None:
        try:
            get_attack_class(name).check_options(options)
        except ValueError as e:
            if isinstance(e, MarlxError):
                raise
            raise MarlxError(f"attack {name!r}: {e}") from None


def make_attack(spec, num_envs: int, n_agents: int, n_actions: int, seed: int | None = None) -> Attack | None:
    name, options = split_attack_config(spec)
    if name is None:
        return None
    cls = get_attack_class(name)
    cls.check_options(options)
    return cls(options, num_envs=num_envs, n_agents=n_agents, n_actions=n_actions, seed=seed)


def _import_builtin_attacks() -> None:
    """Import marlx's own attack modules so that their ``@register_attack`` runs (missing ones are skipped)."""
    import importlib

    for mod in ("marlx.attacks.random", "marlx.attacks.wolfpack"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
