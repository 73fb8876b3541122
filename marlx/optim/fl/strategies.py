"""Aggregation strategies behind one small interface: FedAvg, FedLUAR, EmbracingFL, width reduction
(HeteroFL-style baseline) and on-device KD for weak clients.

A :class:`Strategy` holds the server's models. Each round the trainer asks it for the work of every sampled
client (:meth:`Strategy.tasks`; a client whose tier the strategy excludes gets none), ships the tasks to the
client pool, and hands the results to :meth:`Strategy.aggregate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from marlx.errors import MarlxError, UnknownNameError
from marlx.optim.fl.aggregate import LayerRecycler, clone_state, masked_average, output_side_keys, prefix_slice
from marlx.optim.fl.client import ClientResult, ModelJob
from marlx.optim.fl.kd import kd_weight


@dataclass
class FedAvgConfig:
    """FedAvg (McMahan et al. 2017).

    Attributes:
        width: model width given to ``model_fn`` (1.0 = full; 0.25 gives "FedAvg of the small model alone").
        tiers: tiers that take part (``None`` = all); ``("strong",)`` is the "strong clients only" baseline.
        weighting: ``"samples"`` weights each client by its number of samples (the paper), ``"uniform"``
            averages clients equally.
    """

    width: float = 1.0
    tiers: Optional[tuple] = None
    weighting: str = "samples"


@dataclass
class FedLUARConfig(FedAvgConfig):
    """FedLUAR: layer-wise update aggregation with recycling (Kim, Kang, Lee, NeurIPS 2025).

    Attributes:
        delta: number of weight layers (tensors with 2+ dims) recycled each round (code default 12 of a
            DistilBERT; must stay below the model's number of such layers).
    """

    delta: int = 12


@dataclass
class EmbracingFLConfig(FedAvgConfig):
    """EmbracingFL (Lee et al., IEEE TMC 2024): each client trains the output-side layers its memory allows.

    Attributes:
        budgets: per tier, the fraction of the model's layers (counted as parameter-owning modules, from the
            output side; at least one) a client of that tier trains. Paper: strong whole model, moderate
            about 40 %, weak about 15 %. Counting layers rather than bytes is marlx's choice.
    """

    budgets: dict = field(default_factory=lambda: {"strong": 1.0, "moderate": 0.4, "weak": 0.15})


@dataclass
class WidthReductionConfig(FedAvgConfig):
    """Width-reduction baseline in the style of HeteroFL (Diao et al. 2021): a client of a tier trains the
    nested sub-model ``model_fn(width)`` made of the leading channels of every layer; the server averages
    every scalar over the clients whose sub-model contains it.

    Attributes:
        widths: per tier, the width multiplier of its sub-model.
    """

    widths: dict = field(default_factory=lambda: {"strong": 1.0, "moderate": 0.5, "weak": 0.25})


@dataclass
class OnDeviceKDConfig(FedAvgConfig):
    """On-device KD for weak clients (Lim et al., ECAI 2025).

    A small auxiliary model is trained by FedAvg on every client's labelled data (weak clients hold only it);
    clients of other tiers also train the large target model: ``local_steps`` cross-entropy steps on labelled
    data, then ``kd_steps`` of ``w(t) * T^2 * KL(softmax(z_aux/T) || softmax(z_tgt/T))`` on their own
    unlabelled data with the round's global auxiliary model as teacher. The target model is FedAvg'ed over them.

    Attributes:
        aux_width: auxiliary model width (paper: 25 %).
        weak_tiers: tiers that hold only the auxiliary model.
        temperature: T (paper: 3).
        max_weight: w(t) after the ramp-up (paper: 0.5).
        rampup_rounds: rounds of the ramp-up ``exp(-5 (1 - t/rampup)^2)`` (paper: 300 of 400 rounds).
        kd_steps: distillation steps per round; ``None`` = the trainer's ``local_steps`` (paper: 30 and 30).
        kd_fresh_momentum: start the distillation steps from a zero momentum buffer (default ``False``: one
            optimizer for both phases, as in the authors' code).
    """

    aux_width: float = 0.25
    weak_tiers: tuple = ("weak",)
    temperature: float = 3.0
    max_weight: float = 0.5
    rampup_rounds: int = 300
    kd_steps: Optional[int] = None
    kd_fresh_momentum: bool = False


class Strategy:
    """Server side of one federated method. Subclasses set ``name`` and ``config_class``."""

    name = "base"
    config_class = FedAvgConfig

    def __init__(self, config=None, **options):
        if config is None:
            valid = set(self.config_class.__dataclass_fields__)
            bad = set(options) - valid
            if bad:
                raise UnknownNameError(f"{self.name} option", sorted(bad)[0], valid)
            config = self.config_class(**options)
        self.config = config
        if config.weighting not in ("samples", "uniform"):
            raise UnknownNameError("weighting", config.weighting, ("samples", "uniform"))

    # --- set-up and evaluation -------------------------------------------------------------------------
    def setup(self, model_fn: Callable[[float], nn.Module], tiers: list[str], local_steps: int, seed: int) -> None:
        self.model_fn, self.tiers, self.local_steps, self.seed = model_fn, tiers, local_steps, seed
        torch.manual_seed(seed)
        self.global_model = model_fn(self.config.width)
        self.state = clone_state(self.global_model.state_dict())

    def models(self) -> dict[str, nn.Module]:
        """The server's models to evaluate, by name."""
        self.global_model.load_state_dict(self.state)
        return {"global": self.global_model}

    def takes_part(self, client: int) -> bool:
        return self.config.tiers is None or self.tiers[client] in self.config.tiers

    # --- one round ------------------------------------------------------------------------------------
    def tasks(self, round: int, clients: list[int]) -> dict[int, dict[str, ModelJob]]:
        return {c: {"global": self.job(c)} for c in clients if self.takes_part(c)}

    def job(self, client: int) -> ModelJob:
        return ModelJob(self.config.width, self.state, ce_steps=self.local_steps)

    def aggregate(self, round: int, results: list[ClientResult]) -> None:
        self.state = masked_average(self.state, self.weighted(results, "global"))

    def weighted(self, results: list[ClientResult], job: str) -> list[tuple[dict, float]]:
        return [(r.uploads[job], r.num_samples if self.config.weighting == "samples" else 1.0)
                for r in results if job in r.uploads]

    def get_state(self) -> dict:
        return {"state": clone_state(self.state)}

    def set_state(self, state: dict) -> None:
        self.state = clone_state(state["state"])


class FedAvg(Strategy):
    name = "fedavg"


class FedLUAR(Strategy):
    name = "fedluar"
    config_class = FedLUARConfig

    def setup(self, model_fn, tiers, local_steps, seed):
        super().setup(model_fn, tiers, local_steps, seed)
        self.recycler = LayerRecycler(self.state, self.config.delta, seed=seed)

    def tasks(self, round, clients):
        recycled = set(self.recycler.choose())
        self.upload_keys = set(self.state) - recycled
        return super().tasks(round, clients)

    def job(self, client):
        return ModelJob(self.config.width, self.state, upload=self.upload_keys, ce_steps=self.local_steps)

    def aggregate(self, round, results):
        averaged = masked_average(self.state, self.weighted(results, "global"))
        self.state = self.recycler.aggregate(self.state, averaged)

    def get_state(self):
        return {**super().get_state(), "recycler": self.recycler.get_state()}

    def set_state(self, state):
        super().set_state(state)
        self.recycler.set_state(state["recycler"])


class EmbracingFL(Strategy):
    name = "embracingfl"
    config_class = EmbracingFLConfig

    def setup(self, model_fn, tiers, local_steps, seed):
        super().setup(model_fn, tiers, local_steps, seed)
        unknown = set(tiers) - set(self.config.budgets)
        if unknown:
            raise MarlxError(f"EmbracingFL has no memory budget for tier(s) {sorted(unknown)}; set budgets")
        self.trained_keys = {t: output_side_keys(self.global_model, b) for t, b in self.config.budgets.items()}
        params = {n for n, _ in self.global_model.named_parameters()}
        self.trainable_params = {t: keys & params for t, keys in self.trained_keys.items()}

    def job(self, client):
        tier = self.tiers[client]
        return ModelJob(self.config.width, self.state, trainable=self.trainable_params[tier],
                        upload=self.trained_keys[tier], ce_steps=self.local_steps)


class WidthReduction(Strategy):
    name = "width"
    config_class = WidthReductionConfig

    def setup(self, model_fn, tiers, local_steps, seed):
        super().setup(model_fn, tiers, local_steps, seed)
        shapes = {w: {k: v.shape for k, v in model_fn(w).state_dict().items()} for w in set(self.config.widths.values())}
        self.slices = {w: {k: prefix_slice(self.state[k], s) for k, s in sh.items()} for w, sh in shapes.items()}

    def job(self, client):
        w = self.config.widths[self.tiers[client]]
        sub = {k: self.state[k][sl].clone() for k, sl in self.slices[w].items()}
        return ModelJob(w, sub, ce_steps=self.local_steps)


class OnDeviceKD(Strategy):
    name = "kd"
    config_class = OnDeviceKDConfig

    def setup(self, model_fn, tiers, local_steps, seed):
        super().setup(model_fn, tiers, local_steps, seed)
        self.aux_model = model_fn(self.config.aux_width)
        self.aux_state = clone_state(self.aux_model.state_dict())

    def models(self):
        self.aux_model.load_state_dict(self.aux_state)
        return {**super().models(), "aux": self.aux_model}

    def tasks(self, round, clients):
        cfg = self.config
        w = kd_weight(round, cfg.max_weight, cfg.rampup_rounds)
        kd_steps = self.local_steps if cfg.kd_steps is None else cfg.kd_steps
        out = {}
        for c in clients:
            if not self.takes_part(c):
                continue
            jobs = {"aux": ModelJob(cfg.aux_width, self.aux_state, ce_steps=self.local_steps)}
            if self.tiers[c] not in cfg.weak_tiers:
                jobs["global"] = ModelJob(cfg.width, self.state, ce_steps=self.local_steps, kd_steps=kd_steps,
                                          teacher="aux", kd_weight=w, temperature=cfg.temperature,
                                          kd_fresh_momentum=cfg.kd_fresh_momentum)
            out[c] = jobs
        return out

    def aggregate(self, round, results):
        self.aux_state = masked_average(self.aux_state, self.weighted(results, "aux"))
        if any("global" in r.uploads for r in results):
            super().aggregate(round, results)

    def get_state(self):
        return {**super().get_state(), "aux": clone_state(self.aux_state)}

    def set_state(self, state):
        super().set_state(state)
        self.aux_state = clone_state(state["aux"])


STRATEGIES: dict[str, type[Strategy]] = {
    c.name: c for c in (FedAvg, FedLUAR, EmbracingFL, WidthReduction, OnDeviceKD)
}


def make_strategy(name: str, **options) -> Strategy:
    if name not in STRATEGIES:
        raise UnknownNameError("federated strategy", name, STRATEGIES)
    return STRATEGIES[name](**options)
