"""`marlx plot` / `marlx report`: run folders grouped by experiment and seed, numbers equal to the runs' own
result files, estimators on hand-computed examples, `seeds:` expansion, bad input as one line."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from marlx.cli import marlx_cmd
from marlx.results.report import report_runs
from marlx.results.runs import find_trials, group_trials
from marlx.results.plot import seed_grid, seed_mean
from marlx.results.stats import bootstrap_band, bootstrap_ci, iqm, paired_t_interval, t_interval

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def write_trial(folder, seed, success, steps_per_iter=100, seconds_per_iter=2.0, lr=0.001):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "params.json"), "w") as f:
        json.dump({"seed": seed, "lr": lr, "env_config": {"size": 4}}, f)
    with open(os.path.join(folder, "result.json"), "w") as f:
        for i, s in enumerate(success, 1):
            f.write(json.dumps({"training_iteration": i, "num_env_steps_sampled_lifetime": i * steps_per_iter,
                                "time_total_s": i * seconds_per_iter,
                                "env_runners": {"success_rate": s, "episode_return_mean": 2 * s},
                                "config": {"lr": lr}}) + "\n")


@pytest.fixture
def runs(tmp_path):
    """Two experiments of two seeds each; B's second seed ran 3 iterations only."""
    write_trial(tmp_path / "A" / "PPO_0_seed=0", 0, [0.0, 0.2, 0.6, 0.4])
    write_trial(tmp_path / "A" / "PPO_1_seed=1", 1, [0.1, 0.5, 0.7, 0.9])
    write_trial(tmp_path / "B" / "PPO_0_seed=0", 0, [0.0, 0.0, 0.1, 0.2], seconds_per_iter=4.0)
    write_trial(tmp_path / "B" / "PPO_1_seed=1", 1, [0.0, 0.3, 0.3], seconds_per_iter=4.0)
    return tmp_path


def test_estimators_on_hand_examples():
    assert iqm([1, 2, 3, 4, 100, 5, 6, 7]) == pytest.approx(4.5)  # 3, 4, 5, 6 kept
    assert iqm([1, 2, 3]) == pytest.approx(2.0)  # < 4 values: nothing cut
    assert bootstrap_ci([0.3]) == (0.3, 0.3)
    lo, hi = bootstrap_ci([0.0, 1.0, 0.5, 0.25, 0.75])
    assert 0.0 < lo < 0.5 < hi < 1.0
    lo, hi = bootstrap_ci([0.0, 1.0])  # means of two-seed resamples are 0, 0.5 or 1
    assert (lo, hi) == (0.0, 1.0)
    mean, lo, hi = bootstrap_band(np.array([[0.0, 1.0, np.nan], [1.0, 1.0, 0.5]]))
    assert np.allclose(mean, [0.5, 1.0, 0.5]) and lo[1] == hi[1] == 1.0 and lo[0] == 0.0 and hi[0] == 1.0


def test_plotted_mean_only_where_every_seed_has_a_value():
    # seed 0 evaluated last at 100 steps, seed 1 at 90: past 90 the "mean of 2 seeds" would be seed 0 alone
    grid, values = seed_grid([([0, 50, 100], [0.0, 0.0, 1.0]), ([0, 45, 90], [0.0, 0.2, 0.2])], points=11)
    mean, lo, hi = seed_mean(values)
    assert np.allclose(grid, np.arange(0, 101, 10))
    assert np.isnan(mean[10]) and np.isnan(lo[10]) and np.isnan(hi[10])  # x = 100: only seed 0
    assert mean[9] == pytest.approx((0.8 + 0.2) / 2)  # x = 90: seed 0 interpolated (0.8), seed 1's last (0.2)
    assert not np.isnan(mean[:10]).any()


def test_t_intervals_on_hand_examples():
    # 1..5: mean 3, sd sqrt(2.5), t_{0.975, 4} = 2.776445 -> half width 2.776445 * 1.581139 / sqrt(5) = 1.963243
    m, lo, hi = t_interval([1, 2, 3, 4, 5])
    assert m == 3.0 and lo == pytest.approx(3 - 1.963243, abs=1e-5) and hi == pytest.approx(3 + 1.963243, abs=1e-5)
    assert t_interval([7.0]) == (7.0, 7.0, 7.0)
    assert all(np.isnan(x) for x in t_interval([]))
    # Pairing removes the spread the two share: b = a - 1 + small noise; unpaired intervals overlap, paired does not.
    a = [90.0, 80.0, 95.0, 70.0, 85.0]
    b = [89.0, 78.9, 94.1, 69.0, 83.8]
    d, dlo, dhi = paired_t_interval(a, b)
    assert d == pytest.approx(1.04) and 0.5 < dlo < d < dhi < 1.5
    _, alo, _ = t_interval(a)
    _, _, bhi = t_interval(b)
    assert alo < bhi
    with pytest.raises(ValueError):
        paired_t_interval([1, 2], [1, 2, 3])


