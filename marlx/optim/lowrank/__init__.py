"""Dynamic-rank training (Shin, Jung, Hong, Lee; arXiv 2508.08625): low-rank layers that regain rank
through interleaved full-rank phases. See ``shared/specs/optim.md`` section 1.

- :mod:`.layers`: :class:`DynamicRankLinear`, :class:`DynamicRankConv2d` (forms ``lowrank``/``full``/
  ``adapter``, exact inflate, SVD or adapter deflate), :func:`convert_to_lowrank`, :func:`effective_rank`.
- :mod:`.schedule`: :class:`RankSchedule`, :class:`LowRankConfig`, :class:`EffectiveRankMonitor`.
- :mod:`.trainer`: standalone :func:`train` and :func:`train_data_parallel` (Ray actors).
- :mod:`.hook`: the RLlib Learner hook ``optim: {lowrank: {...}}`` (registered on import).
"""

from marlx.optim.lowrank.hook import LowRankHook
from marlx.optim.lowrank.layers import (
    DynamicRankConv2d,
    DynamicRankLayer,
    DynamicRankLinear,
    convert_to_lowrank,
    dynamic_rank_layers,
    effective_rank,
    switch_form,
)
from marlx.optim.lowrank.schedule import (
    DynamicRankController,
    EffectiveRankMonitor,
    LowRankConfig,
    RankSchedule,
)
from marlx.optim.lowrank.trainer import TrainerConfig, TrainResult, iter_train, train, train_data_parallel

__all__ = [
    "DynamicRankConv2d", "DynamicRankLayer", "DynamicRankLinear", "DynamicRankController", "EffectiveRankMonitor",
    "LowRankConfig", "LowRankHook", "RankSchedule", "TrainResult", "TrainerConfig", "convert_to_lowrank",
    "dynamic_rank_layers", "effective_rank", "iter_train", "switch_form", "train", "train_data_parallel",
]
