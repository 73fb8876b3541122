"""Standalone trainer: an ordinary torch model + dataset with SGD, SAM, layer-wise SAM or asynchronous SAM.

Asynchronous SAM's perturbation worker runs as a Ray actor (its own CPU) while the main process takes the
descent steps; Ray starts locally, or joins a cluster when ``address`` is given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from marlx.errors import MarlxError
from marlx.optim.data import ArrayDataset, accuracy
from marlx.optim.sam.core import SAMConfig, SharpnessStep, make_step
from marlx.optim.sam.worker import PerturbationWorker, StaleGradientPipeline, ThreadWorker

METHODS = ("sgd", "sam", "layerwise", "async")


@dataclass
class SAMTrainerConfig:
    """Options of :class:`SAMTrainer`."""

    method: str = "sam"
    """``sgd`` (baseline), ``sam``, ``layerwise`` or ``async``."""
    lr: float = 0.05
    """SGD learning rate."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 5e-4
    """SGD weight decay."""
    batch_size: int = 64
    """Mini-batch size of the descent step."""
    epochs: int = 5
    """Passes over the training data."""
    seed: int = 0
    """Seed of the model initialisation and of the data order."""
    amp_dtype: Optional[str] = None
    """``bfloat16``/``float16``: autocast the forward passes and use a GradScaler (``None``: fp32)."""
    address: Optional[str] = None
    """Ray cluster address for the perturbation worker (``None``: start or join a local Ray)."""
    worker_cpus: float = 1.0
    """CPUs reserved for asynchronous SAM's perturbation actor."""
    worker_backend: str = "ray"
    """async: ``ray`` (the perturbation worker is a Ray actor) or ``thread`` (a thread of this process, e.g. a
    CPU perturbation while the main step runs on a GPU)."""
    device: str = "cpu"
    """Device of the main (descent) step; the perturbation worker always computes on the CPU."""
    sam: dict = field(default_factory=dict)
    """:class:`~marlx.optim.sam.core.SAMConfig` options (``variant`` is set from ``method``)."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            from marlx.errors import UnknownNameError

            raise UnknownNameError("SAM trainer method", self.method, METHODS)
        if self.worker_backend not in ("ray", "thread"):
            raise MarlxError(f"worker_backend must be 'ray' or 'thread', got {self.worker_backend!r}")
        if self.amp_dtype not in (None, "bfloat16", "float16"):
            raise MarlxError(f"amp_dtype must be None, 'bfloat16' or 'float16', got {self.amp_dtype!r}")


class SAMTrainer:
    """Train ``model_fn()`` on ``train`` and report time per step and test accuracy."""

    def __init__(self, model_fn: Callable[[], nn.Module], train: ArrayDataset, test: Optional[ArrayDataset] = None,
                 config: Optional[SAMTrainerConfig] = None, **overrides) -> None:
        self.config = config or SAMTrainerConfig(**overrides)
        self.model_fn, self.train, self.test = model_fn, train, test
        cfg = self.config
        torch.manual_seed(cfg.seed)
        self.model = model_fn().to(cfg.device)
        on = lambda d: d if d is None else ArrayDataset(d.x.to(cfg.device), d.y.to(cfg.device), d.num_classes)  # noqa: E731
        self.train_on_device, self.test_on_device = on(train), on(test)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        variant = cfg.method if cfg.method != "sgd" else "sam"
        self.sam_config = SAMConfig.from_dict({**cfg.sam, "variant": variant})
        dtype = getattr(torch, cfg.amp_dtype) if cfg.amp_dtype else None
        scaler = torch.amp.GradScaler(torch.device(cfg.device).type) if dtype is not None else None
        self.actor = None
        self.thread_worker: Optional[ThreadWorker] = None
        self.source = None
        if cfg.method == "async":
            self.source = StaleGradientPipeline(
                self._start_worker(), self.sam_config.staleness, self.sam_config.perturb_batch_size,
                initial_batch=cfg.batch_size, min_batch=self.sam_config.min_perturb_batch,
                max_batch=self.sam_config.max_perturb_batch, time_fraction=self.sam_config.ascent_time_fraction)
        kwargs = dict(scaler=scaler, autocast_dtype=dtype)
        if cfg.method == "sgd":
            self.stepper: SharpnessStep = SharpnessStep(self.model, self.optimizer, self.sam_config, **kwargs)
        else:
            self.stepper = make_step(self.model, self.optimizer, self.sam_config, source=self.source, **kwargs)

    def _start_worker(self):
        if self.config.worker_backend == "thread":
            self.thread_worker = ThreadWorker(PerturbationWorker(self.model_fn, self.train.x, self.train.y,
                                                                 seed=self.config.seed + 1))
            return self.thread_worker
        import ray

        if not ray.is_initialized():
            ray.init(address=self.config.address, include_dashboard=False, configure_logging=False,
                     log_to_driver=False, **({} if self.config.address else {"num_cpus": 2}))
        remote = ray.remote(num_cpus=self.config.worker_cpus)(PerturbationWorker)
        self.actor = remote.remote(self.model_fn, self.train.x, self.train.y, seed=self.config.seed + 1)
        ray.get(self.actor.ready.remote())
        return self.actor

    def fit(self, log: Optional[Callable[[dict], None]] = None) -> dict:
        """Train ``epochs`` passes; returns per-epoch history, seconds per step and final accuracies."""
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        train, test = self.train_on_device, self.test_on_device
        n, history, steps, seconds = len(train), [], 0, 0.0
        self.model.train()
        for epoch in range(cfg.epochs):
            perm = torch.randperm(n, generator=gen)
            losses = []
            t0 = time.perf_counter()
            for i in range(0, n - cfg.batch_size + 1, cfg.batch_size):
                idx = perm[i : i + cfg.batch_size]
                idx = idx.to(train.x.device)
                losses.append(self.stepper.step(train.x[idx], train.y[idx]))
                steps += 1
            seconds += time.perf_counter() - t0
            row = {"epoch": epoch + 1, "loss": sum(losses) / max(1, len(losses))}
            if test is not None:
                row["test_accuracy"] = accuracy(self.model, test)
            history.append(row)
            if log:
                log(row)
        result = {
            "method": cfg.method,
            "steps": steps,
            "seconds_per_step": seconds / max(1, steps),
            "train_accuracy": accuracy(self.model, train),
            "train_grad_norm": train_gradient_norm(self.model, train),
            "test_accuracy": accuracy(self.model, test) if test is not None else None,
            "history": history,
        }
        if self.source is not None:
            result["perturb_batch"] = self.source.batch_size
        return result

    def close(self) -> None:
        """Stop the perturbation actor (if any)."""
        if self.source is not None:
            self.source.drain()
        if self.thread_worker is not None:
            self.thread_worker.close()
            self.thread_worker = None
        if self.actor is not None:
            import ray

            ray.kill(self.actor)
            self.actor = None


def train_gradient_norm(model: nn.Module, data, batch_size: int = 512) -> float:
    """``||grad L(w)||`` of the mean cross-entropy over all of ``data`` at the current weights (eval mode, so
    BatchNorm uses its running statistics): what SAM's gradient-norm penalty acts on (lower = flatter)."""
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    n = len(data.y)
    for i in range(0, n, batch_size):
        x, y = data.x[i : i + batch_size], data.y[i : i + batch_size]
        loss = F.cross_entropy(model(x), y, reduction="sum") / n
        for t, g in zip(total, torch.autograd.grad(loss, params)):
            t.add_(g)
    model.train(was_training)
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in total])))

