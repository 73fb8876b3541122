"""MAPPO/IPPO end to end on Ray: registration and defaults (spec §4.3), one iteration per critic input,
checkpoint round trip (actor, critic, value normaliser, both optimisers), greedy evaluation, bad config values
as one line with exit code 2."""

import numpy as np
import pytest
import torch
import yaml
from ray.rllib.core.columns import Columns

from marlx.algorithms.mappo import IPPO, MAPPO, IPPOConfig, MAPPOConfig
from marlx.envs.registry import make_env

SMALL = {"size": 3, "box_start_row": 1, "episode_limit": 12}


def small_config(cls=MAPPOConfig, **training):
    return (
        cls()
        .environment("builtin/push_box", env_config=SMALL)
        .env_runners(num_envs_per_env_runner=4)
        .training(**{"train_batch_size_per_learner": 160, "num_epochs": 2, "hidden_size": 16,
                     "data_chunk_length": 10, **training})
        .debugging(seed=3)
    )


def test_registered_by_name_with_the_official_defaults():
    from ray.tune.registry import get_trainable_cls

    from marlx.algorithms import get_algorithm_class

    assert get_trainable_cls("MAPPO") is MAPPO and get_algorithm_class("IPPO") is IPPO
    assert MAPPO.marlx_team_algorithm and IPPO.marlx_team_algorithm
    c = MAPPO.get_default_config()
    assert (c.lr, c.critic_lr, c.opti_eps, c.gamma, c.lambda_, c.clip_param) == (5e-4, 5e-4, 1e-5, 0.99, 0.95, 0.2)
    assert (c.num_epochs, c.minibatch_size, c.num_mini_batch, c.entropy_coeff, c.grad_clip) == (15, None, 1, 0.01, 10.0)
    assert (c.train_batch_size_per_learner, c.num_envs_per_env_runner) == (3200, 8)
    assert (c.vf_clip_param, c.huber_delta, c.use_valuenorm, c.critic_input, c.death_mask) == (0.2, 10.0, True, "state_id", True)
    assert (c.value_active_masks, c.data_chunk_length, c.bootstrap_on_truncation) == (False, 10, True)
    assert c.sample_mode == "fragments" and c.evaluation_config["explore"] is False
    assert IPPO.get_default_config().critic_input == "obs_id" and isinstance(IPPO.get_default_config(), IPPOConfig)


def greedy_actions(algo, n=16):
    """Greedy joint actions of the env runner's module on fixed observations and a random hidden state."""
    env = make_env("builtin/push_box", **SMALL)
    obs = [env.reset(seed=100 + i)[0] for i in range(n)]
    module = algo.env_runner.module
    batch_obs = {k: torch.as_tensor(np.stack([o[k] for o in obs])) for k in obs[0]}
    torch.manual_seed(0)
    state = {"h_pi": torch.randn(n, module.n_agents, module.hidden_dim)}
    return module.forward_inference({Columns.OBS: batch_obs, Columns.STATE_IN: state})[Columns.ACTIONS]


def test_checkpoint_round_trip(ray_session, tmp_path):
    algo = small_config().build_algo()
    try:
        for _ in range(2):
            result = algo.train()
        learner_out = result["learners"]["default_policy"]
        assert {"policy_loss", "vf_loss", "entropy", "clip_fraction"} <= set(learner_out)
        steps = result["num_env_steps_sampled_lifetime"]
        assert steps == 320
        before = greedy_actions(algo)
        learner = algo.learner_group._learner
        module = learner.module["default_policy"]
        critic_before = [p.detach().clone() for p in module.critic.parameters()]
        norm_before = module.value_norm.mean_var()
        assert module.value_norm.debiasing_term.item() > 0
        opt_steps = {name: learner.get_optimizer("default_policy", name).state_dict()["state"][0]["step"].item()
                     for name in ("actor", "critic")}
        assert opt_steps == {"actor": 4.0, "critic": 4.0}  # 2 iterations x 2 epochs x 1 minibatch
        path = algo.save_to_path(tmp_path / "ckpt")
    finally:
        algo.stop()
    restored = MAPPO.from_checkpoint(path)
    try:
        assert torch.equal(greedy_actions(restored), before)
        learner = restored.learner_group._learner
        module = learner.module["default_policy"]
        assert all(torch.equal(a, b) for a, b in zip(module.critic.parameters(), critic_before))
        assert all(torch.allclose(a, b) for a, b in zip(module.value_norm.mean_var(), norm_before))
        for name in ("actor", "critic"):
            assert learner.get_optimizer("default_policy", name).state_dict()["state"][0]["step"].item() == opt_steps[name]
        # env runners hold the actor only
        assert not hasattr(restored.env_runner.module, "critic")
        result = restored.train()
        assert result["num_env_steps_sampled_lifetime"] > steps
    finally:
        restored.stop()


