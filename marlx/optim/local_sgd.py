"""Biased local SGD for heterogeneous workers (Lim, Jo, Ko, Go, Hwa, Lee; arXiv 2508.08540), on Ray.

Two forms, as for every ``marlx.optim`` technique:

* :class:`LocalSGDTrainer` trains an ordinary torch model on an :class:`~marlx.optim.data.ArrayDataset` with
  workers that are Ray actors, each with its own resource request (:class:`WorkerSpec`).  Every worker uses
  the same batch size; a round is ``steps_w`` local SGD steps on worker ``w`` followed by an *unweighted*
  average of all worker models (BatchNorm buffers included).  ``steps_w`` is proportional to the worker's
  throughput, measured at start-up (and optionally again from the rounds' own timings).  One pass over
  the data takes ``S = N // (B * sum_w steps_w)`` rounds and worker ``w`` gets ``S * steps_w * B`` samples
  of it.  In ``mode="biased"`` slow workers pick their samples from a uniform candidate pool
  ``pool_factor`` (4) times their budget, keeping the samples with the highest loss in a per-sample loss
  table (initialised to +inf, overwritten by each trained sample's loss, merged across workers by
  elementwise minimum at the start of every pass); fast workers sample uniformly.  ``mode="local"`` is the
  same with uniform sampling everywhere, ``mode="sync"`` is synchronous data-parallel SGD on the same
  workers (one step per round, gradients averaged) -- the baseline.
  Heterogeneity is reproducible on one machine through :attr:`WorkerSpec.slowdown`.
  A worker that dies is dropped from the round; it is replaced (default) or left out from then on.

* :class:`LocalSGDHook` (``optim: {local_sgd: {every: 4}}``) makes RLlib learners with ``num_learners >= 2``
  train locally and average their modules every ``every`` updates through the torch.distributed process
  group that RLlib's learner group sets up, instead of DDP's all-reduce of gradients in every step.

Behaviour read from the authors' code (PyTorch): batch 64, lr 0.1, momentum 0.9, weight decay 1e-4,
32 local steps per round on a GPU and 1 on a CPU, candidate pool 4x the slow workers' budget, per-worker
optimisers that keep their momentum across averaging.  marlx's own choices are documented as options.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from marlx.errors import MarlxError
from marlx.optim.data import ArrayDataset, accuracy
from marlx.optim.rllib_hooks import LearnerHook, register_hook

MODES = ("biased", "local", "sync")
MOMENTUM_POLICIES = ("keep", "reset", "average")
FAILURE_POLICIES = ("replace", "drop")


@dataclass
class WorkerSpec:
    """One worker: a Ray actor with its own resource request."""

    num_cpus: float = 1.0
    """CPUs the actor asks Ray for (fractions allowed)."""
    num_gpus: float = 0.0
    """GPUs the actor asks Ray for; the worker trains on ``cuda`` when > 0."""
    resources: dict = field(default_factory=dict)
    """Custom Ray resources, e.g. ``{"node:10.0.0.2": 0.01}`` to pin a worker to a node of a cluster."""
    slowdown: float = 1.0
    """Simulated heterogeneity: each local step takes ``slowdown`` times its compute time (the worker
    sleeps for the rest). 1 = full speed. For tests and benchmarks on one machine."""
    name: str = ""
    """Shown in logs and results; defaults to ``w<index>``."""


@dataclass
class LocalSGDConfig:
    """Hyper-parameters of :class:`LocalSGDTrainer` (defaults: the authors' CIFAR-10 / ResNet20 code)."""

    mode: str = "biased"
    """``biased`` (the paper), ``local`` (local SGD, uniform sampling) or ``sync`` (synchronous SGD baseline)."""
    batch_size: int = 64
    """Per-worker mini-batch size, the same on every worker."""
    lr: float = 0.1
    """SGD learning rate of every worker."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 1e-4
    """L2 weight decay inside SGD."""
    lr_milestones: tuple = ()
    """Passes over the data after which the learning rate is multiplied by ``lr_decay`` (code: MultiStepLR)."""
    lr_decay: float = 0.1
    """Factor applied at each milestone."""
    max_local_steps: int = 32
    """Local steps per round of the fastest worker (code: 32 on a GPU); others get a share in proportion
    to their measured throughput."""
    min_local_steps: int = 1
    """Fewest local steps per round (code: 1 on a CPU)."""
    local_steps: Optional[tuple] = None
    """Fixed steps per worker instead of measuring (``None``: measure)."""
    slow_fraction: float = 0.5
    """marlx: a worker is *slow* (samples biased in ``biased`` mode) when its steps per round are at most
    this fraction of the fastest worker's (the paper's slow workers are its CPUs)."""
    pool_factor: float = 4.0
    """Slow workers draw a uniform candidate pool this many times their budget and keep the highest-loss samples."""
    momentum_policy: str = "keep"
    """Optimiser momentum across averaging: ``keep`` each worker's own buffer (the authors' code), ``reset``
    it to zero every round, or ``average`` it like the weights (then H=1 equals synchronous SGD exactly)."""
    probe_steps: int = 5
    """Timed local steps per worker at start-up to measure throughput (after one warm-up step)."""
    remeasure_every: int = 0
    """marlx: re-derive step counts every this many passes from the rounds' measured step times (0 = never)."""
    on_worker_failure: str = "replace"
    """A dead worker is left out of its round, then ``replace``-d by a fresh actor with the same spec or ``drop``-ped."""
    seed: int = 0
    """Seeds the model initialisation, the data plan and the workers."""
    address: Optional[str] = None
    """Ray cluster address for ``ray.init`` when Ray is not initialised yet (``None``: a local Ray)."""

    def __post_init__(self) -> None:
        for name, value, valid in (
            ("mode", self.mode, MODES),
            ("momentum_policy", self.momentum_policy, MOMENTUM_POLICIES),
            ("on_worker_failure", self.on_worker_failure, FAILURE_POLICIES),
        ):
            if value not in valid:
                raise MarlxError(f"local_sgd: {name}={value!r} is not one of {', '.join(valid)}")
        if self.batch_size < 1 or self.max_local_steps < 1 or not 1 <= self.min_local_steps <= self.max_local_steps:
            raise MarlxError("local_sgd: need batch_size >= 1 and 1 <= min_local_steps <= max_local_steps")
        if self.pool_factor < 1:
            raise MarlxError(f"local_sgd: pool_factor must be >= 1, got {self.pool_factor}")


