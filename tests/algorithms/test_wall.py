"""WALL end to end on Ray: every training episode attacked with the budget spent exactly, ε = 0 in attacked
episodes, the replay carrying the attack's columns, natural and attacked evaluation side by side, restore_from a
natural QMIX checkpoint (target mixer too, unless wall_faithful), and a checkpoint round trip."""

import numpy as np
import pytest
import torch

from marlx.algorithms.qmix import QMIXConfig
from marlx.algorithms.wall import WALL, WALLConfig
from marlx.attacks.wolfpack import ATTACK_COUNT, ATTACKER_ACTIONS, FOLLOWUP_AGENTS, INITIAL_AGENT
from marlx.runtime.columns import ATTACKED, EXECUTED_ACTIONS, Q_VALUES

SMALL = {"size": 4, "box_start_row": 1, "episode_limit": 12}
NETS = dict(rnn_hidden_dim=8, mixing_embed_dim=4, hypernet_embed=8)


def small(cls=WALLConfig, **training):
    cfg = (cls().environment("builtin/push_box", env_config=SMALL).env_runners(num_envs_per_env_runner=2)
           .training(batch_size_episodes=4, learning_starts_episodes=4, buffer_size=20, **NETS, **training)
           .debugging(seed=1))
    if cls is WALLConfig:
        cfg.training(trans_embed_dim=8)
    return cfg


def test_registered_and_paper_defaults():
    from ray.tune.registry import get_trainable_cls

    assert get_trainable_cls("WALL") is WALL
    cfg = WALL.get_default_config()
    assert cfg.attack["name"] == "wolfpack" and cfg.attack["budget"] == 12
    eval_cfg = cfg.get_evaluation_config_object()
    assert eval_cfg.attack["budget"] == 8 and eval_cfg.explore is False
    assert cfg.copy().attack == cfg.attack
    assert cfg.attack_train_episode_prob == 1.0 and "episode_prob" not in cfg.attack  # the paper: every episode
    part = WALL.get_default_config().training(attack_train_episode_prob=0.25)
    assert part.attack["episode_prob"] == 0.25 and part.attack["budget"] == 12
    assert "episode_prob" not in part.get_evaluation_config_object().attack  # test episodes: always attacked
    with pytest.raises(ValueError, match="attack_train_episode_prob"):
        WALL.get_default_config().training(attack_train_episode_prob=2.0).validate()
    assert (cfg.lr, cfg.target_update_interval_episodes, cfg.buffer_size, cfg.batch_size_episodes) == (5e-4, 200, 5000, 32)


def test_training_episodes_are_attacked_greedily_within_budget(ray_session):
    # random start with probability 1: the attack starts at step 0, so the budget of 4 steps is spent exactly
    cfg = small(attack={"name": "wolfpack", "budget": 4, "schedule": "random", "random_start_prob": 1.0},
                keep_outputs=[Q_VALUES])  # keep the Q values in the episodes to check ε = 0
    algo = cfg.build_algo()
    try:
        for _ in range(3):
            result = algo.train()
        assert result["learners"]["default_policy"]["wall_planning_loss"] > 0
        batch = algo.replay.sample(4)
        for key in (EXECUTED_ACTIONS, ATTACKER_ACTIONS, INITIAL_AGENT, FOLLOWUP_AGENTS):
            assert key in batch
        assert (batch[EXECUTED_ACTIONS] != batch["actions"]).any()
        episodes = algo.env_runner.sample(explore=True)  # training-mode episodes
        for ep in episodes:
            count = ep.extras[ATTACK_COUNT]
            assert count[:4].tolist() == [1, 2, 3, 4] and (count[4:] > 4).all()  # one unit per attacked step
            changed = (ep.executed_actions != ep.actions).any(1)
            assert changed[0] and not changed[4:].any() and ep.attacked_steps <= 4
            assert np.array_equal(ep.extras[ATTACKED], ep.executed_actions != ep.actions)
            # ε = 0: the intended action is the greedy one over available actions at every step
            q = np.where(ep.obs["avail"][:-1] > 0, ep.extras[Q_VALUES], -np.inf)
            assert np.array_equal(ep.actions, q.argmax(-1))
    finally:
        algo.stop()


