"""Search spaces and the `tune:` block from YAML, checked before Ray starts (no Ray in these tests)."""

import json
import math

import numpy as np
import pytest
import yaml
from ray.tune.search import sample

from marlx.cli import marlx_cmd, rllib_cmd
from marlx.cli.experiment import apply_tune_overrides, parse_experiments
from marlx.cli.search_space import Literal, to_domain
from marlx.cli.tune import check_spec, group_rows, scoped_metric, sort_rows, write_spec
from marlx.cli.tune_metrics import carry_forward
from marlx.errors import ConfigKeyError, MarlxError, MissingDependencyError

from cli_helpers import error_of

TINY = {"env_config": {"size": 4, "box_start_row": 1, "episode_limit": 20}, "num_env_runners": 0,
        "train_batch_size": 200, "minibatch_size": 100, "num_epochs": 1}


def draws(domain, n=200):
    rng = np.random.default_rng(0)
    return [domain.sample(random_state=rng) for _ in range(n)]


def exp_of(config, tune=None, run="PPO", **block):
    b = {"run": run, "env": "builtin/push_box", "config": {**TINY, **config}, **block}
    if tune is not None:
        b["tune"] = tune
    (exp,) = parse_experiments({"e": b})
    return exp


def write_yaml(tmp_path, block):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"exp": block}))
    return str(path)


# -- each form -> its Tune domain --------------------------------------------------------------------------------

def test_continuous_forms_become_their_domains():
    d = to_domain({"uniform": [0.5, 2]}, "x")
    assert isinstance(d, sample.Float) and (d.lower, d.upper) == (0.5, 2.0)
    assert isinstance(d.get_sampler(), sample.Uniform) and all(0.5 <= v <= 2 for v in draws(d))
    d = to_domain({"loguniform": [1e-4, 1e-2]}, "x")
    assert isinstance(d.get_sampler(), sample.LogUniform)
    logs = np.log10(draws(d, 2000))
    assert logs.min() >= -4 and logs.max() <= -2 and abs(logs.mean() + 3) < 0.05  # uniform in log10: mean -3
    d = to_domain({"quniform": [0, 1, 0.25]}, "x")
    assert set(draws(d)) <= {0.0, 0.25, 0.5, 0.75, 1.0}
    d = to_domain({"qloguniform": [1, 100, 1]}, "x")
    assert all(float(v).is_integer() and 1 <= v <= 100 for v in draws(d))
    d = to_domain({"randn": [3.0, 0.5]}, "x")
    assert isinstance(d.get_sampler(), sample.Normal) and (d.get_sampler().mean, d.get_sampler().sd) == (3.0, 0.5)
    assert abs(np.mean(draws(d, 2000)) - 3.0) < 0.05


def test_integer_and_list_forms():
    d = to_domain({"randint": [2, 5]}, "x")
    assert isinstance(d, sample.Integer) and set(draws(d)) == {2, 3, 4}  # hi excluded, as Tune's randint
    assert set(draws(to_domain({"qrandint": [0, 10, 5]}, "x"))) == {0, 5, 10}  # hi included
    d = to_domain({"lograndint": [1, 1000]}, "x")
    assert isinstance(d.get_sampler(), sample.LogUniform) and all(1 <= v < 1000 for v in draws(d))
    d = to_domain({"choice": [16, 32]}, "x")
    assert isinstance(d, sample.Categorical) and d.categories == [16, 32]
    assert to_domain({"grid_search": [0.0, 0.6]}, "x") == {"grid_search": [0.0, 0.6]}
    assert to_domain({"eval": "spec.config.train_batch_size // 4"}, "x") == {"eval": "spec.config.train_batch_size // 4"}


def test_literal_escape_and_old_grid_name():
    assert to_domain({"literal": {"choice": [1, 2]}}, "x") == {"choice": [1, 2]}  # Tune leaves that dict alone
    d = to_domain({"literal": {"grid_search": [1, 2]}}, "x")  # Tune would expand this one: wrapped
    assert isinstance(d, sample.Function) and isinstance(d.func, Literal) and d.func() == {"grid_search": [1, 2]}
    notices = []
    assert to_domain({"grid": [1, 2]}, "cfg.seed", notices) == {"grid_search": [1, 2]}
    assert "cfg.seed: 'grid' is an old name" in notices[0]


