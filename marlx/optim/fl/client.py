"""What a client does in one round, and the pool of Ray actors that plays the simulated clients.

A round's work for one client is a :class:`ClientTask`: one or more :class:`ModelJob` (a model to build at
some width, the state the server sent, which entries to train and which to upload, and the local steps).
Any worker can run any client's task (workers hold the whole dataset and look a client's indices up), so
a few actors serve many clients; the payloads going in and out are what the trainer counts as traffic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from marlx.optim.fl.kd import kd_loss


@dataclass
class ModelJob:
    """One model a client trains this round.

    Attributes:
        width: passed to the trainer's ``model_fn`` (1.0 = the full model).
        state: the state the server sent (downloaded).
        trainable: state keys the client trains; ``None`` = all. Modules whose parameters are all frozen
            run in eval mode, so their BatchNorm statistics do not move either.
        upload: state keys sent back; ``None`` = all.
        ce_steps: local SGD steps on labelled data (cross-entropy).
        kd_steps: then this many steps of distillation from ``teacher`` on the client's unlabelled data.
        teacher: name of another job in the same task whose *downloaded* state is the teacher.
        kd_weight, temperature: the distillation loss weight w(t) and temperature T.
        kd_fresh_momentum: start the distillation steps from a zero momentum buffer; ``False`` keeps one
            optimizer for both phases (as the on-device KD code does), so the cross-entropy phase's velocity
            carries into the distillation phase.
    """

    width: float
    state: dict
    trainable: Optional[set] = None
    upload: Optional[set] = None
    ce_steps: int = 0
    kd_steps: int = 0
    teacher: Optional[str] = None
    kd_weight: float = 0.0
    temperature: float = 3.0
    kd_fresh_momentum: bool = False


@dataclass
class ClientTask:
    client: int
    round: int
    jobs: dict[str, ModelJob]
    seed: int = 0


@dataclass
class ClientResult:
    client: int
    uploads: dict[str, dict]  # job name -> uploaded state entries
    num_samples: int
    loss: dict[str, float] = field(default_factory=dict)


@dataclass
class LocalSGD:
    """Local optimiser settings (SGD with momentum; momentum starts at zero each round, as in FedAvg)."""

    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0


class _BatchStream:
    """Mini-batches drawn without replacement from ``idx``, reshuffled after every pass."""

    def __init__(self, idx: np.ndarray, batch_size: int, rng: np.random.Generator):
        self.idx, self.bs, self.rng = idx, min(batch_size, len(idx)), rng
        self.order, self.pos = rng.permutation(idx), 0

    def next(self) -> np.ndarray:
        if self.pos + self.bs > len(self.order):
            self.order, self.pos = self.rng.permutation(self.idx), 0
        out = self.order[self.pos : self.pos + self.bs]
        self.pos += self.bs
        return out


def _freeze(model: nn.Module, trainable: Optional[set]) -> list[nn.Parameter]:
    model.train()
    if trainable is None:
        return list(model.parameters())
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)
        if name in trainable:
            params.append(p)
    for m in model.modules():
        own = list(m.parameters(recurse=False))
        if own and not any(p.requires_grad for p in own):
            m.eval()
    return params


def run_job(job: ModelJob, model_fn: Callable, x: torch.Tensor, y: torch.Tensor, labelled: np.ndarray,
            unlabelled: np.ndarray, sgd: LocalSGD, rng: np.random.Generator,
            teacher: Optional[nn.Module] = None) -> tuple[nn.Module, float]:
    """Build, load and train one model locally; returns it and its mean training loss."""
    model = model_fn(job.width)
    model.load_state_dict(job.state)
    params = _freeze(model, job.trainable)
    opt = torch.optim.SGD(params, lr=sgd.lr, momentum=sgd.momentum, weight_decay=sgd.weight_decay)
    losses = []
    if job.ce_steps:
        stream = _BatchStream(labelled, sgd.batch_size, rng)
        for _ in range(job.ce_steps):
            b = torch.as_tensor(stream.next())
            loss = F.cross_entropy(model(x[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    if job.kd_steps and job.kd_weight > 0:
        if teacher is None:
            raise ValueError("a KD job needs a teacher")
        teacher.eval()
        if job.kd_fresh_momentum:
            opt = torch.optim.SGD(params, lr=sgd.lr, momentum=sgd.momentum, weight_decay=sgd.weight_decay)
        stream = _BatchStream(unlabelled if len(unlabelled) else labelled, sgd.batch_size, rng)
        for _ in range(job.kd_steps):
            b = torch.as_tensor(stream.next())
            with torch.no_grad():
                z_t = teacher(x[b])
            loss = job.kd_weight * kd_loss(model(x[b]), z_t, job.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return model, float(np.mean(losses)) if losses else 0.0


def run_client(task: ClientTask, model_fn: Callable, x: torch.Tensor, y: torch.Tensor,
               labelled: np.ndarray, unlabelled: np.ndarray, sgd: LocalSGD) -> ClientResult:
    """Run every job of ``task`` and return only the entries each job uploads."""
    rng = np.random.default_rng([task.seed, task.round, task.client])
    torch.manual_seed(int(rng.integers(2**31)))
    uploads, losses = {}, {}
    for name, job in task.jobs.items():
        teacher = None
        if job.teacher is not None:
            teacher = model_fn(task.jobs[job.teacher].width)
            teacher.load_state_dict(task.jobs[job.teacher].state)
        model, losses[name] = run_job(job, model_fn, x, y, labelled, unlabelled, sgd, rng, teacher)
        state = model.state_dict()
        keys = state.keys() if job.upload is None else job.upload
        uploads[name] = {k: state[k].detach().clone() for k in keys}
    return ClientResult(task.client, uploads, int(len(labelled)), losses)


class ClientWorker:
    """Plays any client: holds the data, each client's index sets and the model factory."""

    def __init__(self, model_fn: Callable, x: torch.Tensor, y: torch.Tensor, labelled: list, unlabelled: list,
                 sgd: LocalSGD, num_threads: int = 1):
        torch.set_num_threads(num_threads)
        self.model_fn, self.x, self.y = model_fn, x, y
        self.labelled, self.unlabelled, self.sgd = labelled, unlabelled, sgd

    def train(self, task: ClientTask) -> ClientResult:
        return run_client(task, self.model_fn, self.x, self.y, self.labelled[task.client],
                          self.unlabelled[task.client], self.sgd)


class InProcessPool:
    """Runs the tasks one after another in this process (``num_workers=0``; for debugging)."""

    def __init__(self, worker: ClientWorker):
        self.worker = worker

    def run(self, tasks: list[ClientTask]) -> list[ClientResult]:
        return [self.worker.train(t) for t in tasks]

    def shutdown(self) -> None:
        pass


class RayActorPool:
    """``num_workers`` Ray actors serving a round's client tasks through ``ray.util.ActorPool``."""

    def __init__(self, num_workers: int, worker_args: tuple, num_cpus: float = 1.0):
        import ray
        from ray.util import ActorPool

        remote_cls = ray.remote(num_cpus=num_cpus)(ClientWorker)
        args = [ray.put(a) for a in worker_args]  # the dataset goes to the object store once
        self.actors = [remote_cls.remote(*args) for _ in range(num_workers)]
        self.pool = ActorPool(self.actors)

    def run(self, tasks: list[ClientTask]) -> list[ClientResult]:
        results = list(self.pool.map_unordered(lambda a, t: a.train.remote(t), tasks))
        return sorted(results, key=lambda r: r.client)

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
