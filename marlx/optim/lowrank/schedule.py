"""The rank schedule, the technique's options, the effective-rank monitor and the controller that ties
them to a model (used by the standalone trainers and by the RLlib hook alike)."""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn

from marlx.errors import MarlxError
from marlx.optim.lowrank.layers import DEFLATIONS, convert_to_lowrank, dynamic_rank_layers, effective_rank, switch_form

#: The reference code's schedule: full rank from epoch 55 to 120 of 150 (CIFAR-10 / ResNet20).
REFERENCE_BOUNDARIES = (55, 120)
REFERENCE_TOTAL = 150


@dataclass(frozen=True)
class RankSchedule:
    """Phases of training: low rank first, then each boundary toggles full <-> low rank.

    ``boundaries=(55, 120)`` (the reference code, of 150 epochs) means low rank for units ``[0, 55)``,
    full rank for ``[55, 120)``, low rank again from 120. An empty tuple is fixed low-rank training. Units
    are whatever the caller counts: epochs, optimiser steps, or RLlib training iterations.
    """

    boundaries: tuple[int, ...] = REFERENCE_BOUNDARIES

    def __post_init__(self):
        b = tuple(int(x) for x in self.boundaries)
        if any(x < 0 for x in b) or list(b) != sorted(set(b)):
            raise MarlxError(f"rank schedule boundaries must be increasing non-negative integers, got {self.boundaries}")
        object.__setattr__(self, "boundaries", b)

    def form_at(self, t: int) -> str:
        """``"lowrank"`` or ``"full"`` for unit ``t`` (0-based)."""
        return "full" if bisect.bisect_right(self.boundaries, t) % 2 else "lowrank"

    @classmethod
    def scaled(cls, total: int, fractions: tuple[float, ...] = (55 / 150, 120 / 150)) -> "RankSchedule":
        """Boundaries at ``fractions`` of ``total`` units (default: the reference code's 55/150, 120/150)."""
        return cls(tuple(int(round(f * total)) for f in fractions))

    @classmethod
    def short_full_phase(cls, total: int, start: float = 55 / 150, length: float = 0.1) -> "RankSchedule":
        """One full-rank phase of ``length`` (fraction of ``total``) starting at ``start``: the paper's point is
        that a short phase recovers the rank at close to low-rank cost."""
        a = int(round(start * total))
        return cls((a, max(a + 1, int(round((start + length) * total)))))


@dataclass
class LowRankConfig:
    """Options of dynamic-rank training (defaults: the paper / reference code unless marked marlx)."""

    rank_ratio: float = 0.5
    """Rank as a fraction of a layer's outputs, ``r = floor(rank_ratio * Cout)`` (reference: 0.5)."""
    rank: int | None = None
    """Absolute rank for every converted layer; overrides ``rank_ratio``."""
    boundaries: tuple[int, ...] = REFERENCE_BOUNDARIES
    """Units at which the form toggles, starting low-rank (reference: [55, 120] of 150 epochs); ``()`` = fixed
    low rank."""
    deflation: str = "adapter"
    """How to return to low rank: ``"adapter"`` (reference code: dense W frozen + trainable adapter, zero-init
    up-projection, scale alpha/r; keeps the dense forward cost) or ``"svd"`` (truncated SVD of W, back to
    low-rank cost; marlx option)."""
    alpha: float = 16.0
    """Adapter scale numerator: the adapter adds ``(alpha / r) B A`` (reference: 16)."""
    include: tuple[str, ...] | None = None
    """fnmatch patterns of layer names to convert (None: every Linear/Conv2d that qualifies)."""
    exclude: tuple[str, ...] = ()
    """fnmatch patterns of layer names to keep dense."""
    min_rank: int = 8
    """Layers whose rank would fall below this stay dense, e.g. output heads (marlx choice)."""
    only_if_cheaper: bool = True
    """Keep a layer dense when ``r (I + O) >= I O``: low rank would cost more (marlx choice)."""
    reset_optimizer_state: bool = True
    """Drop the optimiser state of switched weights at a switch (marlx choice; see ``switch_form``)."""
    monitor_every: int = 1
    """Measure the effective rank of every converted layer every this many units (0: never)."""
    logdir: str | None = None
    """If set, TensorBoard event files with ``erank/<layer>``, ``lowrank/full_phase`` go here."""
    seed: int = 0
    """Seed of the adapter initialisation at deflation (each switch uses ``seed + switch index``)."""

    def __post_init__(self):
        if self.deflation not in DEFLATIONS:
            raise MarlxError(f"lowrank deflation must be one of {DEFLATIONS}, got {self.deflation!r}")
        if self.rank is None and not 0.0 < self.rank_ratio <= 1.0:
            raise MarlxError(f"lowrank rank_ratio must be in (0, 1], got {self.rank_ratio}")
        self.schedule = RankSchedule(tuple(self.boundaries))
        self.boundaries = self.schedule.boundaries

    @classmethod
    def from_dict(cls, options: dict) -> "LowRankConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise MarlxError(f"unknown lowrank option(s) {unknown}; known: {sorted(known)}")
        opts = dict(options)
        for key in ("include", "exclude", "boundaries"):
            if opts.get(key) is not None:
                opts[key] = tuple(opts[key])
        return cls(**opts)

    def to_dict(self) -> dict:
        return asdict(self)


