"""The team runtime's settings, shared by every team algorithm's config (QMIX, VDN, FoX, MAPPO, WALL, FIM).

:class:`TeamRuntimeConfig` is a mixin for an RLlib ``AlgorithmConfig`` subclass: call
:meth:`TeamRuntimeConfig._init_team_runtime` in ``__init__`` and :meth:`TeamRuntimeConfig._team_runtime_errors`
in ``validate``. It selects :class:`~marlx.runtime.runner.TeamEnvRunner` and adds its options (settable from
YAML ``config:`` like any other key):
"""

from __future__ import annotations

from ray.rllib.algorithms.algorithm_config import NotProvided

from marlx.attacks.base import check_attack_config
from marlx.errors import MarlxError
from marlx.intrinsic.base import check_intrinsic_config
from marlx.runtime.runner import SAMPLE_MODES, TeamEnvRunner


class TeamRuntimeConfig:
    """Mixin: the team env runner and its options (see the attribute docs)."""

    def _init_team_runtime(self, sample_mode: str = "episodes") -> None:
        self.env_runner_cls = TeamEnvRunner
        #: "episodes": whole episodes, ``episodes_per_env`` per sub-env and call (off-policy learners, PyMARL's
        #: parallel runner); "fragments": ``rollout_fragment_length`` steps per sub-env and call, episodes
        #: continuing across calls (on-policy learners).
        self.sample_mode: str = sample_mode
        #: Whole episodes each sub-env plays per ``sample()`` call in "episodes" mode (PyMARL: 1).
        self.episodes_per_env: int = 1
        #: Module outputs (besides actions and recurrent state) kept per step in ``TeamEpisode.extras``: "all" or a
        #: list of names (e.g. ["q_values"]); attacks see every output either way. QMIX keeps none by default.
        self.keep_outputs = "all"
        #: Also keep the module's recurrent state after every step in ``TeamEpisode.extras["state_out/<k>"]``.
        self.keep_state_out: bool = False
        #: Select actions through the module's ``fast_sampler()`` when it has one and no attack is set (QMIX/VDN:
        #: the same actions, Q values and recurrent states as its RLlib forward, in fewer torch ops); False = always
        #: the module's ``_forward_exploration`` / ``_forward_inference``.
        self.fast_sampling: bool = True
        #: Action-time transform between the module's joint action and the env (``{name: ..., **options}``,
        #: see :mod:`marlx.attacks`); None = no attack. ``evaluation_config: {attack: ...}`` attacks test episodes.
        self.attack = None
        #: Intrinsic-reward components ``{name: {options}}`` (see :mod:`marlx.intrinsic`); empty = none.
        self.intrinsic: dict = {}

    def team_runtime(self, *, sample_mode=NotProvided, episodes_per_env=NotProvided, keep_outputs=NotProvided,
                     keep_state_out=NotProvided, fast_sampling=NotProvided, attack=NotProvided,
                     intrinsic=NotProvided):
        """Set the team runtime's options (see the attribute docs of :class:`TeamRuntimeConfig`)."""
        for key, value in dict(sample_mode=sample_mode, episodes_per_env=episodes_per_env, keep_outputs=keep_outputs,
                               keep_state_out=keep_state_out, fast_sampling=fast_sampling, attack=attack,
                               intrinsic=intrinsic).items():
            if value is not NotProvided:
                setattr(self, key, value)
        return self

    def intrinsic_spec(self) -> dict:
        """The intrinsic-reward components to build (an algorithm may add its own, as FoX does)."""
        return dict(self.intrinsic or {})

    #: The options :meth:`team_runtime` sets (also accepted by the algorithms' ``training(...)``).
    TEAM_RUNTIME_KEYS = ("sample_mode", "episodes_per_env", "keep_outputs", "keep_state_out", "fast_sampling", "attack",
                         "intrinsic")

    def _pop_team_runtime(self, kwargs: dict) -> None:
        """Apply and remove the team-runtime keys of a ``training(**kwargs)`` call."""
        self.team_runtime(**{k: kwargs.pop(k) for k in list(kwargs) if k in self.TEAM_RUNTIME_KEYS})

    def _team_runtime_errors(self) -> list[str]:
        errors = []
        if self.sample_mode not in SAMPLE_MODES:
            errors.append(f"sample_mode must be one of {SAMPLE_MODES}, got {self.sample_mode!r}")
        if not isinstance(self.episodes_per_env, int) or self.episodes_per_env < 1:
            errors.append(f"episodes_per_env must be an integer >= 1, got {self.episodes_per_env!r}")
        if not isinstance(self.fast_sampling, bool):
            errors.append(f"fast_sampling must be true or false, got {self.fast_sampling!r}")
        if self.keep_outputs != "all" and not isinstance(self.keep_outputs, (list, tuple)):
            errors.append(f"keep_outputs must be 'all' or a list of output names, got {self.keep_outputs!r}")
        for check, value in ((check_attack_config, self.attack), (check_intrinsic_config, self.intrinsic)):
            try:
                check(value)
            except (ValueError, MarlxError) as e:
                errors.append(str(e))
        return errors