@pytest.mark.parametrize("space, message", [
    ({"uniform": [1, 1]}, "needs lo < hi"),
    ({"uniform": [2, 1]}, "needs lo < hi"),
    ({"uniform": [1]}, "uniform takes [lo, hi]"),
    ({"loguniform": [0, 1]}, "needs lo > 0"),
    ({"lograndint": [0, 10]}, "needs lo >= 1"),
    ({"randint": [0.5, 3]}, "takes integers"),
    ({"randn": [0, 0]}, "sd > 0"),
    ({"quniform": [0, 1, 0]}, "q > 0"),
    ({"quniform": [0, 1, 0.3]}, "is invalid"),
    ({"choice": []}, "non-empty list"),
    ({"grid_search": 3}, "non-empty list"),
    ({"uniform": ["a", 1]}, "finite numbers"),
    ({"eval": "1 +"}, "not valid Python"),
])
def test_bad_bounds_are_one_clear_error(space, message):
    with pytest.raises(MarlxError, match="^cfg.lr: .*" + message.replace("[", r"\[").replace("]", r"\]")):
        to_domain(space, "cfg.lr")


# -- paths: nested, validated, mapped into the param space --------------------------------------------------------

def test_nested_paths_land_in_the_param_space():
    exp = exp_of({"lr": {"loguniform": [1e-4, 1e-2]},
                  "env_config": {"size": 4, "box_start_row": {"grid_search": [1, 2]}},
                  "optim": {"sam": {"rho": {"choice": [0.01, 0.05]}}},
                  "model_config": {"fcnet_hiddens": {"grid_search": [[16], [32, 32]]}}})
    ps = exp.param_space()
    assert ps["env_config"]["box_start_row"] == {"grid_search": [1, 2]}
    assert ps["env_config"]["size"] == 4 and ps["env_config"]["marlx_view"] == "multi_agent"  # the view stays
    assert ps["learner_config_dict"]["optim"]["sam"]["rho"].categories == [0.01, 0.05]
    assert ps["_model_config"]["fcnet_hiddens"] == {"grid_search": [[16], [32, 32]]}
    assert isinstance(ps["lr"], sample.Float)
    assert sorted(exp.space_paths.values()) == ["env_config.box_start_row", "lr", "model_config.fcnet_hiddens",
                                                "optim.sam.rho"]
    assert exp.is_search and exp.tune.metric == "marlx/success_rate"  # marlx env: success by default


def test_spaces_inside_intrinsic_components_are_searched_and_checked():
    qmix = {"env_config": {"size": 4, "box_start_row": 1, "episode_limit": 20}, "num_env_runners": 0}
    (exp,) = parse_experiments({"e": {"run": "QMIX", "env": "builtin/push_box", "config": {
        **qmix, "intrinsic": {"constant": {"value": {"grid_search": [0.0, 0.5]}}}}}})
    assert exp.param_space()["intrinsic"]["constant"]["value"] == {"grid_search": [0.0, 0.5]}
    assert list(exp.space_paths.values()) == ["intrinsic.constant.value"]
    # a value the component refuses in one variant only: caught before Ray, naming the variant
    with pytest.raises(MarlxError, match=r"value must be a number.*search variant intrinsic.constant.value='lots'\)"):
        parse_experiments({"e": {"run": "QMIX", "env": "builtin/push_box", "config": {
            **qmix, "intrinsic": {"constant": {"value": {"grid_search": [0.5, "lots"]}}}}}})
    with pytest.raises(MarlxError, match=r"unknown option.*valu"):
        parse_experiments({"e": {"run": "QMIX", "env": "builtin/push_box", "config": {
            **qmix, "intrinsic": {"constant": {"valu": {"choice": [0.1, 0.2]}}}}}})


def test_renamed_key_with_a_space_goes_to_the_new_name():
    exp = exp_of({"num_sgd_iter": {"grid_search": [1, 2]}})
    assert exp.param_space()["num_epochs"] == {"grid_search": [1, 2]}
    assert any("num_epochs" in n for n in exp.notices)


