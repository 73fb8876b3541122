"""run: FIM (and intrinsic: {fim} on QMIX) end to end on Ray: registration and defaults, CoG detection during
training with the env's state names, the bonus and the forward model in the learner, checkpoint round trip."""

import pytest
import torch
from ray.rllib.policy.sample_batch import DEFAULT_POLICY_ID

from marlx.algorithms.fim import FIM, FIMConfig
from marlx.algorithms.qmix import QMIXConfig

ENV = {"size": 4, "box_start_row": 1, "episode_limit": 12, "mode": "paper_like", "n_boxes": 1}
FIM_OPTS = {"cog_samples": 150, "fim_model_epochs": 2, "fim_hidden": 16, "fim_alpha": 0.5}


def small(cls=FIMConfig, **training):
    return (
        cls().environment("builtin/push_box", env_config=ENV)
        .env_runners(num_envs_per_env_runner=4)
        .training(batch_size_episodes=8, learning_starts_episodes=8, rnn_hidden_dim=16, mixing_embed_dim=8,
                  hypernet_embed=16, epsilon_anneal_time=500, **training)
        .team_runtime(intrinsic={"fim": dict(FIM_OPTS)})
        .debugging(seed=3)
    )


def test_registered_with_pymarl2_defaults():
    from ray.tune.registry import get_trainable_cls

    from marlx.algorithms import get_algorithm_class

    assert get_trainable_cls("FIM") is FIM and get_algorithm_class("FIM") is FIM
    cfg = FIM.get_default_config()
    assert (cfg.optimizer, cfg.lr, cfg.td_lambda, cfg.intrinsic) == ("adam", 1e-3, 0.6, {"fim": {}})
    bad = FIMConfig().environment("builtin/push_box").team_runtime(intrinsic={"constant": {"value": 1.0}})
    with pytest.raises(ValueError, match="run: FIM needs the fim component"):
        bad.validate()


def fim_weights(algo):
    return algo.learner_group._learner.intrinsic[DEFAULT_POLICY_ID][0].model.state_dict()


def test_fim_trains_on_push_box_detects_the_box_and_checkpoints(ray_session, tmp_path, capsys):
    algo = small().build_algo()
    try:
        seen_bonus = False
        for _ in range(12):
            result = algo.train()
            learner = result.get("learners", {}).get(DEFAULT_POLICY_ID, {})
            seen_bonus |= learner.get("intrinsic/fim_mean", 0.0) > 0
        assert result["fim/cog_fitted"] == 1.0
        assert algo.fim.detector.names == ["box0_x", "box0_y"]  # the env's state names reached the driver
        assert result["fim/selected/box0_y"] == 1.0 and result["fim/selected/agent0_x"] == 0.0
        assert "CoG: box0_x, box0_y" in capsys.readouterr().out
        assert "td_loss" in learner and learner["intrinsic/fim/fim_model_updates"] > 0
        assert seen_bonus
        path = algo.save_to_path(str(tmp_path / "ckpt"))
        weights = {k: v.clone() for k, v in fim_weights(algo).items()}
        driver = algo.fim.get_state()
    finally:
        algo.stop()
    restored = small().build_algo()
    try:
        restored.restore_from_path(path)
        assert restored.fim.detector.names == ["box0_x", "box0_y"]
        assert restored.fim.env_steps == driver["env_steps"]
        assert restored.fim.first_success_step == driver["first_success_step"]
        for k, v in fim_weights(restored).items():
            torch.testing.assert_close(v, weights[k])
    finally:
        restored.stop()


def test_intrinsic_fim_on_plain_qmix(ray_session):
    algo = small(QMIXConfig).build_algo()
    try:
        for _ in range(6):
            result = algo.train()
        (fim,) = algo.intrinsic
        assert fim.detector.fitted and len(fim.detector.selected) == 2  # names unknown to plain QMIX: s<i>
        assert "intrinsic/fim/fim_model_loss" in result["learners"][DEFAULT_POLICY_ID]
    finally:
        algo.stop()
