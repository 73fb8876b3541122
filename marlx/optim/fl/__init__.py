"""Federated learning on Ray: FedAvg, FedLUAR, on-device KD for weak clients, EmbracingFL.

- :class:`FederatedTrainer` (standalone, any torch model + dataset; clients served by a pool of Ray actors),
- strategies (:func:`make_strategy`: ``fedavg``, ``fedluar``, ``embracingfl``, ``width``, ``kd``),
- :func:`marlx.optim.fl.rllib.federated_rllib`: clients that are RLlib algorithms (own learner and env
  runners), aggregated by the same server arithmetic (FedAvg, FedLUAR),
- :class:`marlx.optim.fl.hook.FederatedHook` (``optim: {federated: {...}}``): the learners of one RLlib
  Algorithm as clients, aggregated by the same arithmetic (FedAvg, FedLUAR, EmbracingFL partial training).
"""

from marlx.optim.fl.aggregate import LayerRecycler, layer_groups, masked_average, numel, output_side_keys
from marlx.optim.fl.kd import kd_loss, kd_weight
from marlx.optim.fl.partition import assign_tiers, dirichlet_partition
from marlx.optim.fl.strategies import (
    STRATEGIES, EmbracingFL, EmbracingFLConfig, FedAvg, FedAvgConfig, FedLUAR, FedLUARConfig, OnDeviceKD,
    OnDeviceKDConfig, Strategy, WidthReduction, WidthReductionConfig, make_strategy,
)
from marlx.optim.fl.trainer import FederatedTrainer, FLConfig, ScaledModel
from marlx.optim.fl.hook import FederatedHook  # noqa: E402  (registers optim: {federated: ...})

__all__ = [
    "STRATEGIES", "EmbracingFL", "EmbracingFLConfig", "FLConfig", "FedAvg", "FedAvgConfig", "FedLUAR",
    "FedLUARConfig", "FederatedHook", "FederatedTrainer", "LayerRecycler", "OnDeviceKD", "OnDeviceKDConfig", "ScaledModel", "Strategy",
    "WidthReduction", "WidthReductionConfig", "assign_tiers", "dirichlet_partition", "kd_loss", "kd_weight",
    "layer_groups", "make_strategy", "masked_average", "numel", "output_side_keys",
]
