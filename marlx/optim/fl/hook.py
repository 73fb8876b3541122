"""``optim: {federated: {...}}`` — federated learning across the learners of one RLlib Algorithm.

With ``num_learners >= 2`` every learner is a client: it trains on its own share of the sampled data (RLlib's
learner group splits each train batch, or list of episodes, into one shard per learner), with no per-step
gradient all-reduce, and every ``rounds_every`` updates (gradient steps) the clients' models are aggregated by
the chosen server strategy. The server arithmetic is the standalone trainer's own code
(:mod:`marlx.optim.fl.aggregate`): each client's upload goes to every learner (``all_gather_object`` over the
torch.distributed process group RLlib's learner group set up), and every learner runs the same
:func:`~marlx.optim.fl.aggregate.masked_average` and, for ``fedluar``, the same
:class:`~marlx.optim.fl.aggregate.LayerRecycler` with the same seed — so all of them hold the identical new
global model, as if one server had computed it and sent it back.

* ``fedavg``: the new global model is the weighted average of the clients' models (McMahan et al. 2017).
* ``fedluar`` (Kim, Kang, Lee, NeurIPS 2025): each round ``delta`` weight layers are picked with probability
  proportional to ``1 / (||Delta_l|| / ||x_l||)``; clients do not upload them and the server applies their
  previous update again. Exactly :class:`~marlx.optim.fl.strategies.FedLUAR`'s recycling.
* EmbracingFL partial training (Lee et al., IEEE TMC 2024), with either strategy: ``clients`` gives each
  learner (by rank) a tier; a client whose tier's ``budgets`` entry is below 1 trains (and uploads) only
  that fraction of the module's layers from the output side (layers = sub-modules owning trained parameters,
  in registration order, as in :class:`~marlx.optim.fl.strategies.EmbracingFL`); its other parameters get no
  gradient (``requires_grad=False``), so backward stops early, and keep the global value. Registration order
  is the forward order of a chain; for RLlib's PPO module it is actor encoder, critic encoder, pi, vf, so a
  small budget trains the heads (vf first) — the output side of a two-tower module is marlx's reading.

What is federated: the parameters the learner's optimisers train (not e.g. QMIX's target networks, which each
client keeps and refreshes from its own main network on the algorithm's schedule) and floating-point module
buffers. Optimiser state (Adam moments) stays on each client, as in FedAvg with client-side state.

Communication is counted as the FL protocol would send it (what each client uploads to / downloads from a
server, in scalars and bytes), not what the all-gather moves. Reported per learner update in the learner
results under ``__all_modules__``: ``federated_rounds``, ``federated_uploaded`` / ``federated_downloaded``
(scalars, all clients, lifetime), ``federated_upload_bytes``, ``federated_upload_fraction`` (uploaded /
(client-rounds x full model)) and ``federated_recycled`` (layers recycled in the last round).

Limits (RLlib's, documented): the env runners act with learner 0's weights, which between aggregations are
client 0's local model; a checkpoint holds learner 0's state only, so a checkpoint taken between
aggregations restores client 0's local model on every client (exact when ``rounds_every`` divides the
updates per iteration). Per-client environments (non-IID tasks) need one Algorithm per client: use
:class:`~marlx.optim.fl.rllib.FederatedRLlib`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from marlx.errors import MarlxError, UnknownNameError
from marlx.optim.fl.aggregate import LayerRecycler, State, clone_state, masked_average, numel, output_side_keys
from marlx.optim.fl.strategies import EmbracingFLConfig
from marlx.optim.rllib_hooks import LearnerHook, register_hook

HOOK_STRATEGIES = ("fedavg", "fedluar")
WEIGHTINGS = ("samples", "uniform")
_OPTIONS = ("strategy", "rounds_every", "delta", "weighting", "clients", "budgets", "seed")


def _default_budgets() -> dict:
    return dict(EmbracingFLConfig().budgets)  # the paper's: strong 1.0, moderate 0.4, weak 0.15


@register_hook
class FederatedHook(LearnerHook):
    """Federated learning across RLlib learners (see the module docstring).

    Options:
        strategy: ``fedavg`` or ``fedluar``. Default ``fedavg``.
        rounds_every: H, local updates (gradient steps, i.e. minibatches) between aggregations. Default 4.
        delta: FedLUAR's recycled weight layers (tensors of 2+ dims) per round; must stay below the module's
            number of such tensors. Default 1 (the paper's code recycles 12 of DistilBERT's ~38; a small
            RLModule has few weight layers).
        weighting: ``samples`` weights each client by the rows it trained on this round (FedAvg's n_k), or
            ``uniform``. Default ``samples``.
        clients: per learner rank, a tier name of ``budgets`` or a number in (0, 1] (the budget itself);
            rank ``i`` takes entry ``i % len``. Default: every client trains the whole module.
        budgets: tier -> fraction of output-side layers trained. Default EmbracingFL's
            ``{strong: 1.0, moderate: 0.4, weak: 0.15}``.
        seed: seeds FedLUAR's layer choice (the same on every learner). Default 0.
    """

    name = "federated"

    @classmethod
    def check_options(cls, **options: Any) -> None:
        cls._parse(options)

    @classmethod
    def check_config(cls, config, **options: Any) -> None:
        n = getattr(config, "num_learners", 0) or 0
        if not isinstance(n, (int, np.integer)):  # a search space: each trial's value is checked by on_build
            return
        if n < 2:
            raise MarlxError(f"optim.federated makes each learner a client and needs num_learners >= 2, got "
                             f"{n}; set num_learners: 2 (and num_cpus_per_learner to fit the machine)")

    @staticmethod
    def _parse(options: dict) -> dict:
        bad = sorted(set(options) - set(_OPTIONS))
        if bad:
            raise MarlxError(f"optim.federated: unknown option(s) {', '.join(bad)}; valid: {', '.join(_OPTIONS)}")
        o = {"strategy": "fedavg", "rounds_every": 4, "delta": 1, "weighting": "samples", "clients": None,
             "budgets": None, "seed": 0, **options}
        if o["strategy"] not in HOOK_STRATEGIES:
            raise UnknownNameError("optim.federated strategy", str(o["strategy"]), HOOK_STRATEGIES,
                                   "(embracingfl is the clients/budgets option of either)")
        if o["weighting"] not in WEIGHTINGS:
            raise UnknownNameError("optim.federated weighting", str(o["weighting"]), WEIGHTINGS)
        for key in ("rounds_every", "delta", "seed"):
            if isinstance(o[key], bool) or not isinstance(o[key], (int, np.integer)):
                raise MarlxError(f"optim.federated.{key} must be an integer, got {o[key]!r}")
        if o["rounds_every"] < 1:
            raise MarlxError(f"optim.federated.rounds_every must be >= 1, got {o['rounds_every']}")
        if o["delta"] < 0:
            raise MarlxError(f"optim.federated.delta must be >= 0, got {o['delta']}")
        budgets = _default_budgets() if o["budgets"] is None else o["budgets"]
        if not isinstance(budgets, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1 for v in budgets.values()):
            raise MarlxError(f"optim.federated.budgets must map tier names to fractions in (0, 1], got {budgets!r}")
        clients = o["clients"]
        if clients is not None:
            if not isinstance(clients, (list, tuple)) or not clients:
                raise MarlxError(f"optim.federated.clients must be a non-empty list (one tier or budget per "
                                 f"learner), got {clients!r}")
            for c in clients:
                if isinstance(c, str):
                    if c not in budgets:
                        raise UnknownNameError("optim.federated client tier", c, budgets, "or give a budget in (0, 1]")
                elif isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c <= 1:
                    raise MarlxError(f"optim.federated.clients: {c!r} is neither a tier of budgets nor a fraction in (0, 1]")
        o["budgets"] = dict(budgets)
        return o

    # ------------------------------------------------------------------------------------------ set-up
    def __init__(self, learner, **options: Any) -> None:
        o = self._parse(options)
        super().__init__(learner, **options)
        self.strategy, self.every, self.delta = o["strategy"], int(o["rounds_every"]), int(o["delta"])
        self.weighting, self.seed = o["weighting"], int(o["seed"])
        self.clients, self.budgets = o["clients"], o["budgets"]
        self.num_updates = self.rounds = 0
        self.samples = 0  # rows trained on since the last aggregation
        self.totals = {"uploaded": 0, "downloaded": 0, "upload_bytes": 0, "client_rounds": 0}
        self.recycler: LayerRecycler | None = None
        self.recycled: list[str] = []

    @staticmethod
    def world() -> tuple[int, int]:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _torch_modules(self) -> dict[str, nn.Module]:
        return {mid: m for mid, m in self.learner.module.items() if isinstance(m, nn.Module)}

    def budget(self, rank: int) -> float:
        """The fraction of output-side layers client ``rank`` trains (1.0 = the whole module)."""
        if not self.clients:
            return 1.0
        c = self.clients[rank % len(self.clients)]
        return float(self.budgets[c] if isinstance(c, str) else c)

    def on_build(self) -> None:
        rank, world = self.world()
        if world < 2:
            raise MarlxError("optim.federated needs num_learners >= 2 (a torch.distributed group of learners)")
        optimised = set()
        for mid in self._torch_modules():
            for _, opt in self.learner.get_optimizers_for_module(mid):
                optimised |= {id(p) for g in opt.param_groups for p in g["params"]}
        #: state key -> the live tensor it reads and writes (parameters the optimisers train, float buffers)
        self.tensors: dict[str, torch.Tensor] = {}
        self.trained: set[str] = set()  # this client's trained (and uploaded) keys
        budget = self.budget(rank)
        for mid, mod in self._torch_modules().items():
            names = [n for n, p in mod.named_parameters() if id(p) in optimised]
            keys = set(names) | {n for n, b in mod.named_buffers() if b.is_floating_point()}
            for n, p in mod.named_parameters():
                if n in names:
                    self.tensors[f"{mid}/{n}"] = p
            for n, b in mod.named_buffers():
                if n in keys:
                    self.tensors[f"{mid}/{n}"] = b
            if budget >= 1.0:
                mine = keys
            else:  # layers = modules owning trained parameters; a trained layer's buffers go with it
                mine = output_side_keys(mod, budget, keys=names)
                owners = {k.rpartition(".")[0] for k in mine}
                mine |= {k for k in keys - set(names) if k.rpartition(".")[0] in owners}
            self.trained |= {f"{mid}/{k}" for k in mine}
            for n, p in mod.named_parameters():
                if n in names and n not in mine:
                    p.requires_grad_(False)  # EmbracingFL: no gradient, backward stops at the trained layers
        self.global_state: State = self.state()
        if self.strategy == "fedluar":
            self.recycler = LayerRecycler(self.global_state, self.delta, seed=self.seed)
        self._start_round()

    def state(self) -> State:
        """This client's current federated state (CPU copies)."""
        return {k: t.detach().cpu().clone() for k, t in self.tensors.items()}

    def _start_round(self) -> None:
        self.recycled = self.recycler.choose() if self.recycler is not None else []
        self.upload_keys = sorted(self.trained - set(self.recycled))

    # ------------------------------------------------------------------------------------------ update
    def update(self, batch: dict, default_update: Callable[[dict], tuple]) -> tuple:
        with contextlib.ExitStack() as stack:  # local training: no DDP gradient all-reduce
            for mod in self._torch_modules().values():
                if isinstance(mod, nn.parallel.DistributedDataParallel):
                    stack.enter_context(mod.no_sync())
            out = default_update(batch)
        self.samples += _rows(batch)
        self.num_updates += 1
        if self.num_updates % self.every == 0:
            self.aggregate()
        return out

    def upload(self) -> tuple[dict, float]:
        """What this client sends the server: its trained, non-recycled entries and its weight."""
        local = self.state()
        weight = float(max(1, self.samples)) if self.weighting == "samples" else 1.0
        return {k: local[k] for k in self.upload_keys}, weight

    @torch.no_grad()
    def aggregate(self) -> None:
        """One server round: gather every client's upload, aggregate (same code and result on every learner)."""
        import torch.distributed as dist

        _, world = self.world()
        uploads: list = [None] * world
        dist.all_gather_object(uploads, self.upload())
        averaged = masked_average(self.global_state, uploads)
        new = self.recycler.aggregate(self.global_state, averaged) if self.recycler is not None else averaged
        for k, t in self.tensors.items():
            t.copy_(new[k].to(t.device, t.dtype))
        full = numel(self.global_state)
        uploaded = sum(numel(u) for u, _ in uploads)
        self.totals["uploaded"] += uploaded
        self.totals["upload_bytes"] += sum(int(v.numel() * v.element_size()) for u, _ in uploads for v in u.values())
        self.totals["downloaded"] += world * full
        self.totals["client_rounds"] += world
        self.last_recycled = list(self.recycled)
        self.global_state = clone_state(new)
        self.rounds += 1
        self.samples = 0
        self._start_round()

    def after_update(self, timesteps: dict) -> None:
        from ray.rllib.core import ALL_MODULES

        m = self.learner.metrics
        full = numel(self.global_state)
        for name, value in (
            ("federated_rounds", self.rounds),
            ("federated_uploaded", self.totals["uploaded"]),
            ("federated_downloaded", self.totals["downloaded"]),
            ("federated_upload_bytes", self.totals["upload_bytes"]),
            ("federated_upload_fraction", self.totals["uploaded"] / max(1, self.totals["client_rounds"] * full)),
            ("federated_recycled", len(getattr(self, "last_recycled", []))),
        ):
            m.log_value((ALL_MODULES, name), float(value), window=1)

    # ------------------------------------------------------------------------------------------ state
    def get_state(self) -> dict:
        return {
            "num_updates": self.num_updates, "rounds": self.rounds, "samples": self.samples,
            "totals": dict(self.totals), "global_state": clone_state(self.global_state),
            "recycler": self.recycler.get_state() if self.recycler is not None else None,
            "recycled": list(self.recycled), "last_recycled": list(getattr(self, "last_recycled", [])),
        }

    def set_state(self, state: dict) -> None:
        self.num_updates, self.rounds = int(state["num_updates"]), int(state["rounds"])
        self.samples = int(state.get("samples", 0))
        self.totals = dict(state["totals"])
        self.global_state = clone_state(state["global_state"])
        if self.recycler is not None and state.get("recycler") is not None:
            self.recycler.set_state(state["recycler"])
        self.recycled = list(state.get("recycled", []))
        self.last_recycled = list(state.get("last_recycled", []))
        self.upload_keys = sorted(self.trained - set(self.recycled))


def _rows(batch: dict) -> int:
    """Rows in a learner's (multi-module) batch: the first dimension of each module's first tensor."""
    total = 0
    for mod_batch in (batch or {}).values():
        values = mod_batch.values() if isinstance(mod_batch, dict) else []
        for v in values:
            if torch.is_tensor(v) and v.dim() > 0:
                total += int(v.shape[0])
                break
    return total
