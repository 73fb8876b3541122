"""marlx.optim.sam — SAM, layer-wise light SAM and asynchronous SAM.

Torch-level steps (:mod:`.core`), asynchronous SAM's perturbation worker (:mod:`.worker`), a standalone
trainer on Ray (:mod:`.trainer`) and the RLlib Learner hook registered as ``optim: {sam: {...}}`` (:mod:`.hook`).
"""

from marlx.optim.sam.core import (  # noqa: F401
    SAM,
    AsyncSAM,
    LayerwiseSAM,
    SAMConfig,
    SharpnessStep,
    critical_layers,
    frozen_bn_stats,
    layer_groups,
    make_step,
)
from marlx.optim.sam.worker import PerturbationWorker, StaleGradientPipeline, ThreadWorker  # noqa: F401
from marlx.optim.sam.hook import SAMHook  # noqa: F401  (registers "sam")