class EffectiveRankMonitor:
    """Effective rank (Roy & Vetterli) of each dynamic-rank layer's effective weight, kept as a history and
    optionally written to TensorBoard as ``erank/<layer>``."""

    def __init__(self, logdir: str | None = None):
        self.history: dict[str, list[tuple[int, float]]] = {}
        self._writer = None
        if logdir:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(logdir)

    @torch.no_grad()
    def measure(self, model: nn.Module, step: int, prefix: str = "") -> dict[str, float]:
        """Effective rank of each dynamic-rank layer, keyed ``prefix + layer name``."""
        ranks = {prefix + n: effective_rank(layer.effective_weight()) for n, layer in dynamic_rank_layers(model).items()}
        for name, value in ranks.items():
            self.history.setdefault(name, []).append((step, value))
            if self._writer is not None:
                self._writer.add_scalar(f"erank/{name}", value, step)
        return ranks

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


@dataclass
class DynamicRankController:
    """Applies a :class:`LowRankConfig` to models: converts their layers, counts units (epochs, steps or
    RLlib iterations) and switches forms when the schedule says so.

    Call :meth:`prepare` once per model, then :meth:`end_of_unit` after each unit of training.
    """

    config: LowRankConfig = field(default_factory=LowRankConfig)
    units_done: int = 0
    switches: int = 0

    def __post_init__(self):
        self.monitor = EffectiveRankMonitor(self.config.logdir)

    def prepare(self, model: nn.Module, name: str = "model") -> list[str]:
        """Convert ``model``'s qualifying layers to the low-rank form; clear error if none qualifies."""
        c = self.config
        converted = convert_to_lowrank(model, c.rank, c.rank_ratio, c.include, c.exclude, c.min_rank, c.only_if_cheaper, c.alpha)
        if not converted and not dynamic_rank_layers(model):
            raise MarlxError(
                f"lowrank: no layer of {name} qualifies (rank_ratio={c.rank_ratio}, rank={c.rank}, min_rank={c.min_rank}, "
                f"only_if_cheaper={c.only_if_cheaper}); lower rank_ratio/min_rank or widen include"
            )
        return converted

    @property
    def form(self) -> str:
        return self.config.schedule.form_at(self.units_done)

    def end_of_unit(self, models: dict[str, nn.Module], optimizers: list[torch.optim.Optimizer] = ()) -> dict:
        """Count one unit; switch ``models`` (by name) if the next unit has another form; measure ranks
        every ``monitor_every`` units.

        Returns ``{"switched": [layer names], "erank": {"<model>/<layer>": value}}`` (erank when measured).
        """
        return {"switched": self.advance(models, optimizers), "erank": self.measure(models)}

    def advance(self, models: dict[str, nn.Module], optimizers: list[torch.optim.Optimizer] = ()) -> list[str]:
        """Count one unit and switch forms if the schedule says so; returns ``"<model>/<layer>"`` switched."""
        before = self.form
        self.units_done += 1
        switched = []
        if self.form != before:
            gen = torch.Generator().manual_seed(self.config.seed + self.switches)
            self.switches += 1
            for name, model in models.items():
                gen_state = gen.get_state()
                changed = switch_form(model, self.form, self.config.deflation, optimizers,
                                      self.config.reset_optimizer_state, gen)
                switched += [f"{name}/{c}" for c in changed]
                gen.set_state(gen_state)  # same adapter init in every model (replicas stay identical)
        return switched

    def measure(self, models: dict[str, nn.Module]) -> dict[str, float]:
        """Effective ranks (``"<model>/<layer>"``) if this unit is a monitoring one, else ``{}``."""
        erank: dict[str, float] = {}
        if self.config.monitor_every and self.units_done % self.config.monitor_every == 0:
            for name, model in models.items():
                erank.update(self.monitor.measure(model, self.units_done, prefix=f"{name}/"))
            self.monitor.scalar("lowrank/full_phase", float(self.form == "full"), self.units_done)
        return erank

    def state(self) -> dict:
        return {"units_done": self.units_done, "switches": self.switches}

    def set_state(self, state: dict) -> None:
        self.units_done = int(state.get("units_done", 0))
        self.switches = int(state.get("switches", 0))
