"""The standalone federated trainer: a server process driving simulated clients on a pool of Ray actors.

Example::

    from marlx.optim.data import load_digits, small_cnn
    from marlx.optim.fl import FederatedTrainer, FLConfig, ScaledModel, make_strategy

    train, test = load_digits()
    trainer = FederatedTrainer(ScaledModel(small_cnn, "width", 16), train, test,
                               make_strategy("fedluar", delta=2), FLConfig(num_clients=32, clients_per_round=8))
    history = trainer.fit()          # one dict per round: accuracy, parameters uploaded / downloaded, ...
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import numpy as np
from torch import nn

from marlx.errors import MarlxError
from marlx.optim.data import ArrayDataset, accuracy
from marlx.optim.fl.aggregate import numel
from marlx.optim.fl.client import ClientTask, ClientWorker, InProcessPool, LocalSGD, RayActorPool
from marlx.optim.fl.partition import assign_tiers, dirichlet_partition
from marlx.optim.fl.strategies import Strategy


@dataclass(frozen=True)
class ScaledModel:
    """A picklable ``model_fn(width)``: ``builder(**{arg: max(1, round(base * width))}, **kwargs)``.

    Ray workers must import the model factory; a lambda defined in a script or test is not importable by
    them, this is (``ScaledModel(small_cnn, "width", 32)``).
    """

    builder: Callable[..., nn.Module]
    arg: str
    base: int
    kwargs: tuple = ()

    def __call__(self, width: float = 1.0) -> nn.Module:
        return self.builder(**{self.arg: max(1, round(self.base * width))}, **dict(self.kwargs))


@dataclass
class FLConfig:
    """Federated run settings (defaults follow FedLUAR's code where it has one).

    Attributes:
        num_clients: simulated clients (code: 128).
        clients_per_round: clients sampled uniformly without replacement each round (code: 32).
        rounds: communication rounds.
        local_steps: local SGD steps per round (code: 20; on-device KD's code: 30).
        batch_size, lr, momentum, weight_decay: local SGD with momentum (code: momentum 0.9); the momentum
            buffer starts at zero every round.
        dirichlet_alpha: label skew of the non-IID split (code: 0.1); ``None`` gives an IID split.
        min_client_size: every client gets at least this many samples.
        unlabelled_fraction: share of each client's samples whose labels it does not use (on-device KD's
            distillation data). 0 = all labelled, and KD distils on the same inputs without labels.
        tiers: fractions of clients per capability tier, e.g. ``{"strong": 0.2, "moderate": 0.3, "weak": 0.5}``.
        num_workers: Ray actors serving the clients (0 = run clients in this process).
        worker_cpus: CPUs each actor reserves.
        address: Ray cluster address (``None`` = start or join a local Ray).
        eval_every: evaluate the server's models every this many rounds (and after the last).
        seed: seeds the partition, tiers, client sampling, the initial model and the clients' batches.
    """

    num_clients: int = 128
    clients_per_round: int = 32
    rounds: int = 100
    local_steps: int = 20
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    dirichlet_alpha: Optional[float] = 0.1
    min_client_size: int = 2
    unlabelled_fraction: float = 0.0
    tiers: dict = field(default_factory=lambda: {"strong": 1.0})
    num_workers: int = 2
    worker_cpus: float = 1.0
    address: Optional[str] = None
    eval_every: int = 10
    seed: int = 0


class FederatedTrainer:
    """Runs ``strategy`` on ``train`` split over simulated clients; evaluates on ``test``.

    ``model_fn(width)`` builds the model at a width multiplier (1.0 = full model); strategies that use
    smaller models (width reduction, the KD auxiliary model) call it with their widths.
    """

    def __init__(self, model_fn: Callable[[float], nn.Module], train: ArrayDataset, test: Optional[ArrayDataset],
                 strategy: Strategy, config: Optional[FLConfig] = None):
        self.config = cfg = config or FLConfig()
        if not 1 <= cfg.clients_per_round <= cfg.num_clients:
            raise MarlxError(f"clients_per_round must be in [1, num_clients={cfg.num_clients}], "
                             f"got {cfg.clients_per_round}")
        self.model_fn, self.train_data, self.test_data, self.strategy = model_fn, train, test, strategy
        labels = train.y.numpy()
        if cfg.dirichlet_alpha is None:
            perm = np.random.default_rng(cfg.seed).permutation(len(labels))
            self.partition = [np.sort(p) for p in np.array_split(perm, cfg.num_clients)]
        else:
            self.partition = dirichlet_partition(labels, cfg.num_clients, cfg.dirichlet_alpha, cfg.seed,
                                                 cfg.min_client_size)
        self.labelled, self.unlabelled = self._split_unlabelled()
        self.tiers = assign_tiers(cfg.num_clients, cfg.tiers, cfg.seed)
        self.rng = np.random.default_rng([cfg.seed, 1])
        strategy.setup(model_fn, self.tiers, cfg.local_steps, cfg.seed)
        self.round = 0
        self.history: list[dict] = []
        self.totals = {"uploaded": 0, "downloaded": 0, "client_rounds": 0}
        sgd = LocalSGD(cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay)
        worker_args = (model_fn, train.x, train.y, self.labelled, self.unlabelled, sgd)
        if cfg.num_workers <= 0:
            self.pool = InProcessPool(ClientWorker(*worker_args))
        else:
            import ray

            if not ray.is_initialized():
                ray.init(address=cfg.address, include_dashboard=False, configure_logging=False)
            self.pool = RayActorPool(cfg.num_workers, worker_args, cfg.worker_cpus)

    def _split_unlabelled(self) -> tuple[list, list]:
        rng = np.random.default_rng([self.config.seed, 2])
        lab, unl = [], []
        for idx in self.partition:
            n_unl = int(round(self.config.unlabelled_fraction * len(idx)))
            perm = rng.permutation(idx)
            unl.append(np.sort(perm[:n_unl]))
            lab.append(np.sort(perm[n_unl:]))
        return lab, unl

    def sample_clients(self) -> list[int]:
        cfg = self.config
        return sorted(self.rng.choice(cfg.num_clients, size=cfg.clients_per_round, replace=False).tolist())

    def step(self) -> dict:
        """One communication round; returns its record (also appended to ``history``)."""
        t0 = time.perf_counter()
        clients = self.sample_clients()
        jobs = self.strategy.tasks(self.round, clients)
        tasks = [ClientTask(c, self.round, j, self.config.seed) for c, j in jobs.items()]
        # Traffic is counted on the payloads themselves: the states in the tasks, and what comes back.
        downloaded = sum(numel(job.state) for t in tasks for job in t.jobs.values())
        results = self.pool.run(tasks)
        uploaded = sum(numel(u) for r in results for u in r.uploads.values())
        self.strategy.aggregate(self.round, results)
        self.totals["uploaded"] += uploaded
        self.totals["downloaded"] += downloaded
        self.totals["client_rounds"] += len(tasks)
        rec = {"round": self.round, "clients": [t.client for t in tasks], "uploaded": uploaded,
               "downloaded": downloaded, "seconds": time.perf_counter() - t0,
               "loss": float(np.mean([np.mean(list(r.loss.values())) for r in results])) if results else float("nan")}
        self.round += 1
        if self.test_data is not None and (self.round % self.config.eval_every == 0 or self.round == self.config.rounds):
            rec.update(self.evaluate())
        self.history.append(rec)
        return rec

    def evaluate(self, data: Optional[ArrayDataset] = None) -> dict:
        data = data or self.test_data
        return {f"accuracy/{name}": accuracy(m, data) for name, m in self.strategy.models().items()}

    def fit(self, rounds: Optional[int] = None, log: Optional[Callable[[dict], None]] = None) -> list[dict]:
        for _ in range(rounds if rounds is not None else self.config.rounds - self.round):
            rec = self.step()
            if log is not None:
                log(rec)
        return self.history

    def full_model_size(self) -> int:
        """Scalars in the full (width 1.0) model's state: the unit of the communication fractions."""
        return numel(self.strategy.state)

    def summary(self) -> dict:
        """Totals and the upload fraction: uploaded scalars / (client-rounds x full model size)."""
        n = max(1, self.totals["client_rounds"]) * self.full_model_size()
        last = next((h for h in reversed(self.history) if any(k.startswith("accuracy/") for k in h)), {})
        return {**self.totals, "upload_fraction": self.totals["uploaded"] / n,
                **{k: v for k, v in last.items() if k.startswith("accuracy/")}, "config": asdict(self.config)}

    def close(self) -> None:
        self.pool.shutdown()
