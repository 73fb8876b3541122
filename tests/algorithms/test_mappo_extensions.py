"""MAPPO with marlx's extensions: intrinsic rewards added before GAE (the seam, FoX's count bonus and FIM on
push_box) and the marlx.optim Learner hooks (SAM, dynamic rank, local SGD)."""

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.policy.sample_batch import DEFAULT_POLICY_ID, MultiAgentBatch, SampleBatch

from marlx.algorithms.mappo import MAPPOConfig
from marlx.algorithms.mappo.learner import ADV, MASK, RET, TRUNCATEDS
from marlx.algorithms.mappo.losses import gae
from marlx.algorithms.mappo.mappo import fragments_to_batch
from marlx.optim.rllib_hooks import apply_optim

SMALL = {"size": 3, "box_start_row": 1, "episode_limit": 12}


def small_config(**training):
    return (
        MAPPOConfig()
        .environment("builtin/push_box", env_config=SMALL)
        .env_runners(num_envs_per_env_runner=4)
        .training(**{"train_batch_size_per_learner": 160, "num_epochs": 2, "hidden_size": 16, **training})
        .debugging(seed=3)
    )


# -- intrinsic rewards ----------------------------------------------------------------------------------

def test_constant_bonus_enters_the_per_agent_gae(ray_session):
    """With intrinsic {constant: {value: b}} the learner's returns are GAE of (r + b) under the same critic."""
    b = 0.25
    algo = small_config(intrinsic={"constant": {"value": b}}, adv_norm="none", data_chunk_length=40).build_algo()
    try:
        episodes = algo.env_runner.sample()
        data = fragments_to_batch(episodes)
        learner = algo.learner_group._learner
        tensors = {k: torch.as_tensor(v) for k, v in data.items()}
        chunks = learner.prepare(DEFAULT_POLICY_ID, dict(tensors))
        module = learner.module[DEFAULT_POLICY_ID].unwrapped()
        with torch.no_grad():
            v = module.value_norm.denormalize(module.values(module.team_obs(tensors)))
        n = v.shape[-1]
        expected = {}
        for bonus in (b, 0.0):
            r = (tensors[Columns.REWARDS] + bonus).unsqueeze(-1).expand(-1, -1, n)
            expected[bonus] = gae(r, v, tensors[Columns.TERMINATEDS], tensors[TRUNCATEDS], tensors[MASK],
                                  0.99, 0.95)[0]
        # one chunk per fragment (chunk length 40 = fragment length): chunks are the fragments in order
        got = chunks[ADV][:, : expected[b].shape[1]]
        assert torch.allclose(got, expected[b], atol=1e-5)
        assert not torch.allclose(got, expected[0.0], atol=1e-3)
        assert torch.all(chunks[RET] == chunks[RET])
    finally:
        algo.stop()


from marlx.intrinsic.base import IntrinsicReward, register_intrinsic


@register_intrinsic("first_agent_bonus")
class FirstAgentBonus(IntrinsicReward):
    """A per-agent component (a user's own, registered by name): 1.0 for agent 0 on every valid step."""

    def bonus(self, batch, fwd_out, module):
        b = torch.zeros(*batch[MASK].shape, module.n_agents)
        b[..., 0] = 1.0
        return b


def test_per_agent_bonus_reaches_only_its_agents_gae(ray_session):
    algo = small_config(intrinsic={"first_agent_bonus": {}, "constant": {"value": 0.5}}, adv_norm="none",
                        data_chunk_length=40).build_algo()
    try:
        data = fragments_to_batch(algo.env_runner.sample())
        learner = algo.learner_group._learner
        tensors = {k: torch.as_tensor(v) for k, v in data.items()}
        chunks = learner.prepare(DEFAULT_POLICY_ID, dict(tensors))
        module = learner.module[DEFAULT_POLICY_ID].unwrapped()
        with torch.no_grad():
            v = module.value_norm.denormalize(module.values(module.team_obs(tensors)))
        r = (tensors[Columns.REWARDS] + 0.5).unsqueeze(-1).repeat(1, 1, 2)
        r[..., 0] += 1.0  # team constant for both agents, the per-agent bonus for agent 0 only
        expected = gae(r, v, tensors[Columns.TERMINATEDS], tensors[TRUNCATEDS], tensors[MASK], 0.99, 0.95)[0]
        assert torch.allclose(chunks[ADV][:, : expected.shape[1]], expected, atol=1e-5)
    finally:
        algo.stop()


