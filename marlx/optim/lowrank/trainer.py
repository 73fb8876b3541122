"""Standalone dynamic-rank training of an ordinary torch classifier: one process, or data parallel over
Ray actors (synchronous gradient averaging; one machine by default, a Ray cluster with ``address``).

``lowrank=None`` trains the dense model (full-rank baseline); ``LowRankConfig(boundaries=())`` is fixed
low-rank training; the default config is the reference schedule. The schedule counts epochs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from marlx.errors import MarlxError
from marlx.optim.data import ArrayDataset, accuracy
from marlx.optim.lowrank.schedule import DynamicRankController, LowRankConfig


@dataclass
class TrainerConfig:
    """Plain supervised training options (SGD with momentum and a cosine schedule, as for ResNet20)."""

    epochs: int = 150
    """Epochs (the reference: 150 on CIFAR-10)."""
    batch_size: int = 128
    """Global mini-batch size (split evenly over data-parallel workers)."""
    lr: float = 0.1
    """Initial learning rate, decayed by a cosine schedule per epoch."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 5e-4
    """L2 weight decay."""
    seed: int = 0
    """Seed of the initialisation and the data order."""


@dataclass
class TrainResult:
    """Per-epoch history of a run."""

    test_accuracy: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    forms: list[str] = field(default_factory=list)
    erank: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    model: nn.Module | None = None

    @property
    def final_accuracy(self) -> float:
        return self.test_accuracy[-1]


def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def _lr_at(cfg: TrainerConfig, epoch: int) -> float:
    return 0.5 * cfg.lr * (1 + np.cos(np.pi * epoch / max(1, cfg.epochs)))


def _build(model_fn: Callable[[], nn.Module], cfg: TrainerConfig, lowrank: LowRankConfig | None):
    torch.manual_seed(cfg.seed)
    model = model_fn()
    controller = None
    if lowrank is not None:
        controller = DynamicRankController(lowrank)
        controller.prepare(model)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return model, opt, controller