# ----------------------------------------------------------------------------------------------------------
# Pure pieces: step counts, the data plan, the loss table, averaging (unit-tested without Ray)


def steps_from_throughput(throughput, max_steps: int, min_steps: int = 1) -> list[int]:
    """Local steps per round in proportion to throughput (steps/s); the fastest worker gets ``max_steps``."""
    thr = np.asarray(throughput, dtype=float)
    if thr.size == 0 or not np.all(thr > 0):
        raise MarlxError(f"local_sgd: throughputs must be positive, got {thr.tolist()}")
    return [int(s) for s in np.clip(np.rint(max_steps * thr / thr.max()), min_steps, max_steps)]


def biased_sample(loss_table: np.ndarray, budget: int, pool_factor: float, rng: np.random.Generator):
    """Draw a uniform pool of ``pool_factor * budget`` indices (capped at N), keep the ``budget`` highest-loss.

    Unseen samples have loss +inf, so they come first. Returns ``(selected, pool)``; ``selected`` shuffled.
    """
    n = len(loss_table)
    pool = rng.choice(n, size=min(n, int(math.ceil(pool_factor * budget))), replace=False)
    # stable sort on -loss keeps the pool's random order among ties (e.g. all +inf at the start)
    order = np.argsort(-loss_table[pool], kind="stable")
    selected = pool[order[: min(budget, len(pool))]]
    return rng.permutation(selected), pool