@pytest.mark.parametrize("count_at", ["collection", "sampling"])
def test_fox_count_bonus_runs_on_mappo(ray_session, count_at):
    algo = small_config(intrinsic={"fox_count": {"beta1": 0.1, "count_at": count_at}}).build_algo()
    try:
        for _ in range(2):
            result = algo.train()
        out = result["learners"]["default_policy"]
        # every visited formation was counted once, so the bonus beta1 / sqrt(N) is in (0, beta1]
        assert 0.0 < out["intrinsic/fox_count_mean"] <= out["intrinsic/fox_count_max"] <= 0.1 + 1e-6
        counter = algo.intrinsic[0].counter
        # fragments count each step's next formation once (an episode's terminal one not, the released default)
        # and an episode's first one with its first fragment
        steps, finished = result["num_env_steps_sampled_lifetime"], result["env_runners"]["num_episodes_lifetime"]
        assert steps + 4 - finished <= counter.total <= steps + 4 + finished
        assert len(counter.counts) > 1
    finally:
        algo.stop()


def test_fim_runs_on_mappo(ray_session):
    algo = small_config(intrinsic={"fim": {"cog_samples": 100, "fim_alpha": 1.0}}).build_algo()
    try:
        results = [algo.train() for _ in range(3)]
        fim = algo.intrinsic[0]
        assert fim.detector.fitted  # the CoG set was detected from the sampled fragments
        out = results[-1]["learners"]["default_policy"]
        assert out["intrinsic/fim/fim_model_updates"] >= 1 and np.isfinite(out["intrinsic/fim/fim_model_loss"])
        assert out["intrinsic/fim_mean"] >= 0.0
    finally:
        algo.stop()


# -- marlx.optim hooks ----------------------------------------------------------------------------------

def _weights_after_one_iteration(optim):
    cfg = small_config()
    apply_optim(cfg, optim)
    algo = cfg.build_algo()
    try:
        algo.train()
        learner = algo.learner_group._learner
        module = learner.module["default_policy"]
        return {k: v.detach().clone() for k, v in module.state_dict().items()}, learner
    finally:
        algo.stop()


def _diff(a, b):
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.slow
def test_sam_hook_changes_the_mappo_update_only_when_it_perturbs(ray_session):
    base, _ = _weights_after_one_iteration(None)
    again, _ = _weights_after_one_iteration(None)
    zero, learner = _weights_after_one_iteration({"sam": {"rho": 0.0}})
    assert [h.name for h in learner._optim_hooks] == ["sam"]
    assert _diff(base, again) == 0.0  # deterministic, so a difference below means something
    assert _diff(base, zero) < 1e-6
    sam, _ = _weights_after_one_iteration({"sam": {"rho": 0.05}})
    assert _diff(base, sam) > 1e-6


@pytest.mark.slow
def test_lowrank_hook_trains_mappo_and_the_runner_acts_with_the_learner_weights(ray_session):
    from marlx.optim.lowrank.layers import dynamic_rank_layers

    cfg = small_config()
    apply_optim(cfg, {"lowrank": {"rank_ratio": 0.25, "min_rank": 2, "boundaries": [2]}})
    algo = cfg.build_algo()
    try:
        learner = algo.learner_group._learner
        module = learner.module["default_policy"]
        layers = dynamic_rank_layers(module)
        assert any(n.startswith("actor.") for n in layers) and any(n.startswith("critic.") for n in layers)
        forms = []
        for _ in range(2):
            result = algo.train()
            forms.append({layer.form for layer in layers.values()})
            assert np.isfinite(result["learners"]["default_policy"]["total_loss"])
        assert forms[0] == {"lowrank"} and forms[1] == {"full"}
        # the env runner's actor computes the learner's function after the weight sync
        obs = {"obs": torch.rand(5, 2, module.obs_dim), "avail": torch.ones(5, 2, module.n_actions),
               "state": torch.rand(5, module.state_dim)}
        h = torch.zeros(5, 2, module.hidden_dim)
        with torch.no_grad():
            ref, _ = module.actor_step(obs, h)
            got, _ = algo.env_runner.module.actor_step(obs, h)
        assert torch.allclose(ref, got, atol=1e-5)
    finally:
        algo.stop()


@pytest.mark.slow
def test_local_sgd_hook_averages_two_mappo_learners(ray_session):
    def probe(learner):
        hook = learner._optim_hooks[0]
        vec = torch.cat([p.detach().reshape(-1) for p in learner.module["default_policy"].parameters()])
        return hook.num_updates, hook.num_averages, vec.numpy().copy()

    cfg = small_config(num_epochs=1).learners(num_learners=2, num_cpus_per_learner=0.5)
    apply_optim(cfg, {"local_sgd": {"every": 2}})
    algo = cfg.build_algo()
    try:
        for it in range(1, 3):
            algo.train()
            (u0, a0, v0), (u1, a1, v1) = [r.get() for r in algo.learner_group.foreach_learner(probe)]
            assert u0 == u1 == it and a0 == a1 == it // 2
            if it % 2:
                assert np.abs(v0 - v1).max() > 1e-7  # each learner trained on its own shard
            else:
                np.testing.assert_array_equal(v0, v1)  # averaged
    finally:
        algo.stop()
