"""The SAM family as torch-level optimiser steps: plain SAM, layer-wise light SAM, asynchronous SAM.

Each class wraps a model and an ordinary ``torch.optim`` optimiser and performs one training step with
``step(x, y)``. What users of the popular SAM implementation ask for is handled here:

* mixed precision: pass a ``torch.amp.GradScaler``; both passes are scaled by the same factor, the ascent
  direction ``g / ||g||`` is scale-free, and ``scaler.step``/``scaler.update`` run once per step (a
  non-finite ascent gradient means no perturbation; the scaler then decides whether to skip the step);
* BatchNorm running statistics are updated once per step (by the clean first pass), never by the
  perturbed pass (``SAMConfig.bn_update``);
* DistributedDataParallel: SAM's ascent pass runs under ``no_sync()`` (each worker perturbs with its own
  gradient, as in the SAM paper's m-sharpness); only the descent gradient is all-reduced.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields
from typing import Callable, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from marlx.errors import MarlxError

VARIANTS = ("sam", "layerwise", "async")
SELECTIONS = ("grad_norm", "rms", "output")


@dataclass
class SAMConfig:
    """Options of the SAM family (``optim: {sam: {...}}`` in YAML takes the same keys)."""

    variant: str = "sam"
    """``sam`` (Foret et al. 2021), ``layerwise`` (light SAM on a few critical layers, Lee KDD 2024) or
    ``async`` (stale perturbation from another worker, Jo, Lim, Lee 2025)."""
    rho: float = 0.05
    """Radius of the ascent step ``e = rho * g / ||g||`` (SAM's default, used by all three variants)."""
    layers: int = 2
    """layerwise: number k of critical layers that get the perturbation (layers with the largest gradient norm)."""
    alpha: float = 1.0
    """layerwise: mix ``a`` in ``g_l = (1 - a) grad_l L(w) + a grad_l L(w + e)`` for the chosen layers. 1.0 (marlx's
    default) is SAM's gradient on those layers; the gradient-norm-penalty form uses a in (0, 1), e.g. 0.8."""
    selection: str = "grad_norm"
    """layerwise: how critical layers are chosen. ``grad_norm`` (the paper): largest ``||grad_l||``; ``rms``:
    largest ``||grad_l|| / sqrt(numel_l)`` (does not favour big layers); ``output``: the last k layers (the
    cheapest second pass). ``rms`` and ``output`` are marlx's options."""
    refresh_every: int = 50
    """layerwise: re-choose the critical layers every this many steps (from the first pass's gradient norms,
    which cost nothing extra). marlx's choice; the paper does not state it."""
    perturb_every: int = 1
    """layerwise: run the perturbed pass every this many steps (1 = every step, the paper). In between, the
    chosen layers get ``g + a * reuse_alpha * (||g|| / ||g_v||) g_v`` with ``g_v`` the part of the last
    perturbed gradient orthogonal to that step's ``g`` (LookSAM's reuse, Liu et al. CVPR 2022, restricted to
    the chosen layers). marlx's option: the perturbed pass of a big layer costs ~2/3 of a step on its own."""
    reuse_alpha: float = 0.7
    """layerwise with ``perturb_every > 1``: LookSAM's alpha (its paper's default 0.7)."""
    reuse_prefix: bool = True
    """layerwise: for an ``nn.Sequential`` model the perturbed pass starts from the cached input of the first
    chosen layer instead of re-running the unperturbed input side (identical result, less compute)."""
    staleness: int = 1
    """async: tau, the perturbation uses the gradient of ``tau`` steps ago (0 reproduces SAM)."""
    perturb_batch_size: Optional[int] = None
    """async: batch size of the perturbation gradient; ``None`` chooses it system-aware so that the ascent
    gradient takes no longer than the descent step (``ascent_time_fraction`` of it)."""
    ascent_time_fraction: float = 0.9
    """async, system-aware: target ratio of the perturbation worker's compute time to the main step's time."""
    min_perturb_batch: int = 8
    """async, system-aware: smallest perturbation batch."""
    max_perturb_batch: int = 1024
    """async, system-aware: largest perturbation batch."""
    bn_update: str = "once"
    """``once``: BatchNorm running statistics are updated by the clean pass only; ``every_pass``: by both passes
    (the behaviour users of davda54/sam complain about), kept for comparison."""
    eps: float = 1e-12
    """Added to ``||g||`` in the ascent direction."""

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            from marlx.errors import UnknownNameError

            raise UnknownNameError("SAM variant", self.variant, VARIANTS)
        if self.rho < 0:
            raise MarlxError(f"sam: rho must be >= 0, got {self.rho}")
        if self.layers < 1:
            raise MarlxError(f"sam: layers must be >= 1, got {self.layers}")
        if not 0.0 <= self.alpha <= 1.0:
            raise MarlxError(f"sam: alpha must be in [0, 1], got {self.alpha}")
        if self.staleness < 0:
            raise MarlxError(f"sam: staleness must be >= 0, got {self.staleness}")
        if self.bn_update not in ("once", "every_pass"):
            raise MarlxError(f"sam: bn_update must be 'once' or 'every_pass', got {self.bn_update!r}")
        if self.selection not in SELECTIONS:
            from marlx.errors import UnknownNameError

            raise UnknownNameError("layer selection", self.selection, SELECTIONS)
        if self.refresh_every < 1:
            raise MarlxError(f"sam: refresh_every must be >= 1, got {self.refresh_every}")
        if self.perturb_every < 1:
            raise MarlxError(f"sam: perturb_every must be >= 1, got {self.perturb_every}")
        if self.reuse_alpha < 0:
            raise MarlxError(f"sam: reuse_alpha must be >= 0, got {self.reuse_alpha}")

    @classmethod
    def from_dict(cls, options: dict) -> "SAMConfig":
        """Build from a config dict; an unknown key is a clear one-line error."""
        from marlx.errors import ConfigKeyError

        names = {f.name for f in fields(cls)}
        for key in options:
            if key not in names:
                raise ConfigKeyError(key, "optim.sam", names)
        return cls(**options)


# ----------------------------------------------------------------------------------------------- helpers
def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel/DataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def no_sync(model: nn.Module):
    """``model.no_sync()`` for a DDP model (no gradient all-reduce), a no-op context otherwise."""
    return model.no_sync() if isinstance(model, nn.parallel.DistributedDataParallel) else contextlib.nullcontext()


@contextlib.contextmanager
def frozen_bn_stats(model, frozen: bool = True):
    """BatchNorm layers of ``model`` (a module or a list of them) use batch statistics but keep their running ones."""
    if not frozen:
        yield
        return
    models = [model] if isinstance(model, nn.Module) else list(model)
    bns = [m for mod in models for m in mod.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        yield
        return
    # With track_running_stats False a training-mode BN passes no running buffers to F.batch_norm
    # (torch >= 1.x): batch statistics are used, nothing is updated, num_batches_tracked stays.
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


@contextlib.contextmanager
def perturbed(params: Sequence[torch.Tensor], deltas: Optional[Sequence[torch.Tensor]]):
    """Add ``deltas`` to ``params`` for the duration of the block; restore the exact old values after."""
    if deltas is None:
        yield
        return
    with torch.no_grad():
        saved = [p.detach().clone() for p in params]
        for p, d in zip(params, deltas):
            p.add_(d.to(p.dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


def global_norm(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    tensors = [t.detach().float() for t in tensors]
    if not tensors:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


def _norm(tensors) -> float:
    """Global L2 norm in the tensors' own precision."""
    return float(torch.sqrt(sum((t.detach() * t.detach()).sum() for t in tensors)))


def ascent_step(grads: Sequence[torch.Tensor], rho: float, eps: float = 1e-12) -> Optional[list[torch.Tensor]]:
    """``rho * g / ||g||`` (a scale factor on ``g`` cancels); ``None`` when ``g`` is not finite or zero."""
    norm = global_norm(grads)
    if not torch.isfinite(norm) or norm == 0:
        return None
    scale = rho / (norm + eps)
    return [g.detach().float() * scale for g in grads]


def layer_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters grouped by the module that owns them (a "layer"), in registration order."""
    groups: dict[str, list[nn.Parameter]] = {}
    for name, p in unwrap(model).named_parameters():
        if p.requires_grad:
            groups.setdefault(name.rpartition(".")[0], []).append(p)
    return groups


def critical_layers(groups: dict[str, list[torch.Tensor]], grads: dict[str, list[Optional[torch.Tensor]]], k: int,
                    selection: str = "grad_norm") -> list[str]:
    """The ``k`` critical layers in model order (ties keep the output side); see ``SAMConfig.selection``."""
    order = list(groups)
    if selection == "output":
        return order[-k:]
    scores = {}
    for name in order:
        gs = [g for g in grads[name] if g is not None]
        n = global_norm(gs).item() if gs else 0.0
        if selection == "rms" and gs:
            n /= sum(g.numel() for g in gs) ** 0.5
        scores[name] = n if n == n else float("inf")  # a NaN norm is reported as critical, never hidden
    ranked = sorted(order, key=lambda n: (scores[n], order.index(n)), reverse=True)[:k]
    return [n for n in order if n in ranked]


# ----------------------------------------------------------------------------------------------- steps
class SharpnessStep:
    """Base of the three steps: loss, scaled backward and the optimiser step (SGD when ``variant='sgd'``)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        config: Optional[SAMConfig] = None,
        *,
        criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
        scaler: Optional["torch.amp.GradScaler"] = None,
        autocast_dtype: Optional[torch.dtype] = None,
    ) -> None:
        self.model, self.optimizer, self.config = model, optimizer, config or SAMConfig()
        self.criterion, self.scaler, self.autocast_dtype = criterion, scaler, autocast_dtype
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.steps = 0

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        device = self.params[0].device.type if self.params else "cpu"
        return torch.autocast(device_type=device, dtype=self.autocast_dtype)

    def loss(self, x, y, forward: Optional[Callable] = None) -> torch.Tensor:
        with self._autocast():
            out = (forward or self.model)(x)
            return self.criterion(out, y)

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def apply(self) -> None:
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.steps += 1

    def step(self, x, y) -> float:
        """Plain step (the SGD baseline): one forward/backward, one optimiser step."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(x, y)
        self.scaled(loss).backward()
        self.apply()
        return loss.item()


class SAM(SharpnessStep):
    """SAM: ``w <- w - lr * grad L(w + rho g / ||g||)`` with ``g = grad L(w)`` (through the wrapped optimiser)."""

    def step(self, x, y) -> float:
        cfg = self.config
        self.optimizer.zero_grad(set_to_none=True)
        with no_sync(self.model):  # the ascent gradient stays local: no all-reduce
            loss = self.loss(x, y)
            self.scaled(loss).backward()
        params = [p for p in self.params if p.grad is not None]
        e = ascent_step([p.grad for p in params], cfg.rho, cfg.eps)
        self.optimizer.zero_grad(set_to_none=True)
        with perturbed(params, e), frozen_bn_stats(self.model, cfg.bn_update == "once"):
            self.scaled(self.loss(x, y)).backward()
        self.apply()
        return loss.item()


class LayerwiseSAM(SharpnessStep):
    """Light SAM: only the ``k`` critical layers are perturbed and get the sharpness-aware gradient.

    Chosen layers: ``g_l = (1 - a) grad_l L(w) + a grad_l L(w + e)``, ``e = rho g_S / ||g_S||`` over the
    chosen set S; all other layers take ``grad L(w)``. The second backward computes gradients of the chosen
    layers only (autograd stops below the lowest of them); with ``reuse_prefix`` and an ``nn.Sequential``
    model the second forward also starts at the first chosen layer. Under DDP the first pass is all-reduced
    (it is the descent gradient of most layers); the second is local, then only the chosen layers'
    gradients are all-reduced.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.groups = layer_groups(self.model)
        self.selected: list[str] = []
        inner = unwrap(self.model)
        self._children = list(inner) if isinstance(inner, nn.Sequential) and self.config.reuse_prefix else None
        self._inputs: list = []
        if self._children is not None:
            for i, child in enumerate(self._children):
                child.register_forward_pre_hook(self._make_cache_hook(i))

    def _make_cache_hook(self, i: int):
        def hook(module, args):
            if self._recording:
                self._inputs[i] = args[0]

        return hook

    _recording = False

    def _first_child(self, params: list[torch.Tensor]) -> Optional[int]:
        if self._children is None:
            return None
        ids = {id(p) for p in params}
        for i, child in enumerate(self._children):
            if any(id(p) in ids for p in child.parameters()):
                return i
        return None

    def _suffix(self, start: int):
        def forward(_x):
            h = self._inputs[start].detach()
            for child in self._children[start:]:
                h = child(h)
            return h

        return forward

    def step(self, x, y) -> float:
        cfg = self.config
        self.optimizer.zero_grad(set_to_none=True)
        if self._children is not None:
            self._inputs = [None] * len(self._children)
            self._recording = True
        try:
            loss = self.loss(x, y)
        finally:
            self._recording = False
        self.scaled(loss).backward()
        if not self.selected or self.steps % cfg.refresh_every == 0:
            grads = {n: [p.grad for p in ps] for n, ps in self.groups.items()}
            selected = critical_layers(self.groups, grads, cfg.layers, cfg.selection)
            if selected != self.selected:
                self._gv = None  # a new choice of layers: the next step runs the perturbed pass
            self.selected = selected
        sel = [p for n in self.selected for p in self.groups[n] if p.grad is not None]
        reuse = cfg.perturb_every > 1 and self.steps % cfg.perturb_every != 0 and self._gv is not None
        if reuse:  # LookSAM: no perturbed pass, the stored orthogonal component on the chosen layers
            gv = [self._gv.get(p) for p in sel]
            if all(v is not None for v in gv):
                scale = cfg.alpha * cfg.reuse_alpha * _norm([p.grad for p in sel]) / (_norm(gv) + cfg.eps)
                with torch.no_grad():
                    for p, v in zip(sel, gv):
                        p.grad.add_(v.to(p.grad.dtype), alpha=float(scale))
            self._inputs = []
            self.apply()
            return loss.item()
        e = ascent_step([p.grad for p in sel], cfg.rho, cfg.eps) if sel else None
        if e is not None:
            start = self._first_child(sel)
            forward = self._suffix(start) if start is not None else None
            with perturbed(sel, e), frozen_bn_stats(self.model, cfg.bn_update == "once"):
                with no_sync(self.model) if forward is None else contextlib.nullcontext():
                    loss2 = self.loss(x, y, forward)
                g2 = torch.autograd.grad(self.scaled(loss2), sel, allow_unused=True)
            g2 = self._all_reduce([torch.zeros_like(p) if g is None else g for p, g in zip(sel, g2)])
            if cfg.perturb_every > 1:
                self._store_orthogonal(sel, g2)
            with torch.no_grad():
                for p, g in zip(sel, g2):
                    p.grad.mul_(1.0 - cfg.alpha).add_(g, alpha=cfg.alpha)
        self._inputs = []
        self.apply()
        return loss.item()

    _gv: Optional[dict] = None

    @torch.no_grad()
    def _store_orthogonal(self, sel: list[torch.Tensor], g2: list[torch.Tensor]) -> None:
        """``g_v = g2 - (<g2, g>/||g||^2) g`` over the chosen layers (``g`` = this step's clean gradient)."""
        g = [p.grad.detach() for p in sel]
        dot = sum(float((a.to(b.dtype) * b).sum()) for a, b in zip(g2, g))
        gg = sum(float((b * b).sum()) for b in g)
        coef = dot / gg if gg > 0 else 0.0
        self._gv = {p: (a.to(b.dtype) - coef * b).clone() for p, a, b in zip(sel, g2, g)}

    def _all_reduce(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        if not isinstance(self.model, nn.parallel.DistributedDataParallel):
            return grads
        import torch.distributed as dist

        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        out, i = [], 0
        for g in grads:
            out.append(flat[i : i + g.numel()].view_as(g))
            i += g.numel()
        return out


class AsyncSAM(SharpnessStep):
    """Asynchronous SAM: ``w_{t+1} = w_t - lr grad L(w_t + e_t)``, ``e_t = rho g_{t-tau} / ||g_{t-tau}||``.

    ``g_{t-tau}`` comes from ``source`` (a :class:`marlx.optim.sam.worker.StaleGradientPipeline`), computed
    from the weights of ``tau`` steps ago on a separate mini-batch, on another worker (a Ray actor) while
    this step runs. One forward/backward per step here: BatchNorm statistics update once and DDP
    all-reduces once. The first ``tau`` steps have no perturbation yet (plain steps).
    """

    def __init__(self, model, optimizer, config=None, *, source, **kwargs) -> None:
        super().__init__(model, optimizer, config, **kwargs)
        self.source = source

    def step(self, x, y, perturb_batch=None) -> float:
        import time

        g = self.source.next(unwrap(self.model), perturb_batch)
        t0 = time.perf_counter()  # the descent step's own time: the budget of the ascent worker
        e = ascent_step(g, self.config.rho, self.config.eps) if g is not None else None
        self.optimizer.zero_grad(set_to_none=True)
        with perturbed(self.params, e):
            loss = self.loss(x, y)
            self.scaled(loss).backward()
        self.apply()
        self.source.observe_step_seconds(time.perf_counter() - t0)
        return loss.item()


def make_step(model, optimizer, config: SAMConfig | None = None, *, source=None, **kwargs) -> SharpnessStep:
    """The step class for ``config.variant`` (``source`` is required for ``async``)."""
    config = config or SAMConfig()
    if config.variant == "async":
        if source is None:
            raise MarlxError("sam: variant 'async' needs a perturbation source (StaleGradientPipeline)")
        return AsyncSAM(model, optimizer, config, source=source, **kwargs)
    return {"sam": SAM, "layerwise": LayerwiseSAM}[config.variant](model, optimizer, config, **kwargs)