def test_trials_grouped_by_experiment_and_seed(runs):
    groups = group_trials(find_trials([str(runs)]))
    assert [(g.label, [t.seed for t in g.trials]) for g in groups] == [("A", [0, 1]), ("B", [0, 1])]
    # a grid over another key inside one experiment makes one group per setting
    write_trial(runs / "C" / "t0", 0, [0.1], lr=0.1)
    write_trial(runs / "C" / "t1", 1, [0.2], lr=0.1)
    write_trial(runs / "C" / "t2", 0, [0.3], lr=0.01)
    labels = sorted(g.label for g in group_trials(find_trials([str(runs / "C")])))
    assert labels == ["C (lr=0.01)", "C (lr=0.1)"]


def test_report_numbers_equal_the_result_files(runs, tmp_path):
    out = tmp_path / "report.md"
    res = report_runs([str(runs / "A"), str(runs / "B")], out=str(out))
    a, b = res["rows"]
    assert res["metric"] == "env_runners/success_rate" and res["x"] == "num_env_steps_sampled_lifetime"
    assert a["final"] == [0.4, 0.9] and a["final_mean"] == pytest.approx(0.65)
    assert a["best"] == [0.6, 0.9] and a["best_mean"] == pytest.approx(0.75)
    assert a["final_iqm"] == pytest.approx(0.65)
    assert a["final_ci"] == (0.4, 0.9)  # two seeds: the resampled means are 0.4, 0.65 or 0.9
    assert a["steps_to_threshold"] == [300.0, 200.0]  # first success >= 0.5
    assert a["env_steps_per_s"] == [50.0, 50.0]
    assert b["final"] == [0.2, 0.3] and b["steps_to_threshold"] == [None, None] and b["env_steps_per_s"] == [25.0, 25.0]
    text = out.read_text()
    assert "| A | 2 | 0.650 [0.400, 0.900] | 0.650 [0.400, 0.900] | 0.750 [0.600, 0.900] | 250 (2/2) | 50 |" in text
    assert "| B | 2 | 0.250 [0.200, 0.300] |" in text and "never (0/2)" in text
    assert os.path.getsize(res["png"]) > 1000


def test_repeated_evaluation_results_count_once(tmp_path):
    folder = tmp_path / "E" / "t0"
    os.makedirs(folder)
    rows = [(1, 10, 0.5), (2, 10, 0.5), (3, 20, 0.8), (4, 20, 0.8)]  # evaluation every other iteration
    with open(folder / "result.json", "w") as f:
        for it, episodes, s in rows:
            f.write(json.dumps({"training_iteration": it, "evaluation": {"env_runners": {
                "success_rate": s, "num_episodes_lifetime": episodes}}}) + "\n")
    (trial,) = find_trials([str(tmp_path)])
    assert trial.series("training_iteration", "evaluation/env_runners/success_rate") == ([1.0, 3.0], [0.5, 0.8])