def merge_loss_tables(table: np.ndarray, updates: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Min-merge of the workers' tables, each being ``table`` overwritten with that worker's fresh losses."""
    if not updates:
        return table.copy()
    merged = np.full_like(table, np.inf)
    for idx, loss in updates:
        local = table.copy()
        local[idx] = loss  # latest loss wins within a worker (chronological order)
        np.minimum(merged, local, out=merged)
    return merged


def average_states(states: list[dict]) -> dict:
    """Unweighted average of state dicts, parameters and buffers alike; integer buffers floor-averaged."""
    out = {}
    for key in states[0]:
        stacked = torch.stack([s[key].detach().cpu() for s in states])
        if stacked.is_floating_point():
            out[key] = stacked.mean(0)
        else:
            out[key] = torch.div(stacked.sum(0), len(states), rounding_mode="floor")
    return out


def average_tensor_lists(lists: list[Optional[list]]) -> Optional[list]:
    """Elementwise mean of lists of tensors (e.g. momentum buffers); ``None`` if any list is missing."""
    if not lists or any(x is None for x in lists):
        return None
    return [torch.stack([x[i] for x in lists]).mean(0) for i in range(len(lists[0]))]


# ----------------------------------------------------------------------------------------------------------
# The worker (a Ray actor)


def _cpu_state(module: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


class LocalSGDWorker:
    """Holds a model replica, the training data and its own SGD optimiser. Run as a Ray actor."""

    def __init__(self, model_fn: Callable[[], nn.Module], data: ArrayDataset, cfg: LocalSGDConfig, slowdown: float, seed: int):
        torch.set_num_threads(1)
        torch.manual_seed(seed)
        self.device = torch.device("cuda" if torch.cuda.is_available() and _has_gpu() else "cpu")
        self.model = model_fn().to(self.device)
        self.x, self.y = data.x, data.y
        self.cfg, self.slowdown = cfg, float(slowdown)
        self.rng = np.random.default_rng(seed)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.loss_fn = nn.CrossEntropyLoss(reduction="none")

    def _load(self, state: dict) -> None:
        self.model.load_state_dict(state)
        self.model.train()

    def _forward_backward(self, idx: np.ndarray) -> torch.Tensor:
        idx_t = torch.from_numpy(np.array(idx, dtype=np.int64))  # Ray hands out read-only arrays
        x, y = self.x[idx_t].to(self.device), self.y[idx_t].to(self.device)
        losses = self.loss_fn(self.model(x), y)
        self.opt.zero_grad(set_to_none=True)
        losses.mean().backward()
        return losses.detach().cpu()

    def _throttle(self, t0: float) -> float:
        """Sleep so that a step takes ``slowdown`` times its compute time; returns the compute time.

        The sleep uses the median of the last 20 compute times, so that a step delayed by other processes on
        a shared machine does not multiply the delay.
        """
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        compute = time.perf_counter() - t0
        self._compute_times = (getattr(self, "_compute_times", []) + [compute])[-20:]
        if self.slowdown > 1:
            time.sleep((self.slowdown - 1.0) * float(np.median(self._compute_times)))
        return compute

    def measure(self, state: dict, probe_steps: int) -> float:
        """Throughput in local steps per second (throttling included) on a scratch copy of the model."""
        saved_model, saved_opt = _cpu_state(self.model), copy.deepcopy(self.opt.state_dict())
        self._load(state)
        times = []
        for i in range(probe_steps + 2):  # the first two steps warm up and are not timed
            t0 = time.perf_counter()
            self._forward_backward(self.rng.choice(len(self.y), self.cfg.batch_size, replace=False))
            self.opt.step()
            self._throttle(t0)
            if i >= 2:
                times.append(time.perf_counter() - t0)
        self.model.load_state_dict(saved_model)
        self.opt.load_state_dict(saved_opt)
        return 1.0 / float(np.median(times))

    def train_round(self, state: dict, indices: np.ndarray, steps: int, lr: float, momentum: Optional[list], reset_momentum: bool, return_momentum: bool) -> dict:
        """``steps`` local SGD steps on consecutive batches of ``indices``; returns weights and per-sample losses."""
        self._load(state)
        params = list(self.model.parameters())
        if reset_momentum:
            self.opt.state.clear()
        if momentum is not None:
            for p, buf in zip(params, momentum):
                self.opt.state[p]["momentum_buffer"] = buf.to(self.device).clone()
        for group in self.opt.param_groups:
            group["lr"] = lr
        bs, losses, busy = self.cfg.batch_size, [], 0.0
        for s in range(steps):
            t0 = time.perf_counter()
            losses.append(self._forward_backward(indices[s * bs : (s + 1) * bs]))
            self.opt.step()
            self._throttle(t0)
            busy += time.perf_counter() - t0
        buffers = None
        if return_momentum:
            buffers = [self.opt.state[p].get("momentum_buffer", torch.zeros_like(p)).detach().cpu().clone() for p in params]
        return {
            "state": _cpu_state(self.model),
            "indices": np.asarray(indices[: steps * bs]),
            "losses": torch.cat(losses).numpy() if losses else np.zeros(0, np.float32),
            "seconds_per_step": busy / max(1, steps),
            "momentum": buffers,
        }

    def gradient(self, state: dict, indices: np.ndarray) -> dict:
        """One synchronous-SGD step's share: the gradient at ``state`` on ``indices`` and the updated buffers."""
        self._load(state)
        t0 = time.perf_counter()
        losses = self._forward_backward(indices)
        self._throttle(t0)
        return {
            "grads": [p.grad.detach().cpu().clone() for p in self.model.parameters()],
            "buffers": {k: v.detach().cpu().clone() for k, v in self.model.named_buffers()},
            "indices": np.asarray(indices),
            "losses": losses.numpy(),
            "seconds_per_step": time.perf_counter() - t0,
        }

    def get_state(self) -> dict:
        return _cpu_state(self.model)

    def ping(self) -> bool:
        return True


def _has_gpu() -> bool:
    import ray

    try:
        return bool(ray.get_gpu_ids())
    except Exception:  # not inside a Ray worker
        return False


# ----------------------------------------------------------------------------------------------------------
# The trainer (driver)


class LocalSGDTrainer:
    """Biased local SGD (or local / synchronous SGD) of ``model_fn()`` on ``train`` with Ray actor workers.

    Example::

        trainer = LocalSGDTrainer(lambda: small_cnn(), train, [WorkerSpec(slowdown=1), WorkerSpec(slowdown=8)],
                                  LocalSGDConfig(mode="biased", max_local_steps=8), test=test)
        history = trainer.fit(passes=10)
        trainer.shutdown()
    """

    def __init__(self, model_fn: Callable[[], nn.Module], train: ArrayDataset, workers: list[WorkerSpec], config: Optional[LocalSGDConfig] = None, test: Optional[ArrayDataset] = None):
        import ray

        self.cfg = config or LocalSGDConfig()
        if not workers:
            raise MarlxError("local_sgd: give at least one WorkerSpec")
        if self.cfg.local_steps is not None and len(self.cfg.local_steps) != len(workers):
            raise MarlxError(f"local_sgd: local_steps has {len(self.cfg.local_steps)} entries for {len(workers)} workers")
        if not ray.is_initialized():
            ray.init(address=self.cfg.address, include_dashboard=False)
        self.model_fn, self.train_data, self.test_data = model_fn, train, test
        torch.manual_seed(self.cfg.seed)
        self.model = model_fn()
        self.rng = np.random.default_rng(self.cfg.seed)
        self.specs = [WorkerSpec(**{**vars(w), "name": w.name or f"w{i}"}) for i, w in enumerate(workers)]
        self.steps: list[int] = []
        self._plan: list[np.ndarray] = []
        self._data_ref = ray.put(train)
        self._spawn_count = 0
        self.actors: list = [self._spawn(spec) for spec in self.specs]
        self._gather([a.ping.remote() for a in self.actors])  # started (imports done): keeps start-up off the clocks
        self.loss_table = np.full(len(train), np.inf, dtype=np.float32)
        self._pending: dict[int, list] = {}
        self._momentum: Optional[list] = None  # averaged momentum buffers (momentum_policy="average")
        self.failures: list[dict] = []
        self.rounds = self.passes = 0
        self.samples_seen = 0
        self.sync_opt = torch.optim.SGD(self.model.parameters(), lr=self.cfg.lr, momentum=self.cfg.momentum, weight_decay=self.cfg.weight_decay)
        self._step_times: dict[int, list] = {}
        self.throughput = self._measure() if self.cfg.local_steps is None else None
        self.steps = self._steps_for(self.throughput)
        self.last_pool: dict[int, np.ndarray] = {}
        self._round_in_pass = self._rounds_per_pass = 0

    # -- workers ---------------------------------------------------------------------------------------
    def _spawn(self, spec: WorkerSpec):
        import ray

        self._spawn_count += 1
        cls = ray.remote(LocalSGDWorker).options(
            num_cpus=spec.num_cpus, num_gpus=spec.num_gpus, resources=spec.resources or None, max_restarts=0, max_task_retries=0
        )
        return cls.remote(self.model_fn, self._data_ref, self.cfg, spec.slowdown, self.cfg.seed * 1000 + self._spawn_count)

    def _gather(self, refs: list) -> list:
        """Results per worker; a worker whose actor died gives ``None`` and is replaced or dropped."""
        return self._gather_some(list(self.actors), refs)

    def _gather_some(self, actors: list, refs: list) -> list:
        import ray

        results, dead = [], []
        for pos, (actor, ref) in enumerate(zip(actors, refs)):
            try:
                results.append(ray.get(ref))
            except ray.exceptions.RayActorError as e:  # the actor died (killed, node lost, OOM)
                i = self.actors.index(actor)
                results.append(None)
                dead.append((i, pos))
                self.failures.append({"round": self.rounds, "worker": self.specs[i].name, "error": type(e).__name__})
        for i, pos in sorted(dead, reverse=True):
            if self.cfg.on_worker_failure == "replace":
                self.actors[i] = self._spawn(self.specs[i])
            else:  # forget the worker: its share of the current pass is skipped
                del self.actors[i], self.specs[i]
                for per_worker in (self.steps, self._plan):
                    if i < len(per_worker):
                        del per_worker[i]
                results.pop(pos)
                self._step_times = {}
        if not self.actors:
            raise MarlxError("local_sgd: every worker has died")
        return results

    def _measure(self) -> list[float]:
        import ray

        ref = ray.put(_cpu_state(self.model))
        # one worker at a time, so that workers sharing a machine do not disturb each other's measurement
        thr = []
        for a in list(self.actors):
            thr += self._gather_some([a], [a.measure.remote(ref, self.cfg.probe_steps)])
        return [t if t is not None else min(x for x in thr if x is not None) for t in thr]

    def _steps_for(self, throughput) -> list[int]:
        if self.cfg.mode == "sync":
            return [1] * len(self.actors)
        if self.cfg.local_steps is not None and throughput is None:
            return [int(s) for s in self.cfg.local_steps]
        return steps_from_throughput(throughput, self.cfg.max_local_steps, self.cfg.min_local_steps)

    def slow_workers(self) -> list[int]:
        """Indices of the workers that sample by loss in ``biased`` mode."""
        top = max(self.steps)
        return [i for i, s in enumerate(self.steps) if s <= self.cfg.slow_fraction * top]

    # -- the data plan ---------------------------------------------------------------------------------
    def _start_pass(self) -> None:
        cfg, n = self.cfg, len(self.train_data)
        if self.passes and cfg.remeasure_every and self.passes % cfg.remeasure_every == 0 and self._step_times:
            self.throughput = [1.0 / float(np.median(self._step_times.get(i, [np.inf]))) for i in range(len(self.actors))]
            if all(t > 0 for t in self.throughput):
                self.steps = self._steps_for(self.throughput)
        self._step_times = {}
        self.loss_table = merge_loss_tables(self.loss_table, [u for w in sorted(self._pending) for u in self._pending[w]])
        self._pending = {}
        self._rounds_per_pass = max(1, n // (cfg.batch_size * sum(self.steps)))
        budgets = [self._rounds_per_pass * s * cfg.batch_size for s in self.steps]
        perm = self.rng.permutation(n)
        slow = set(self.slow_workers()) if cfg.mode == "biased" else set()
        self.last_pool = {}
        if slow:
            # one pool for all slow workers, as in the authors' code; fast workers slice a fresh permutation
            chosen, pool = biased_sample(self.loss_table, sum(budgets[i] for i in slow), cfg.pool_factor, self.rng)
        plan, start, slow_start = [], 0, 0
        for i, b in enumerate(budgets):
            if i in slow:
                plan.append(chosen[slow_start : slow_start + b])
                self.last_pool[i] = pool
                slow_start += b
            else:
                plan.append(np.take(perm, np.arange(start, start + b), mode="wrap"))
                start += b
        self._plan = plan
        self._round_in_pass = 0

    def _lr(self) -> float:
        return self.cfg.lr * self.cfg.lr_decay ** sum(self.passes >= m for m in self.cfg.lr_milestones)

    # -- one round -------------------------------------------------------------------------------------
    def run_round(self) -> dict:
        """One round: local steps on every worker, then the unweighted average (or one synchronous step)."""
        import ray

        if self._round_in_pass >= self._rounds_per_pass or not self._plan:
            if self._plan:
                self.passes += 1
            self._start_pass()
        r, bs = self._round_in_pass, self.cfg.batch_size
        indices = [p[r * s * bs : (r + 1) * s * bs] for p, s in zip(self._plan, self.steps)]
        self.last_round_indices = indices
        state = ray.put(_cpu_state(self.model))
        t0 = time.perf_counter()
        if self.cfg.mode == "sync":
            results = self._gather([a.gradient.remote(state, idx) for a, idx in zip(self.actors, indices)])
            self._apply_sync(results)
        else:
            policy = self.cfg.momentum_policy
            momentum = ray.put(self._momentum) if policy == "average" else None
            refs = [
                a.train_round.remote(state, idx, s, self._lr(), momentum, policy == "reset", policy == "average")
                for a, idx, s in zip(self.actors, indices, self.steps)
            ]
            results = self._gather(refs)
            alive = [x for x in results if x is not None]
            self.model.load_state_dict(average_states([x["state"] for x in alive]))
            if policy == "average":
                self._momentum = average_tensor_lists([x["momentum"] for x in alive])
        seconds = time.perf_counter() - t0
        for i, res in enumerate(results):
            if res is not None:
                self._pending.setdefault(i, []).append((res["indices"], res["losses"]))
                self._step_times.setdefault(i, []).append(res["seconds_per_step"])
                self.samples_seen += len(res["indices"])
        self.rounds += 1
        self._round_in_pass += 1
        return {"round": self.rounds, "seconds": seconds, "workers": sum(x is not None for x in results), "steps": list(self.steps)}

    def _apply_sync(self, results: list) -> None:
        alive = [x for x in results if x is not None]
        for group in self.sync_opt.param_groups:
            group["lr"] = self._lr()
        self.sync_opt.zero_grad(set_to_none=True)
        for i, p in enumerate(self.model.parameters()):
            p.grad = torch.stack([x["grads"][i] for x in alive]).mean(0)
        self.sync_opt.step()
        buffers = average_states([x["buffers"] for x in alive])
        with torch.no_grad():
            for k, v in self.model.named_buffers():
                v.copy_(buffers[k])

    # -- training loop ---------------------------------------------------------------------------------
    def fit(self, passes: Optional[float] = None, time_budget_s: Optional[float] = None, target_accuracy: Optional[float] = None, eval_every: int = 1, logdir: Optional[str] = None) -> list[dict]:
        """Run rounds until ``passes`` passes over the data, ``time_budget_s`` training seconds, or the
        ``target_accuracy`` on the test set (checked every ``eval_every`` rounds). Evaluation time is not
        counted. Returns the evaluation history: dicts of round, pass, training seconds, samples, accuracy."""
        if passes is None and time_budget_s is None and target_accuracy is None:
            raise MarlxError("local_sgd: fit() needs passes, time_budget_s or target_accuracy")
        if target_accuracy is not None and self.test_data is None:
            raise MarlxError("local_sgd: target_accuracy needs the trainer's test set")
        writer = None
        if logdir:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(logdir)
        history, clock = [], 0.0
        n = len(self.train_data)
        while True:
            clock += self.run_round()["seconds"]
            done_passes = self.samples_seen / n
            if self.rounds % eval_every == 0 or (passes is not None and done_passes >= passes):
                acc = accuracy(self.model, self.test_data) if self.test_data is not None else float("nan")
                history.append({"round": self.rounds, "passes": done_passes, "seconds": clock, "samples": self.samples_seen, "accuracy": acc})
                if writer is not None:
                    writer.add_scalar("local_sgd/test_accuracy", acc, self.samples_seen)
                    writer.add_scalar("local_sgd/train_seconds", clock, self.samples_seen)
                if target_accuracy is not None and acc >= target_accuracy:
                    break
            if (passes is not None and done_passes >= passes) or (time_budget_s is not None and clock >= time_budget_s):
                break
        if writer is not None:
            writer.close()
        return history

    def worker_states(self) -> list[dict]:
        """Each worker's current local weights (after its last round, before averaging)."""
        import ray

        return ray.get([a.get_state.remote() for a in self.actors])

    def shutdown(self) -> None:
        """Kill the worker actors (the Ray session itself is left running)."""
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []


# ----------------------------------------------------------------------------------------------------------
# The RLlib learner hook


@register_hook
class LocalSGDHook(LearnerHook):
    """Local SGD across RLlib learners: no per-step gradient all-reduce, module averaging every ``every`` updates.

    RLlib wraps each module in DDP when ``num_learners > 1``; DDP all-reduces gradients inside ``backward``.
    This hook runs RLlib's whole update under DDP's ``no_sync()`` (so each learner steps on its own gradient)
    and every ``every`` updates all-reduces the parameters (and floating-point buffers) over the default
    torch.distributed process group that RLlib's learner group initialised, dividing by the world size.
    With fewer than two learners there is nothing to average and the hook changes nothing.
    Module buffers: DDP's ``broadcast_buffers`` (on by default, in ``config.torch_ddp_kwargs``) still copies rank
    0's buffers at every forward pass; set it to ``False`` to let buffers train locally and be averaged here.

    Options:
        every: updates (gradient steps, i.e. minibatches) between averagings; H. Default 4.
        momentum: optimiser state at averaging: ``keep`` (each learner's own), ``reset`` (cleared) or
            ``average`` (floating-point state tensors shaped like their parameter are averaged too).
    """

    name = "local_sgd"

    @classmethod
    def check_options(cls, every: int = 4, momentum: str = "keep", **options: Any) -> None:
        if options:
            raise MarlxError(f"local_sgd hook: unknown option(s) {', '.join(sorted(options))}; valid: every, momentum")
        if int(every) < 1:
            raise MarlxError(f"local_sgd hook: every must be >= 1, got {every}")
        if momentum not in MOMENTUM_POLICIES:
            raise MarlxError(f"local_sgd hook: momentum={momentum!r} is not one of {', '.join(MOMENTUM_POLICIES)}")

    def __init__(self, learner, every: int = 4, momentum: str = "keep", **options: Any) -> None:
        self.check_options(every=every, momentum=momentum, **options)
        super().__init__(learner, every=every, momentum=momentum)
        self.every, self.momentum = int(every), momentum
        self.num_updates = self.num_averages = 0

    @staticmethod
    def world_size() -> int:
        import torch.distributed as dist

        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def _torch_modules(self) -> list[nn.Module]:
        return [m for m in self.learner.module.values() if isinstance(m, nn.Module)]

    def update(self, batch: dict, default_update: Callable[[dict], tuple]) -> tuple:
        if self.world_size() < 2:
            return default_update(batch)
        with contextlib.ExitStack() as stack:
            for mod in self._torch_modules():
                if isinstance(mod, nn.parallel.DistributedDataParallel):
                    stack.enter_context(mod.no_sync())
            out = default_update(batch)
        self.num_updates += 1
        if self.num_updates % self.every == 0:
            self.average()
        return out

    @torch.no_grad()
    def average(self) -> None:
        """All-reduce-average every module's parameters and floating buffers (and optimiser state if asked)."""
        import torch.distributed as dist

        world = self.world_size()
        tensors = []
        for mod in self._torch_modules():
            tensors += [p.data for p in mod.parameters()] + [b for b in mod.buffers() if b.is_floating_point()]
        optimizers = []
        if self.momentum != "keep":
            for mid in self.learner.module.keys():
                optimizers += [opt for _, opt in self.learner.get_optimizers_for_module(mid)]
        for opt in optimizers:
            if self.momentum == "reset":
                opt.state.clear()
                continue
            for p, st in opt.state.items():
                tensors += [v for v in st.values() if torch.is_tensor(v) and v.is_floating_point() and v.shape == p.shape]
        if tensors:
            flat = torch.cat([t.reshape(-1) for t in tensors])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= world
            offset = 0
            for t in tensors:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()
        self.num_averages += 1

    def get_state(self) -> dict:
        return {"num_updates": self.num_updates, "num_averages": self.num_averages}

    def set_state(self, state: dict) -> None:
        self.num_updates = int(state.get("num_updates", 0))
        self.num_averages = int(state.get("num_averages", 0))