def test_natural_and_attacked_evaluation(ray_session):
    cfg = small(num_attack_train=6, num_attack_test=3).evaluation(
        evaluation_interval=1, evaluation_duration=4, evaluation_duration_unit="episodes")
    algo = cfg.build_algo()
    try:
        result = algo.train()
        ev = result["evaluation"]
        assert ev["natural"]["num_episodes"] == 4
        assert "episode_return_mean" in ev["env_runners"] and "episode_return_mean" in ev["natural"]
        assert algo.eval_env_runner.attack.budget == 3 and algo.env_runner.attack.budget == 6
        assert algo.eval_env_runner.attack is not None  # restored after the natural episodes
    finally:
        algo.stop()


@pytest.mark.parametrize("faithful", [False, True])
def test_restore_from_natural_checkpoint(ray_session, tmp_path, faithful):
    qmix = small(QMIXConfig).build_algo()
    try:
        for _ in range(4):  # past learning_starts: RMSprop holds its running squares
            qmix.train()
        path = qmix.save_to_path(tmp_path / "natural")
        natural = qmix.learner_group._learner.module["default_policy"].state_dict()
        natural_opt = qmix.learner_group._learner.get_optimizer("default_policy").state_dict()
    finally:
        qmix.stop()
    assert natural_opt["state"], "the natural run made no update"
    algo = small(restore_from=str(path), wall_faithful=faithful).build_algo()
    try:
        # the RL optimiser continues where the natural run's stopped (the released code restores RMSprop too)
        opt = algo.learner_group._learner.get_optimizer("default_policy").state_dict()
        assert sorted(opt["state"]) == sorted(natural_opt["state"])
        for i, buffers in natural_opt["state"].items():
            assert float(opt["state"][i]["step"]) == float(buffers["step"]) > 0
            assert torch.equal(opt["state"][i]["square_avg"], buffers["square_avg"])
        assert opt["param_groups"][0]["lr"] == natural_opt["param_groups"][0]["lr"]
        fresh = small(restore_from=str(path), restore_optimizer=False).build_algo()
        try:
            assert not fresh.learner_group._learner.get_optimizer("default_policy").state_dict()["state"]
        finally:
            fresh.stop()
        own = algo.learner_group._learner.module["default_policy"].state_dict()
        for k in natural:
            if k.startswith(("agent.", "mixer.", "target_agent.")):
                assert torch.equal(own[k], natural[k]), k
        same_target = all(torch.equal(own[k], natural[k]) for k in natural if k.startswith("target_mixer."))
        assert same_target is (not faithful)  # the released code leaves the target mixer random
        runner = algo.env_runner.module.state_dict()
        assert torch.equal(runner["agent.fc1.weight"], natural["agent.fc1.weight"])
        for _ in range(3):  # WALL's own updates step the loaded optimiser on
            algo.train()
        stepped = algo.learner_group._learner.get_optimizer("default_policy").state_dict()["state"]
        assert float(stepped[0]["step"]) > float(natural_opt["state"][0]["step"])
    finally:
        algo.stop()


def test_checkpoint_round_trip_keeps_attacker_models(ray_session, tmp_path):
    algo = small(num_attack_train=4).build_algo()
    try:
        for _ in range(2):
            algo.train()
        path = algo.save_to_path(tmp_path / "wall")
        before = algo.learner_group._learner.module["default_policy"].state_dict()
    finally:
        algo.stop()
    restored = WALL.from_checkpoint(path)
    try:
        after = restored.learner_group._learner.module["default_policy"].state_dict()
        for k in before:
            if k.startswith(("qdiff_transformer.", "planning_transformer.")):
                assert torch.equal(before[k], after[k]), k
        assert restored.config.attack["budget"] == 4
        assert torch.equal(restored.env_runner.module.state_dict()["qdiff_transformer.head.weight"],
                           before["qdiff_transformer.head.weight"])
        restored.train()
    finally:
        restored.stop()
