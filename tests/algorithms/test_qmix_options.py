"""EPyMARL/PyMARL2 options of QMIX/VDN: the feed-forward agent, reward standardisation, one update per episode,
Adam with torch's eps, time limits stored as terminal, and the ``preset`` key (values checked against the
published configs: EPyMARL default.yaml + algs/qmix.yaml, PyMARL2 algs/qmix.yaml)."""

import math

import pytest
import torch
import yaml

from marlx.algorithms.qmix import QMIXConfig, VDNConfig
from marlx.algorithms.qmix.learner import RunningMeanStd
from marlx.algorithms.qmix.qmix import PRESETS
from marlx.cli import marlx_cmd
from marlx.cli.experiment import build_config
from marlx.errors import MarlxError
from marlx.modules.agent import MLPAgent, RNNAgent, make_agent

SMALL = {"size": 4, "box_start_row": 1, "episode_limit": 12}


def test_mlp_agent_is_64_64_and_ignores_the_hidden_input():
    agent = make_agent(7, 5, 64, use_rnn=False)
    assert isinstance(agent, MLPAgent) and isinstance(make_agent(7, 5, 64, use_rnn=True), RNNAgent)
    shapes = [tuple(p.shape) for p in agent.parameters()]
    assert shapes == [(64, 7), (64,), (64, 64), (64,), (5, 64), (5,)]
    x = torch.randn(3, 7)
    q1, h1 = agent(x, torch.zeros(3, 64))
    q2, _ = agent(x, torch.randn(3, 64))
    assert q1.shape == (3, 5) and torch.equal(q1, q2) and h1.shape == (3, 64)


def test_running_mean_std_follows_the_parallel_variance_formula():
    st = RunningMeanStd()
    st.update(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    n0, n = 1e-4, 4
    mean = 1.5 * n / (n0 + n)
    var = (1.0 * n0 + (5.0 / 3.0) * n + 1.5**2 * n0 * n / (n0 + n)) / (n0 + n)
    assert math.isclose(st.mean, mean, rel_tol=1e-12) and math.isclose(st.var, var, rel_tol=1e-12)
    st.update(torch.tensor([10.0, 10.0]))
    m2 = var * (n0 + n) + 0.0 * 2 + (10.0 - mean) ** 2 * (n0 + n) * 2 / (n0 + n + 2)
    assert math.isclose(st.mean, mean + (10.0 - mean) * 2 / (n0 + n + 2), rel_tol=1e-12)
    assert math.isclose(st.var, m2 / (n0 + n + 2), rel_tol=1e-12)
    assert torch.allclose(st.normalise(torch.tensor([st.mean])), torch.zeros(1))


def test_presets_and_explicit_keys_override_them():
    cfg = VDNConfig().update_from_dict({"lr": 1e-3, "preset": "epymarl"})  # the preset first, whatever the order
    assert cfg.preset == "epymarl" and cfg.mixer == "vdn" and cfg.lr == 1e-3
    assert (cfg.use_rnn, cfg.obs_last_action, cfg.obs_agent_id, cfg.standardise_rewards) == (False, False, True, True)
    assert (cfg.optimizer, cfg.optim_eps, cfg.num_updates_per_iteration, cfg.num_envs_per_env_runner) == (
        "adam", None, "per_episode", 1)
    assert (cfg.batch_size_episodes, cfg.buffer_size, cfg.target_update_interval_episodes, cfg.epsilon_anneal_time) == (
        32, 5000, 200, 50_000)
    cfg = QMIXConfig().update_from_dict({"preset": "pymarl2", "td_lambda": 0.3})
    assert (cfg.lr, cfg.td_lambda, cfg.batch_size_episodes, cfg.num_envs_per_env_runner, cfg.epsilon_anneal_time) == (
        1e-3, 0.3, 128, 8, 100_000)
    assert (cfg.use_rnn, cfg.obs_last_action, cfg.optimizer, cfg.optim_eps, cfg.standardise_rewards) == (
        True, True, "adam", None, False)
    assert set(PRESETS) == {"epymarl", "pymarl2"}
    with pytest.raises(MarlxError, match="unknown QMIX preset 'epymral'; did you mean 'epymarl'"):
        QMIXConfig().update_from_dict({"preset": "epymral"})


def test_preset_in_an_experiment_file(tmp_path, capsys):
    cfg, _ = build_config(QMIXConfig().algo_class, "builtin/push_box",
                          {"preset": "epymarl", "batch_size_episodes": 8, "env_config": SMALL})
    assert cfg.preset == "epymarl" and cfg.batch_size_episodes == 8 and not cfg.use_rnn and cfg.standardise_rewards
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"e": {"run": "QMIX", "env": "builtin/push_box", "config": {"preset": "pymarl3"}}}))
    assert marlx_cmd.main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "unknown QMIX preset 'pymarl3'" in err and "epymarl, pymarl2" in err


def test_bad_update_count_is_rejected():
    with pytest.raises(ValueError, match="num_updates_per_iteration must be an integer >= 0 or 'per_episode'"):
        QMIXConfig().environment("builtin/push_box", env_config=SMALL).training(
            num_updates_per_iteration="per_batch").validate()


@pytest.mark.usefixtures("ray_session")
def test_epymarl_preset_trains_one_update_per_episode_with_torch_adam_eps():
    cfg = (QMIXConfig().environment("builtin/push_box", env_config=SMALL)
           .update_from_dict({"preset": "epymarl", "num_envs_per_env_runner": 3, "batch_size_episodes": 4,
                              "learning_starts_episodes": 4})
           .debugging(seed=0))
    algo = cfg.build_algo()
    calls = []
    update = algo.learner_group.update
    algo.learner_group.update = lambda *a, **k: (calls.append(1), update(*a, **k))[1]
    try:
        learner = algo.learner_group._learner
        opt = learner.get_optimizer("default_policy")
        assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["eps"] == 1e-8
        module = learner.module["default_policy"].unwrapped()
        assert isinstance(module.agent, MLPAgent) and module.agent.fc1.in_features == module.obs_dim + 2
        for i in range(4):
            result = algo.train()
            # 3 episodes per iteration; updates start once the replay holds 4 (after iteration 2)
            assert len(calls) == (0 if i == 0 else 3 * i), (i, len(calls))
        stats = learner.reward_stats["default_policy"]
        assert stats.count > 100 and result["learners"]["default_policy"]["reward_std_running"] > 0
    finally:
        algo.stop()
