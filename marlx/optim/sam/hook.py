"""``optim: {sam: {...}}`` — the SAM family inside any RLlib TorchLearner (PPO, marlx's QMIX, ...).

The hook wraps the learner's single update on a batch (``LearnerHook.update`` in
:mod:`marlx.optim.rllib_hooks`, the one place that touches private RLlib names):

* ``sam`` / ``layerwise``: a first pass with the learner's own public steps (``module.forward_train``,
  ``compute_losses``, ``compute_gradients``, ``postprocess_gradients``) gives ``g = grad L(w)``; the chosen
  parameters are moved to ``w + e`` and RLlib's default update runs there. A ``torch.optim`` step pre-hook
  (public torch API) puts the weights back to ``w`` right before each optimiser step, so the optimiser
  applies ``grad L(w + e)`` at ``w``; ``layerwise`` also mixes the gradients there
  (``(1 - a) g + a g'`` on the chosen layers, ``g`` elsewhere). Both passes' gradients go through the
  learner's ``postprocess_gradients`` (grad clipping). Under several learners (DDP) the first pass runs
  under ``no_sync()``.
* ``async``: the perturbation is the learner's own descent gradient of ``staleness`` updates ago (taken at
  the optimiser step, so it costs nothing). Inside a learner that gradient is computed at the then-perturbed
  weights ``w_{t-tau} + e_{t-tau}`` on that update's mini-batch, not at ``w_{t-tau}`` by a separate worker:
  a documented difference from the standalone trainer, whose perturbation worker is a Ray actor.
* BatchNorm running statistics (if a module has any) are updated only by the first pass.
"""

from __future__ import annotations

import collections
import contextlib

import torch

from marlx.optim.rllib_hooks import LearnerHook, register_hook
from marlx.optim.sam.core import SAMConfig, ascent_step, critical_layers, frozen_bn_stats


@register_hook
class SAMHook(LearnerHook):
    name = "sam"

    @classmethod
    def check_options(cls, **options) -> None:
        from marlx.errors import MarlxError

        if SAMConfig.from_dict(options).perturb_every > 1:
            raise MarlxError("optim.sam: perturb_every > 1 (LookSAM reuse) is implemented for the torch step "
                             "(LayerwiseSAM / SAMTrainer), not in the RLlib hook; remove it")

    def __init__(self, learner, **options) -> None:
        super().__init__(learner, **options)
        self.config = SAMConfig.from_dict(options)
        self.updates = 0
        self.selected: list[str] = []
        self._pending: dict = {}  # param -> (saved value, first-pass grad or None, chosen?)
        self._stale: collections.deque = collections.deque()
        self._handles: list = []

    # -------------------------------------------------------------------------------------- set-up
    def _module_ids(self):
        return list(self.learner.module.keys())

    def _named_params(self) -> dict[str, list[torch.nn.Parameter]]:
        groups: dict[str, list] = {}
        for mid in self._module_ids():
            for name, p in self.learner.module[mid].named_parameters():
                if p.requires_grad:
                    groups.setdefault(f"{mid}/{name.rpartition('.')[0]}", []).append(p)
        return groups

    def on_build(self) -> None:
        for mid in self._module_ids():
            for _, optim in self.learner.get_optimizers_for_module(mid):
                self._handles.append(optim.register_step_pre_hook(self._before_optimizer_step))

    # -------------------------------------------------------------------------------------- update
    def _first_pass(self, batch) -> dict:
        learner = self.learner
        with contextlib.ExitStack() as stack:
            if learner.config.num_learners > 1:  # keep the ascent gradient local, as RLlib does for its own no_sync
                for mod in learner.module.values():
                    if isinstance(mod, torch.nn.Module) and hasattr(mod, "no_sync"):
                        stack.enter_context(mod.no_sync())
            fwd_out = learner.module.forward_train(batch)
            losses = learner.compute_losses(fwd_out=fwd_out, batch=batch)
            grads = learner.postprocess_gradients(learner.compute_gradients(losses))
        refs = {learner.get_param_ref(p): p for ps in self._named_params().values() for p in ps}
        return {refs[r]: g.detach().clone() for r, g in grads.items() if g is not None and r in refs}

    def update(self, batch, default_update):
        cfg = self.config
        groups = self._named_params()
        if cfg.variant == "async" and cfg.staleness > 0:
            g1 = None
            chosen = [p for ps in groups.values() for p in ps]
            grads = self._stale.popleft() if len(self._stale) >= cfg.staleness else None
            grads = [grads.get(p) for p in chosen] if grads is not None else None
            if grads is not None:
                keep = [i for i, g in enumerate(grads) if g is not None]
                chosen, grads = [chosen[i] for i in keep], [grads[i] for i in keep]
        else:
            g1 = self._first_pass(batch)
            if cfg.variant == "layerwise":
                if not self.selected or self.updates % cfg.refresh_every == 0:
                    self.selected = critical_layers(groups, {n: [g1.get(p) for p in ps] for n, ps in groups.items()},
                                                    cfg.layers, cfg.selection)
                names = self.selected
            else:
                names = list(groups)
            chosen = [p for n in names for p in groups[n] if p in g1]
            grads = [g1[p] for p in chosen]
        e = ascent_step(grads, cfg.rho, cfg.eps) if grads else None
        if cfg.variant == "layerwise" and g1 is not None:
            self._pending = {p: (None, g, False) for p, g in g1.items()}
        if e is not None:
            with torch.no_grad():
                for p, d in zip(chosen, e):
                    first = g1.get(p) if (g1 is not None and cfg.variant == "layerwise") else None
                    self._pending[p] = (p.detach().clone(), first, True)
                    p.add_(d.to(p.dtype))
        try:
            modules = [self.learner.module[mid] for mid in self._module_ids()]
            with frozen_bn_stats([m for m in modules if isinstance(m, torch.nn.Module)],
                                 e is not None and cfg.bn_update == "once" and g1 is not None):
                out = default_update(batch)
        finally:
            self._restore(list(self._pending))  # anything an optimiser did not step (e.g. skipped on NaN)
        self.updates += 1
        return out

    def _restore(self, params) -> None:
        with torch.no_grad():
            for p in params:
                saved, first, chosen = self._pending.pop(p)
                if saved is not None:
                    p.copy_(saved)
                if first is not None and p.grad is not None:
                    if chosen:
                        p.grad.mul_(self.config.alpha).add_(first, alpha=1.0 - self.config.alpha)
                    else:
                        p.grad.copy_(first)

    def _before_optimizer_step(self, optimizer, args, kwargs) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self._restore([p for p in params if p in self._pending])
        if self.config.variant == "async" and self.config.staleness > 0:
            if not self._stale or self._stale[-1].get("_update") != self.updates:
                self._stale.append({"_update": self.updates})
            self._stale[-1].update({p: p.grad.detach().clone() for p in params if p.grad is not None})
