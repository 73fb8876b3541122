"""Federated RLlib: PPO clients (own learner and env runners) on marlx's push_box, server FedAvg / FedLUAR."""

import pytest
import torch

from marlx.errors import UnknownNameError
from marlx.optim.fl.aggregate import numel
from marlx.optim.fl.rllib import FederatedRLlib, RLlibFLConfig, shared_policy


def ppo_push_box():
    from ray.rllib.algorithms.ppo import PPOConfig

    return (
        PPOConfig()
        .environment("builtin/push_box", env_config={"marlx_view": "multi_agent"})
        .multi_agent(policies={"shared"}, policy_mapping_fn=shared_policy)
        .env_runners(num_env_runners=0)
        .training(train_batch_size_per_learner=128, minibatch_size=64, num_epochs=1)
        .rl_module(model_config={"fcnet_hiddens": [32, 32]})
    )


@pytest.mark.slow
def test_federated_ppo_fedavg_and_fedluar_on_push_box(ray_session):
    import ray

    fl = FederatedRLlib(ppo_push_box(), RLlibFLConfig(strategy="fedluar", delta=2, num_clients=2,
                                                      clients_per_round=2, local_iterations=1))
    try:
        full = numel(fl.state)
        assert all(k.startswith("shared/") for k in fl.state)
        # Round 0 is FedAvg (no FedLUAR scores yet): the server state is the step-weighted client mean.
        start = {k: v.clone() for k, v in fl.state.items()}
        rec = fl.step()
        assert rec["uploaded"] == 2 * full and rec["recycled"] == [] and rec["env_steps"] >= 256
        client_w = ray.get([c.get_weights.remote() for c in fl.clients])
        for k in fl.state:
            if fl.state[k].is_floating_point():
                mean = (client_w[0][k].double() + client_w[1][k].double()) / 2  # equal steps per client
                assert torch.allclose(fl.state[k].double(), mean, atol=1e-6), k
        moved = [k for k in fl.state if not torch.equal(fl.state[k], start[k])]
        assert len(moved) > 4  # PPO did train
        # Round 1: exactly delta weight layers recycled, not uploaded, previous update applied again.
        start = {k: v.clone() for k, v in fl.state.items()}
        prev = {k: v.clone() for k, v in fl.recycler.prev_update.items()}
        rec = fl.step()
        assert len(rec["recycled"]) == 2 and all(start[k].dim() >= 2 for k in rec["recycled"])
        assert rec["uploaded"] == 2 * (full - numel(start, rec["recycled"]))
        for k in rec["recycled"]:
            assert torch.equal(fl.state[k], start[k] + prev[k])
        # A round of zero local iterations: clients take the global weights and send them back unchanged.
        fl.fl.local_iterations = 0
        fl.recycler.delta = 0
        before = {k: v.clone() for k, v in fl.state.items()}
        fl.step()
        for c in ray.get([c.get_weights.remote() for c in fl.clients]):
            for k in before:
                assert torch.allclose(c[k], before[k], atol=1e-7), k
        for k in before:
            assert torch.allclose(fl.state[k], before[k], atol=1e-7), k
    finally:
        fl.stop()


def test_federated_rllib_rejects_unknown_strategy(ray_session):
    with pytest.raises(UnknownNameError, match="fedavg"):
        FederatedRLlib(None, RLlibFLConfig(strategy="fedprox"))
