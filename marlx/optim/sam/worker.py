"""Asynchronous SAM's perturbation worker and the pipeline that keeps its gradients ``tau`` steps stale."""

from __future__ import annotations

import collections
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn


class PerturbationWorker:
    """Computes ``grad L(w)`` for given weights on its own mini-batches (a Ray actor in the trainer).

    Args:
        model_fn: builds a replica of the model (same architecture as the trained one).
        x, y: the worker's data (it samples its own mini-batches from it); may be omitted when every call
            passes ``batch``.
        criterion: the loss.
        seed: seed of the worker's mini-batch sampler.
        threads: torch threads of the worker process.
    """

    def __init__(
        self,
        model_fn: Callable[[], nn.Module],
        x: Optional[torch.Tensor] = None,
        y: Optional[torch.Tensor] = None,
        criterion: Callable = F.cross_entropy,
        seed: int = 0,
        threads: int = 1,
    ) -> None:
        torch.set_num_threads(threads)
        self.model = model_fn()
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.x, self.y, self.criterion = x, y, criterion
        self.gen = torch.Generator().manual_seed(seed)

    def ready(self) -> bool:
        """For callers that wait until the actor has started (keeps start-up out of step timings)."""
        return True

    def gradient(self, weights, batch_size: Optional[int] = None, batch=None) -> tuple:
        """Gradient at ``weights`` (the trainable parameters as one flat vector) on ``batch`` or on ``batch_size``
        of the worker's own samples. BatchNorm layers use batch statistics (training mode), so buffers need
        not travel. Returns (flat gradient as a numpy array, compute seconds, batch size): one flat array
        each way keeps Ray's serialisation cost per call small.
        """
        t0 = time.perf_counter()
        with torch.no_grad():
            nn.utils.vector_to_parameters(torch.tensor(weights, dtype=self.params[0].dtype), self.params)
        if batch is None:
            idx = torch.randint(len(self.y), (int(batch_size),), generator=self.gen)
            x, y = self.x[idx], self.y[idx]
        else:
            x, y = batch
        for p in self.params:
            p.grad = None
        self.criterion(self.model(x), y).backward()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in self.params]
        return torch.cat([g.reshape(-1) for g in grads]).numpy(), time.perf_counter() - t0, len(y)


class ThreadWorker:
    """A :class:`PerturbationWorker` on a background thread of this process (torch kernels release the GIL).

    For the paper's setting of a perturbation on the CPU while the main step runs on a GPU, or where Ray is
    not available; the trainer's default is a Ray actor.
    """

    def __init__(self, worker: PerturbationWorker) -> None:
        self.worker = worker
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="marlx-sam-perturbation")

    def submit(self, weights, batch_size=None, batch=None) -> Future:
        return self.pool.submit(self.worker.gradient, weights, batch_size, batch)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class StaleGradientPipeline:
    """Feeds :class:`~marlx.optim.sam.core.AsyncSAM` with gradients ``staleness`` steps old.

    At step t, :meth:`next` sends the current weights ``w_t`` to the worker (non-blocking for a Ray actor,
    so the worker computes while the main step runs) and returns the gradient sent ``staleness`` steps ago,
    i.e. ``g_{t-tau}`` computed at ``w_{t-tau}``. With staleness 0 it waits for the gradient at ``w_t``.

    System-aware batch size (``batch_size=None``): after each gradient the batch is resized so that the
    worker's compute time is ``time_fraction`` of the main step's (exponential average) time, within
    ``[min_batch, max_batch]`` (marlx's rule; the paper states the goal, not the rule).

    Args:
        worker: a :class:`PerturbationWorker` or a Ray actor handle of one.
    """

    def __init__(
        self,
        worker,
        staleness: int = 1,
        batch_size: Optional[int] = None,
        *,
        initial_batch: int = 32,
        min_batch: int = 8,
        max_batch: int = 1024,
        time_fraction: float = 0.9,
    ) -> None:
        self.worker, self.staleness = worker, staleness
        self.remote = hasattr(worker, "gradient") and hasattr(worker.gradient, "remote")
        self.fixed = batch_size is not None
        self.batch_size = int(batch_size if batch_size is not None else initial_batch)
        self.min_batch, self.max_batch, self.time_fraction = min_batch, max_batch, time_fraction
        self.step_seconds: Optional[float] = None
        self.history: list[dict] = []
        self._queue: collections.deque = collections.deque()

    def next(self, model: nn.Module, batch=None) -> Optional[list[torch.Tensor]]:
        params = [p for p in model.parameters() if p.requires_grad]
        weights = nn.utils.parameters_to_vector(params).detach().cpu().numpy()
        if self.remote:
            self._queue.append(self.worker.gradient.remote(weights, self.batch_size, batch))
        elif isinstance(self.worker, ThreadWorker):
            self._queue.append(self.worker.submit(weights, self.batch_size, batch))
        else:
            self._queue.append(self.worker.gradient(weights, self.batch_size, batch))
        if len(self._queue) <= self.staleness:
            return None
        result = self._queue.popleft()
        if self.remote:
            import ray

            result = ray.get(result)
        elif isinstance(result, Future):
            result = result.result()
        flat, seconds, n = result
        self._resize(seconds, n)
        flat = torch.tensor(flat).to(params[0].device)  # a copy: arrays from Ray's object store are read-only
        grads, i = [], 0
        for p in params:
            grads.append(flat[i : i + p.numel()].view_as(p).to(p.dtype))
            i += p.numel()
        return grads

    def observe_step_seconds(self, seconds: float) -> None:
        self.step_seconds = seconds if self.step_seconds is None else 0.8 * self.step_seconds + 0.2 * seconds

    def _resize(self, seconds: float, n: int) -> None:
        self.history.append({"batch": n, "worker_s": seconds, "step_s": self.step_seconds})
        if self.fixed or self.step_seconds is None or seconds <= 0:
            return
        per_sample = seconds / max(1, n)
        target = int(self.time_fraction * self.step_seconds / per_sample)
        # move half-way (in log space) to damp timing noise on shared machines
        new = int(round((self.batch_size * max(1, target)) ** 0.5))
        self.batch_size = max(self.min_batch, min(self.max_batch, new))

    def drain(self) -> None:
        """Wait for outstanding gradients (call before shutting the worker down)."""
        if self.remote and self._queue:
            import ray

            ray.get(list(self._queue))
        for item in self._queue:
            if isinstance(item, Future):
                item.result()
        self._queue.clear()
