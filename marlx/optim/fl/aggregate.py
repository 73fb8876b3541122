"""Server-side arithmetic on model states (``dict[str, Tensor]``), shared by every strategy and by the
RLlib driver: weighted averaging over the clients that sent an entry (also of prefix slices, for
width-reduced sub-models), communication counts, layer grouping, and FedLUAR's layer recycling."""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import torch
from torch import nn

from marlx.errors import MarlxError

State = dict[str, torch.Tensor]


def numel(state: Mapping[str, torch.Tensor], keys: Iterable[str] | None = None) -> int:
    """Number of scalars in ``state`` (restricted to ``keys``): what sending it costs."""
    keys = state.keys() if keys is None else keys
    return int(sum(state[k].numel() for k in keys))


def clone_state(state: Mapping[str, torch.Tensor]) -> State:
    return {k: v.detach().clone() for k, v in state.items()}


def prefix_slice(big: torch.Tensor, shape: torch.Size) -> tuple[slice, ...]:
    """Index of the leading block of ``big`` with ``shape`` (HeteroFL-style nested sub-models)."""
    if len(shape) != big.dim() or any(s > b for s, b in zip(shape, big.shape)):
        raise MarlxError(f"a sub-model tensor of shape {tuple(shape)} does not fit in {tuple(big.shape)}")
    return tuple(slice(0, s) for s in shape)


def masked_average(global_state: Mapping[str, torch.Tensor], uploads: list[tuple[Mapping, float]]) -> State:
    """Average every scalar over the uploads that contain it, weighted; others keep their global value.

    ``uploads`` are ``(partial_state, weight)``. A partial state may hold a subset of the keys (EmbracingFL,
    FedLUAR) and tensors smaller than the global ones, which then cover the leading block (width reduction).
    With full states this is plain (weighted) FedAvg. Integer buffers (BatchNorm's ``num_batches_tracked``)
    are averaged and rounded.
    """
    out: State = {}
    for key, g in global_state.items():
        total = torch.zeros(g.shape, dtype=torch.float64)
        weight = torch.zeros(g.shape, dtype=torch.float64)
        for part, w in uploads:
            if key in part:
                t = part[key]
                region = prefix_slice(g, t.shape)
                total[region] += w * t.detach().to(torch.float64)
                weight[region] += w
        new = torch.where(weight > 0, total / weight.clamp_min(1e-300), g.detach().to(torch.float64))
        out[key] = new.round().to(g.dtype) if not g.is_floating_point() else new.to(g.dtype)
    return out


def layer_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """The model's layers from input to output side: ``(module name, its state keys)`` for every module
    that owns parameters or buffers directly, in registration order (the forward order of a
    ``Sequential``-style model; EmbracingFL relies on it)."""
    groups = []
    for name, module in model.named_modules():
        keys = [f"{name}.{k}" if name else k for k, _ in module.named_parameters(recurse=False)]
        keys += [f"{name}.{k}" if name else k for k, _ in module.named_buffers(recurse=False)]
        if keys:
            groups.append((name, keys))
    return groups


def output_side_keys(model: nn.Module, fraction: float, keys: Iterable[str] | None = None) -> set[str]:
    """State keys of the longest run of output-side layers within ``fraction`` of the layers (>= 1 layer).

    ``keys`` restricts the layers to those state keys (the federated Learner hook passes the trainable
    parameters, leaving out e.g. target networks); layers with none of them do not count.
    """
    groups = layer_groups(model)
    if keys is not None:
        keys = set(keys)
        groups = [(name, [k for k in ks if k in keys]) for name, ks in groups]
        groups = [(name, ks) for name, ks in groups if ks]
    n = max(1, min(len(groups), int(np.floor(fraction * len(groups) + 1e-9))))
    return {k for _, keys in groups[-n:] for k in keys}


class LayerRecycler:
    """FedLUAR's server state (Kim, Kang, Lee, NeurIPS 2025): layer scores and the previous update.

    For each candidate layer l (a weight tensor of 2+ dimensions; biases and norm parameters are always
    averaged) ``s_l = ||Delta_l|| / ||x_l||``: the norm of the last aggregated update over the norm of the
    weights at the start of that round. Each round :meth:`choose` samples ``delta`` layers without replacement
    with probability proportional to ``1 / s_l``; clients do not upload them and :meth:`aggregate` applies
    their previous update again (``x <- x + Delta_prev``), leaving their score as it was. Recycling starts
    once every candidate has a score (after the first round, in which every layer is uploaded).
    """

    def __init__(self, state: Mapping[str, torch.Tensor], delta: int, seed: int = 0, eps: float = 1e-12):
        self.candidates = [k for k, v in state.items() if v.is_floating_point() and v.dim() >= 2]
        if not 0 <= delta < len(self.candidates):
            raise MarlxError(
                f"FedLUAR delta={delta} must be >= 0 and below the number of weight tensors with 2+ dims "
                f"({len(self.candidates)}) so that at least one layer is uploaded"
            )
        self.delta = delta
        self.eps = eps
        self.rng = np.random.default_rng(seed)
        self.scores: dict[str, float] = {}
        self.prev_update: State = {}
        self.recycled: list[str] = []

    def choose(self) -> list[str]:
        """Pick this round's recycled layers (empty until every candidate has a score)."""
        if self.delta == 0 or any(k not in self.scores for k in self.candidates):
            self.recycled = []
        else:
            inv = np.array([1.0 / max(self.scores[k], self.eps) for k in self.candidates])
            pick = self.rng.choice(len(self.candidates), size=self.delta, replace=False, p=inv / inv.sum())
            self.recycled = [self.candidates[i] for i in sorted(pick)]
        return self.recycled

    def aggregate(self, start: Mapping[str, torch.Tensor], averaged: Mapping[str, torch.Tensor]) -> State:
        """New global state from the round-start state and the clients' average of the uploaded entries."""
        out: State = {}
        for k, x0 in start.items():
            if k in self.recycled:
                out[k] = x0 + self.prev_update[k]
                continue
            out[k] = averaged[k]
            if x0.is_floating_point():
                upd = averaged[k] - x0
                self.prev_update[k] = upd.detach().clone()
                if k in self.candidates:
                    self.scores[k] = float(upd.norm() / x0.norm().clamp_min(self.eps))
        return out

    def get_state(self) -> dict:
        return {"scores": dict(self.scores), "prev_update": clone_state(self.prev_update),
                "rng": self.rng.bit_generator.state}

    def set_state(self, state: dict) -> None:
        self.scores = dict(state["scores"])
        self.prev_update = clone_state(state["prev_update"])
        self.rng.bit_generator.state = state["rng"]