@pytest.mark.parametrize("critic_input,options", [
    ("state", {"valuenorm_update": "iteration"}),
    ("state_obs_id", {"bootstrap_on_truncation": False, "adv_norm": "all"}),
    ("obs_id", {"value_active_masks": True, "use_valuenorm": False, "use_huber_loss": False}),
])
def test_one_iteration_per_critic_input(ray_session, critic_input, options):
    algo = small_config(critic_input=critic_input, num_mini_batch=2, data_chunk_length=5, **options).build_algo()
    try:
        out = algo.train()["learners"]["default_policy"]
        assert np.isfinite(out["vf_loss"]) and np.isfinite(out["policy_loss"])
    finally:
        algo.stop()


def test_ippo_trains_and_greedy_evaluation_runs(ray_session):
    cfg = small_config(IPPOConfig).evaluation(evaluation_interval=1, evaluation_duration=4,
                                               evaluation_duration_unit="episodes")
    algo = cfg.build_algo()
    try:
        result = algo.train()
        assert algo.learner_group._learner.module["default_policy"].critic_input == "obs_id"
        ev = result["evaluation"]["env_runners"]
        assert ev["num_episodes"] == 4 and "success_rate" in ev
    finally:
        algo.stop()


@pytest.mark.parametrize("key,value,expect", [
    ("critic_input", "foo", "critic_input must be one of"),
    ("adv_norm", "sometimes", "adv_norm must be one of"),
    ("data_chunk_length", 0, "data_chunk_length must be an integer >= 1"),
])
def test_bad_config_value_is_one_line_exit_2(tmp_path, capsys, key, value, expect):
    from marlx.cli import marlx_cmd

    f = tmp_path / "exp.yaml"
    f.write_text(yaml.safe_dump({"exp": {"run": "MAPPO", "env": "builtin/push_box", "config": {key: value}}}))
    code = marlx_cmd.main(["train", str(f)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert expect in err and "MAPPO" in err


def test_fox_awareness_on_mappo_is_refused_clearly():
    with pytest.raises(ValueError, match="fox_awareness does not run on MAPPO"):
        MAPPOConfig().environment("builtin/push_box").training(intrinsic={"fox_awareness": {}}).validate()


@pytest.mark.slow
def test_smax_3m_one_iteration_and_checkpoint_round_trip(ray_session, tmp_path):
    pytest.importorskip("jaxmarl")
    cfg = (MAPPOConfig().environment("smax/3m", env_config={"reward": "dense"})
           .env_runners(num_envs_per_env_runner=2)
           .training(train_batch_size_per_learner=100, num_epochs=1, hidden_size=16).debugging(seed=0))
    algo = cfg.build_algo()
    try:
        result = algo.train()
        assert result["num_env_steps_sampled_lifetime"] == 100
        assert np.isfinite(result["learners"]["default_policy"]["vf_loss"])
        module = algo.learner_group._learner.module["default_policy"]
        assert (module.n_agents, module.n_actions) == (3, 8)
        weights = {k: v.clone() for k, v in module.state_dict().items()}
        path = algo.save_to_path(tmp_path / "ckpt")
    finally:
        algo.stop()
    restored = MAPPO.from_checkpoint(path)
    try:
        state = restored.learner_group._learner.module["default_policy"].state_dict()
        assert all(torch.equal(state[k], v) for k, v in weights.items())
    finally:
        restored.stop()


def test_grf_3v1_two_iterations(ray_session):
    pytest.importorskip("gfootball")
    cfg = (MAPPOConfig()
           .environment("grf/academy_3_vs_1_with_keeper",
                        env_config={"reward": "scoring,checkpoints", "representation": "simple115v2", "n_agents": 3})
           .env_runners(num_envs_per_env_runner=2)
           .training(train_batch_size_per_learner=200, num_epochs=2, num_mini_batch=2, hidden_size=16)
           .debugging(seed=0))
    algo = cfg.build_algo()
    try:
        for _ in range(2):
            result = algo.train()
        module = algo.learner_group._learner.module["default_policy"]
        assert (module.n_agents, module.obs_dim, module.n_actions) == (3, 115, 19)
        assert result["num_env_steps_sampled_lifetime"] == 400
        assert np.isfinite(result["learners"]["default_policy"]["vf_loss"])
    finally:
        algo.stop()