def test_unknown_paths_name_close_matches():
    with pytest.raises(ConfigKeyError, match="'lrr'.*lr"):
        exp_of({"lrr": {"uniform": [0.1, 0.2]}})
    with pytest.raises(MarlxError, match="'sise'.*size"):  # env options: the env is built
        exp_of({"env_config": {"sise": {"grid_search": [4, 5]}}})
    with pytest.raises(MarlxError, match="'rhoo'.*rho"):  # optim options: the technique checks them
        exp_of({"optim": {"sam": {"rhoo": {"choice": [0.1]}}}})
    with pytest.raises(ConfigKeyError, match="replay_buffer_config has no key 'capacityy'; close matches: capacity"):
        parse_experiments({"e": {"run": "DQN", "env": "CartPole-v1",
                                 "config": {"replay_buffer_config": {"capacityy": {"grid_search": [100, 200]}}}}})
    with pytest.raises(MarlxError, match="search one option of env_config"):
        exp_of({"env_config": {"grid_search": [{"size": 4}, {"size": 5}]}})


def test_a_bad_combination_fails_before_ray(tmp_path, capsys):
    # minibatch_size 400 > train_batch_size 200 only in one grid point: PPO's validate() rejects it
    f = write_yaml(tmp_path, {"run": "PPO", "env": "builtin/push_box",
                              "config": {**TINY, "minibatch_size": {"grid_search": [100, 400]}}})
    err = error_of(marlx_cmd.main, ["tune", f], capsys)
    assert "minibatch_size" in err and "(search variant minibatch_size=400)" in err
    # an env option that is only bad in one variant: the env is built per distinct env_config
    f = write_yaml(tmp_path, {"run": "QMIX", "env": "builtin/push_box",
                              "config": {"env_config": {"size": {"grid_search": [4, 1]}}}})
    err = error_of(marlx_cmd.main, ["tune", f], capsys)
    assert "search variant env_config.size=1" in err


# -- the tune: block ----------------------------------------------------------------------------------------------

def test_tune_block_settings_and_aliases():
    exp = exp_of({"lr": {"choice": [1e-3, 1e-4]}}, tune={
        "metric": "return", "mode": "min", "scope": "last-5-avg", "num_samples": 3, "max_concurrent_trials": 2,
        "scheduler": {"type": "asha", "grace_period": 2, "max_t": 20, "reduction_factor": 3}})
    t = exp.tune
    assert (t.metric, t.mode, t.scope, t.num_samples, t.max_concurrent_trials) == ("marlx/return", "min", "last-5-avg", 3, 2)
    assert exp.num_samples == 3
    sched = t.build_scheduler()
    assert type(sched).__name__ == "AsyncHyperBandScheduler" and sched._max_t == 20 and sched._reduction_factor == 3
    assert exp_of({}, run="PPO", tune={}).tune.metric == "marlx/success_rate"
    (cartpole,) = parse_experiments({"c": {"run": "PPO", "env": "CartPole-v1", "tune": {}}})
    assert cartpole.tune.metric == "marlx/return"  # no success flag outside marlx envs


@pytest.mark.parametrize("tune, message", [
    ({"metrc": "return"}, "tune has no key 'metrc'; close matches: metric"),
    ({"metric": "sucess_rate"}, "did you mean 'success_rate'"),
    ({"mode": "maximum"}, "mode must be max or min"),
    ({"scope": "best"}, "scope must be one of"),
    ({"num_samples": 0}, "num_samples must be a positive integer"),
    ({"scheduler": "ashaa"}, "unknown scheduler 'ashaa'; did you mean 'asha'"),
    ({"scheduler": {"type": "asha", "grace_perod": 1}}, "has no key 'grace_perod'; close matches: grace_period"),
    ({"scheduler": {"type": "asha", "grace_period": 50, "max_t": 10}}, "grace_period must be <= max_t"),
    ({"scheduler": {"type": "asha", "metric": "x"}}, "give metric and mode in tune:"),
    ({"scheduler": {"type": "pbt"}}, "needs hyperparam_mutations"),
    ({"scheduler": {"type": "pbt", "perturbation_interval": 5, "hyperparam_mutations": {"lr": [1e-3]}}},
     r"perturbation_interval \(5\) must be a multiple of checkpoint_config.checkpoint_frequency \(10\)"),
    ({"scheduler": {"type": "pbt", "time_attr": "time_total_s", "hyperparam_mutations": {"lr": [1e-3]}}},
     "needs time_attr: training_iteration"),
    ({"scheduler": {"type": "pbt", "hyperparam_mutations": {"lrr": [1e-3]}}}, "'lrr'"),
    ({"search_alg": "gridsearch"}, "unknown search_alg"),
])
def test_bad_tune_blocks(tune, message):
    with pytest.raises(MarlxError, match=message):
        exp_of({}, tune=tune)