def test_plot_command_writes_png(runs, tmp_path, capsys):
    out = tmp_path / "c.png"
    assert marlx_cmd.main(["plot", str(runs), "--metric", "return", "--x", "iteration", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "env_runners/episode_return_mean against training_iteration: A (2 seeds), B (2 seeds)" in text
    from PIL import Image

    assert Image.open(out).size == (600, 400)


def test_tensorboard_events_are_read_when_there_is_no_result_json(tmp_path):
    from tensorboardX import SummaryWriter

    folder = tmp_path / "E" / "trial_0"
    w = SummaryWriter(str(folder))
    for i, s in enumerate([0.1, 0.4, 0.8], 1):
        w.add_scalar("ray/tune/env_runners/success_rate", s, global_step=i)
    w.close()
    (trial,) = find_trials([str(tmp_path)])
    assert trial.series("training_iteration", "env_runners/success_rate") == ([1.0, 2.0, 3.0],
                                                                              pytest.approx([0.1, 0.4, 0.8]))


def error_of(argv, capsys):
    code = marlx_cmd.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_bad_input_is_one_line(runs, tmp_path, capsys):
    assert "is not a run folder" in error_of(["plot", str(tmp_path / "missing")], capsys)
    (tmp_path / "empty").mkdir()
    assert "holds no result.json" in error_of(["report", str(tmp_path / "empty")], capsys)
    err = error_of(["report", str(runs), "--metric", "sucess_rate"], capsys)
    assert "unknown metric 'sucess_rate'" in err and "env_runners/success_rate" in err
    assert "unknown --x 'env_stpes'" in error_of(["plot", str(runs), "--x", "env_stpes"], capsys)


def test_seeds_expand_to_a_grid_over_seed():
    from marlx.cli.experiment import parse_experiments
    from marlx.errors import MarlxError

    (exp,) = parse_experiments({"e": {"run": "PPO", "env": "builtin/push_box", "seeds": [0, 1, 2]}})
    assert exp.param_space()["seed"] == {"grid_search": [0, 1, 2]}
    from ray.tune.search.basic_variant import BasicVariantGenerator

    gen = BasicVariantGenerator()
    gen.add_configurations({"e": {"run": "PPO", "config": exp.param_space()}})
    seeds = []
    while (trial := gen.next_trial()) is not None:
        seeds.append(trial.config["seed"])
    assert sorted(seeds) == [0, 1, 2]
    for bad, msg in (([], "non-empty list"), ([0, 0], "repeat"), ("0,1", "non-empty list")):
        with pytest.raises(MarlxError, match=msg):
            parse_experiments({"e": {"run": "PPO", "env": "builtin/push_box", "seeds": bad}})
    (exp,) = parse_experiments({"e": {"run": "PPO", "env": "builtin/push_box", "seeds": [1, 2], "config": {"seed": 3}}})
    assert exp.param_space()["seed"] == {"grid_search": [1, 2]} and "replace config.seed 3" in exp.notices[0]


TINY_PPO = {"env_config": {"size": 4, "box_start_row": 1, "episode_limit": 20}, "num_env_runners": 0,
            "train_batch_size": 200, "minibatch_size": 100, "num_epochs": 1}


@pytest.mark.slow
def test_train_seeds_then_report_plot_and_video(tmp_path):
    """Two experiments x two seeds trained for real, then reported: the table's numbers are the runs' own."""
    block = {"run": "PPO", "env": "builtin/push_box", "seeds": [0, 1], "stop": {"training_iteration": 2},
             "checkpoint_config": {"checkpoint_frequency": 5, "checkpoint_at_end": True}, "config": TINY_PPO}
    f = tmp_path / "exp.yaml"
    f.write_text(yaml.safe_dump({"a": block, "b": {**block, "config": {**TINY_PPO, "lr": 0.001}}}))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    runs = tmp_path / "runs"
    res = subprocess.run([os.path.join(BIN, "marlx"), "train", str(f), "--storage-path", str(runs)],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    for exp in ("a", "b"):
        params = [json.load(open(p)) for p in glob.glob(str(runs / exp / "*" / "params.json"))]
        assert sorted(p["seed"] for p in params) == [0, 1]  # one trial per seed
    report = report_runs([str(runs / "a"), str(runs / "b")], metric="return", out=str(tmp_path / "r.md"))
    for row, exp in zip(report["rows"], ("a", "b")):
        own = {}
        for p in glob.glob(str(runs / exp / "*" / "result.json")):
            lines = [json.loads(x) for x in open(p) if x.strip()]
            seed = json.load(open(os.path.join(os.path.dirname(p), "params.json")))["seed"]
            own[seed] = [x["env_runners"]["episode_return_mean"] for x in lines]
        assert row["final"] == [own[0][-1], own[1][-1]] and row["best"] == [max(own[0]), max(own[1])]
    res = subprocess.run([os.path.join(BIN, "marlx"), "report", str(runs), "--out", str(tmp_path / "r2.md")],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert res.returncode == 0 and "| a | 2 |" in res.stdout and os.path.isfile(tmp_path / "r2.png"), res.stderr
    # a per-agent (PPO, multi-agent view) checkpoint renders too
    res = subprocess.run([os.path.join(BIN, "rllib"), "evaluate", str(runs / "a"), "--video", str(tmp_path / "p.gif"),
                          "--episodes", "1"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    from marlx.render.video import read_video

    assert len(read_video(str(tmp_path / "p.gif"))) == 21  # episode_limit 20 steps + the reset frame