def iter_train(
    model_fn: Callable[[], nn.Module],
    train_data: ArrayDataset,
    test_data: ArrayDataset,
    config: TrainerConfig | None = None,
    lowrank: LowRankConfig | None = None,
) -> Iterator[TrainResult]:
    """:func:`train` one epoch at a time: yields the growing result after every epoch (lets a benchmark
    interleave contestants epoch by epoch, so machine load hits them alike)."""
    cfg = config or TrainerConfig()
    model, opt, controller = _build(model_fn, cfg, lowrank)
    res = TrainResult(model=model)
    for epoch in range(cfg.epochs):
        for g in opt.param_groups:
            g["lr"] = _lr_at(cfg, epoch)
        res.forms.append(controller.form if controller else "dense")
        t0 = time.perf_counter()
        model.train()
        order, total = _epoch_order(len(train_data), cfg.seed, epoch), 0.0
        for i in range(0, len(order), cfg.batch_size):
            idx = torch.from_numpy(order[i : i + cfg.batch_size])
            loss = F.cross_entropy(model(train_data.x[idx]), train_data.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        if controller:
            controller.advance({"model": model}, [opt])  # a switch's cost counts; monitoring does not
        res.epoch_seconds.append(time.perf_counter() - t0)
        if controller:
            controller.measure({"model": model})
            res.erank = controller.monitor.history
        res.train_loss.append(total / len(order))
        res.test_accuracy.append(accuracy(model, test_data))
        yield res
    if controller:
        controller.monitor.close()


def train(
    model_fn: Callable[[], nn.Module],
    train_data: ArrayDataset,
    test_data: ArrayDataset,
    config: TrainerConfig | None = None,
    lowrank: LowRankConfig | None = None,
) -> TrainResult:
    """Train ``model_fn()`` on ``train_data`` in this process; evaluate on ``test_data`` after every epoch."""
    res = TrainResult()
    for res in iter_train(model_fn, train_data, test_data, config, lowrank):
        pass
    return res


class _Worker:
    """One data-parallel replica (a Ray actor): holds the model, its optimiser and the training data."""

    def __init__(self, model_fn, train_data, cfg, lowrank, rank, world):
        torch.set_num_threads(1)
        self.cfg, self.rank, self.world, self.data = cfg, rank, world, train_data
        self.model, self.opt, self.controller = _build(model_fn, cfg, lowrank)
        self.params = list(self.model.parameters())

    def begin_epoch(self, epoch: int) -> int:
        for g in self.opt.param_groups:
            g["lr"] = _lr_at(self.cfg, epoch)
        self.model.train()
        self.order = _epoch_order(len(self.data), self.cfg.seed, epoch)
        return (len(self.order) + self.cfg.batch_size - 1) // self.cfg.batch_size

    def step(self, step: int, grads=None):
        """Apply the summed gradients of the previous step (if any), then return this replica's share of
        global batch ``step``: its gradients scaled by its share of the batch, and its loss sum."""
        self._apply(grads)
        batch = self.order[step * self.cfg.batch_size : (step + 1) * self.cfg.batch_size]
        idx = torch.from_numpy(batch[self.rank :: self.world])
        self.opt.zero_grad(set_to_none=True)
        if len(idx) == 0:
            return [None] * len(self.params), 0.0
        loss = F.cross_entropy(self.model(self.data.x[idx]), self.data.y[idx], reduction="sum")
        (loss / len(batch)).backward()
        return [None if p.grad is None else p.grad.numpy() for p in self.params], loss.item()

    def _apply(self, grads) -> None:
        if grads is None:
            return
        for p, g in zip(self.params, grads):
            p.grad = None if g is None else torch.from_numpy(g)
        self.opt.step()

    def finish_epoch(self, grads) -> dict:
        """Apply the last step; return the float buffers (BatchNorm statistics) for averaging."""
        self._apply(grads)
        return {n: b.numpy() for n, b in self.model.named_buffers() if b.is_floating_point()}

    def end_epoch(self, buffers: dict) -> None:
        """Take the averaged buffers, then switch forms if the schedule says so."""
        with torch.no_grad():
            for n, b in self.model.named_buffers():
                if n in buffers:
                    b.copy_(torch.from_numpy(buffers[n]))
        if self.controller:
            self.controller.advance({"model": self.model}, [self.opt])

    def state_dict(self) -> dict:
        return self.model.state_dict()


def _sum_grads(parts: list[list]) -> list:
    out = []
    for gs in zip(*parts):
        present = [g for g in gs if g is not None]
        out.append(np.sum(present, axis=0) if present else None)
    return out


def train_data_parallel(
    model_fn: Callable[[], nn.Module],
    train_data: ArrayDataset,
    test_data: ArrayDataset,
    config: TrainerConfig | None = None,
    lowrank: LowRankConfig | None = None,
    num_workers: int = 2,
    address: str | None = None,
    num_cpus_per_worker: float = 1.0,
) -> TrainResult:
    """Synchronous data-parallel training over ``num_workers`` Ray actors.

    Each global batch is split over the workers; their gradients are summed (each scaled by its share of
    the batch) and every replica applies the same step, so without BatchNorm the run equals :func:`train`
    up to float rounding. BatchNorm running statistics are averaged over workers after each epoch.
    Schedule switches happen in every replica at epoch ends with identical seeds, so replicas stay equal.
    """
    import ray

    cfg = config or TrainerConfig()
    if num_workers < 1:
        raise MarlxError(f"num_workers must be >= 1, got {num_workers}")
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False) if address else ray.init(num_cpus=max(2, num_workers), include_dashboard=False)
    actor = ray.remote(num_cpus=num_cpus_per_worker)(_Worker)
    data_ref = ray.put(train_data)
    workers = [actor.remote(model_fn, data_ref, cfg, lowrank, r, num_workers) for r in range(num_workers)]
    model, _, controller = _build(model_fn, cfg, lowrank)  # driver copy for evaluation
    res = TrainResult(model=model)
    try:
        for epoch in range(cfg.epochs):
            res.forms.append(controller.form if controller else "dense")
            t0 = time.perf_counter()
            steps = ray.get([w.begin_epoch.remote(epoch) for w in workers])[0]
            total, grads = 0.0, None
            for step in range(steps):  # one round trip per step: apply the previous sum, compute the next
                parts = ray.get([w.step.remote(step, grads) for w in workers])
                total += sum(p[1] for p in parts)
                grads = ray.put(_sum_grads([p[0] for p in parts]))
            bufs = ray.get([w.finish_epoch.remote(grads) for w in workers])
            mean = {k: np.mean([b[k] for b in bufs], axis=0) for k in bufs[0]}
            ray.get([w.end_epoch.remote(mean) for w in workers])
            res.epoch_seconds.append(time.perf_counter() - t0)
            model.load_state_dict(ray.get(workers[0].state_dict.remote()))
            if controller:
                controller.advance({})  # count only: the form came with the state dict
                controller.measure({"model": model})
            res.train_loss.append(total / len(train_data))
            res.test_accuracy.append(accuracy(model, test_data))
    finally:
        for w in workers:
            ray.kill(w)
    if controller:
        res.erank = controller.monitor.history
        controller.monitor.close()
    return res