def test_pbt_mutations_use_the_search_space_syntax_and_param_paths():
    exp = exp_of({}, tune={"scheduler": {"type": "pbt", "perturbation_interval": 4, "hyperparam_mutations": {
        "lr": {"loguniform": [1e-5, 1e-2]}, "env_config.size": [4, 5], "optim": {"sam": {"rho": [0.01, 0.1]}}}}},
        checkpoint_config={"checkpoint_frequency": 2})
    muts = exp.tune.scheduler[1]["hyperparam_mutations"]
    assert isinstance(muts["lr"], sample.Float) and muts["lr"].lower == 1e-5
    assert muts["env_config"] == {"size": [4, 5]}
    assert muts["learner_config_dict"] == {"optim": {"sam": {"rho": [0.01, 0.1]}}}
    pbt = exp.tune.build_scheduler()
    assert pbt._perturbation_interval == 4 and pbt._time_attr == "training_iteration"


def test_optuna_missing_gives_the_install_command(monkeypatch, tmp_path, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r"pip install 'marlx\[tune\]'.*pip install optuna"):
        exp_of({"lr": {"loguniform": [1e-4, 1e-2]}}, tune={"search_alg": "optuna"})
    f = write_yaml(tmp_path, {"run": "PPO", "env": "builtin/push_box", "tune": {"search_alg": {"type": "optuna"}}})
    assert "install it with: pip install 'marlx[tune]'" in error_of(marlx_cmd.main, ["tune", f], capsys)
    # with optuna present, a grid cannot go to it
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "optuna" else real(name, *a))
    with pytest.raises(MarlxError, match="cannot sample grid_search"):
        exp_of({"lr": {"grid_search": [1e-4, 1e-2]}}, tune={"search_alg": "optuna"})


def test_command_line_tune_overrides():
    data = {"a": {"run": "PPO", "num_samples": 4, "tune": {"scheduler": {"type": "asha", "grace_period": 3}}},
            "b": {"run": "PPO"}}
    apply_tune_overrides(data, num_samples=2, scheduler="asha", metric=None)
    assert data["a"] == {"run": "PPO", "tune": {"scheduler": {"type": "asha", "grace_period": 3}, "num_samples": 2}}
    assert data["b"]["tune"] == {"num_samples": 2, "scheduler": "asha"}
    apply_tune_overrides(data, scheduler="pbt", scheduler_config={"perturbation_interval": 2})
    assert data["a"]["tune"]["scheduler"] == {"type": "pbt", "perturbation_interval": 2}
    plain = {"c": {"run": "PPO"}}
    assert apply_tune_overrides(plain) == {"c": {"run": "PPO"}}  # nothing given: `rllib train` stays one run
    assert apply_tune_overrides(plain, always=True)["c"] == {"run": "PPO", "tune": {}}


def test_rllib_scheduler_flags(tmp_path, capsys):
    f = write_yaml(tmp_path, {"run": "PPO", "env": "builtin/push_box"})
    err = error_of(rllib_cmd.main, ["train", "file", f, "--scheduler-config", '{"grace_period": 2}'], capsys)
    assert "--scheduler-config needs --scheduler NAME" in err
    err = error_of(rllib_cmd.main, ["train", "file", f, "--scheduler", "asha", "--scheduler-config", '{"max_tt": 2}'],
                   capsys)
    assert "'max_tt'" in err and "max_t" in err


# -- metrics, table, resume check ---------------------------------------------------------------------------------

