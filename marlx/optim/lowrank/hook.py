"""``optim: {lowrank: {...}}``: dynamic-rank training of an RLlib Learner's RLModule(s).

The learner's TorchRLModules get their qualifying Linear/Conv2d layers replaced by dynamic-rank layers
before its optimisers are built (``LearnerHook.prepare_module``). The schedule counts training iterations
(one ``Learner.update()`` call = one iteration; RLlib syncs weights to env runners right after it, so a
switch at the end of iteration ``e`` reaches the env runners before they sample iteration ``e + 1``).

Env runners keep RLlib's plain modules: a dynamic-rank layer's state dict carries its effective dense
weight under the plain ``weight`` key, which RLlib's ``set_state`` (``strict=False``) loads, so sampling
computes exactly the learner's function in every form. Checkpoints hold all forms' tensors and the form
buffer, so restoring an algorithm restores the current form; the iteration count is the hook's state.

Options: every field of :class:`~marlx.optim.lowrank.schedule.LowRankConfig` (``boundaries`` in training
iterations) plus ``modules`` (module ids to convert; default all TorchRLModules). Not supported: several
learners (``num_learners > 1``: DDP would need ``find_unused_parameters`` for the idle forms).
"""

from __future__ import annotations

from typing import Any

from marlx.errors import MarlxError
from marlx.optim.lowrank.schedule import DynamicRankController, LowRankConfig
from marlx.optim.rllib_hooks import LearnerHook, register_hook


def _torch_modules(learner, modules) -> dict:
    import torch

    out = {}
    for mid in learner.module.keys():
        mod = learner.module[mid]
        if isinstance(mod, torch.nn.Module) and (modules is None or mid in modules):
            out[mid] = mod
    return out


def _split(options: dict) -> tuple[LowRankConfig, list | None]:
    opts = dict(options)
    modules = opts.pop("modules", None)
    return LowRankConfig.from_dict(opts), (list(modules) if modules is not None else None)


@register_hook
class LowRankHook(LearnerHook):
    """Dynamic-rank training inside any TorchLearner, selected by ``optim: {lowrank: {...}}``."""

    name = "lowrank"

    @classmethod
    def check_options(cls, **options: Any) -> None:
        _split(options)

    @classmethod
    def prepare_module(cls, learner, **options: Any) -> None:
        config, modules = _split(options)
        if getattr(learner.config, "num_learners", 0) > 1:
            raise MarlxError("optim 'lowrank' supports one learner (num_learners 0 or 1), not "
                             f"{learner.config.num_learners}")
        found = _torch_modules(learner, modules)
        if not found:
            raise MarlxError(f"optim 'lowrank': no torch RLModule among {list(learner.module.keys())} "
                             f"matches modules={modules}")
        controller = DynamicRankController(config)
        for mid, mod in found.items():
            controller.prepare(mod, name=f"RLModule {mid!r}")

    def __init__(self, learner, **options: Any) -> None:
        super().__init__(learner, **options)
        config, modules = _split(options)
        self.controller = DynamicRankController(config)
        self.modules = _torch_modules(learner, modules)

    def _optimizers(self) -> list:
        return [opt for mid in self.modules for _, opt in self.learner.get_optimizers_for_module(mid)]

    def after_update(self, timesteps: dict) -> None:
        out = self.controller.end_of_unit(self.modules, self._optimizers())
        metrics = self.learner.metrics
        for key, value in out["erank"].items():
            mid, layer = key.split("/", 1)
            metrics.log_value((mid, "lowrank_erank", layer), value, window=1)
        for mid in self.modules:
            metrics.log_value((mid, "lowrank_full_phase"), float(self.controller.form == "full"), window=1)

    @property
    def form(self) -> str:
        """The form of the next iteration (``"lowrank"`` or ``"full"``)."""
        return self.controller.form

    def get_state(self) -> dict:
        return self.controller.state()

    def set_state(self, state: dict) -> None:
        self.controller.set_state(state)