def test_metric_alias_exists_from_iteration_one_and_carries_forward():
    last = {k: float("nan") for k in ("train_success_rate", "eval_success_rate", "train_return", "eval_return")}
    first = carry_forward(last, {"training_iteration": 1, "env_runners": {}}, evaluates=False)
    assert set(first) == {"success_rate", "return", "eval_success_rate", "train_success_rate"}
    assert math.isnan(first["success_rate"])  # present, NaN before the first episode ends
    assert carry_forward(last, {"env_runners": {"success_rate": 0.5, "episode_return_mean": 2.0}}, False) == {
        "success_rate": 0.5, "return": 2.0, "eval_success_rate": last["eval_success_rate"], "train_success_rate": 0.5}
    assert carry_forward(last, {"env_runners": {}}, False)["success_rate"] == 0.5  # carried forward
    out = carry_forward(last, {"env_runners": {"success_rate": 0.25},
                               "evaluation": {"env_runners": {"success_rate": 1.0}}}, evaluates=True)
    assert (out["success_rate"], out["train_success_rate"], out["eval_success_rate"]) == (1.0, 0.25, 1.0)
    assert carry_forward(last, {"env_runners": {"success_rate": 0.0}}, evaluates=True)["success_rate"] == 1.0


def test_scoped_metrics_sorting_and_seed_groups():
    values = [0.1, float("nan"), 0.5, 0.2, 0.4, 0.3, 0.6]
    assert scoped_metric(values, "last", "max") == 0.6
    assert scoped_metric(values, "all", "max") == 0.6 and scoped_metric(values, "all", "min") == 0.1
    assert scoped_metric(values, "last-5-avg", "max") == pytest.approx((0.5 + 0.2 + 0.4 + 0.3 + 0.6) / 5)
    assert scoped_metric(values, "avg", "max") == pytest.approx(2.1 / 6)
    assert math.isnan(scoped_metric([float("nan")], "last", "max"))
    rows = [{"trial": t, "metric": m, "best": m, "config": {"lr": lr, "seed": s}, "status": "TERMINATED", "iters": 2,
             "env_steps": 100, "time_s": 1.0, "error": "", "path": t}
            for t, m, lr, s in [("a", 0.2, 1, 0), ("b", float("nan"), 2, 0), ("c", 0.9, 2, 1), ("d", 0.4, 1, 1)]]
    assert [r["trial"] for r in sort_rows(rows, "max")] == ["c", "d", "a", "b"]  # NaN last
    assert [r["trial"] for r in sort_rows(rows, "min")] == ["a", "d", "c", "b"]
    groups = {g["config"]["lr"]: g for g in group_rows(rows)}
    assert groups[1]["metric"] == pytest.approx(0.3) and groups[1]["metric_std"] == pytest.approx(0.1)
    assert groups[1]["n"] == 2 and groups[1]["config"]["seed"] == "0,1" and groups[1]["trial"] == "a,d"
    assert groups[2]["metric"] == 0.9 and groups[2]["n"] == 2  # the NaN member does not count in the mean


def test_resume_refuses_a_changed_search(tmp_path):
    exp = exp_of({"lr": {"grid_search": [1e-3, 1e-4]}}, tune={"metric": "return"})
    write_spec(exp, str(tmp_path))
    check_spec(exp, str(tmp_path))  # the same file: fine
    stored = json.loads((tmp_path / "marlx_tune_spec.json").read_text())
    assert stored["space"] == {"lr": {"grid_search": [1e-3, 1e-4]}} and stored["columns"] == [["lr", ["lr"]]]
    changed = exp_of({"lr": {"grid_search": [1e-3, 1e-5]}}, tune={"metric": "return"})
    with pytest.raises(MarlxError, match="the file's space differ from the run in .* pass --force"):
        check_spec(changed, str(tmp_path))
    check_spec(changed, str(tmp_path), force=True)
    with pytest.raises(MarlxError, match="the file's tune differ"):
        check_spec(exp_of({"lr": {"grid_search": [1e-3, 1e-4]}}, tune={"metric": "success_rate"}), str(tmp_path))


def test_summary_of_a_folder_without_a_search(tmp_path, capsys):
    err = error_of(marlx_cmd.main, ["tune", "--summary", str(tmp_path)], capsys)
    assert "holds no marlx search" in err
    err = error_of(marlx_cmd.main, ["tune", str(tmp_path / "x.yaml"), "nope"], capsys)
    assert "does not exist" in err


def test_unknown_experiment_name(tmp_path, capsys):
    f = write_yaml(tmp_path, {"run": "PPO", "env": "builtin/push_box"})
    err = error_of(marlx_cmd.main, ["tune", f, "ex"], capsys)
    assert "unknown experiment 'ex'; did you mean 'exp'" in err
