"""Real Ray Tune searches on builtin/push_box with tiny budgets: ASHA over a 2x2 grid, interrupt and resume, the
results table and best checkpoint, and a PBT exploit whose learner really uses the mutated learning rate."""

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MARLX = os.path.join(os.path.dirname(sys.executable), "marlx")
#: PPO's learner logs the learning rate its optimizer used in the last update (module "shared" on marlx envs).
LEARNER_LR = "learners/shared/default_optimizer_learning_rate"

TINY_PPO = {
    "env_config": {"size": 4, "box_start_row": 1, "episode_limit": 10},
    "num_env_runners": 0,
    "train_batch_size": 100,
    "minibatch_size": 50,
    "num_epochs": 1,
    "seed": 0,
}


def result_rows(trial_dir):
    with open(os.path.join(trial_dir, "result.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def trial_dirs(exp_dir):
    return sorted(os.path.dirname(p) for p in glob.glob(os.path.join(exp_dir, "*", "params.json")))


@pytest.mark.slow
def test_asha_grid_interrupt_resume_table_and_best_checkpoint(tmp_path, ray_session, capsys):
    runs = tmp_path / "runs"
    f = tmp_path / "search.yaml"
    # the metric is the learner's own lr, so the ranking is known: lr 0.003 first; gamma only makes the 2x2 grid
    f.write_text(yaml.safe_dump({"grid": {
        "run": "PPO", "env": "builtin/push_box", "stop": {"training_iteration": 2},
        "checkpoint_config": {"checkpoint_frequency": 1, "checkpoint_at_end": True},
        "config": {**TINY_PPO, "lr": {"grid_search": [0.0003, 0.003]}, "gamma": {"grid_search": [0.9, 0.99]}},
        "tune": {"metric": LEARNER_LR, "scheduler": {"type": "asha", "grace_period": 1, "max_t": 2},
                 "max_concurrent_trials": 1},
    }}))
    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_DEDUP_LOGS="0")
    cmd = [MARLX, "tune", str(f), "--storage-path", str(runs)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    exp_dir = str(runs / "grid")
    deadline = time.time() + 400
    while time.time() < deadline and len(trial_dirs(exp_dir)) < 2:  # the second trial starts: the first is done
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    first_out = proc.communicate(timeout=180)[0]
    assert len(trial_dirs(exp_dir)) < 4, first_out[-3000:]
    done = [d for d in trial_dirs(exp_dir) if os.path.isfile(os.path.join(d, "result.json"))
            and any(r.get("done") for r in result_rows(d))]
    assert done, first_out[-3000:]
    done_id = result_rows(done[0])[0]["trial_id"]
    # the metric alias is in every result from iteration 1 on
    assert all("success_rate" in r["marlx"] for d in done for r in result_rows(d))

    res = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    out = res.stdout
    assert res.returncode == 0, out[-3000:] + res.stderr[-3000:]
    assert "resuming grid" in out and f"[{done_id}] iter" not in out  # the finished trial did not rerun
    resumed = {line.split("]")[0][1:] for line in out.splitlines() if line.startswith("[") and "] iter " in line}
    assert resumed and all(f"[{t}] trial ended at iteration 2" in out for t in resumed), out[-3000:]

    table = out[out.index("grid: 4 trials"):].splitlines()
    assert table[0].startswith("grid: 4 trials (") and f"metric {LEARNER_LR} (max, last)" in table[0]
    head = table[1].split()
    assert head == ["rank", "trial", "gamma", "lr", "status", "iters", "env_steps", "metric", "best", "time_s"], table
    rows = [line.split() for line in table[2:6]]
    assert [r[0] for r in rows] == ["1", "2", "3", "4"]
    assert [float(r[3]) for r in rows] == [0.003, 0.003, 0.0003, 0.0003]  # lr column, sorted by the metric
    assert [float(r[7]) for r in rows] == [0.003, 0.003, 0.0003, 0.0003]  # the metric column itself
    with open(os.path.join(exp_dir, "marlx_tune_summary.csv")) as fh:
        csv_rows = list(csv.DictReader(fh))
    assert len(csv_rows) == 4 and [float(r["metric"]) for r in csv_rows] == pytest.approx([0.003, 0.003, 3e-4, 3e-4])
    assert {r["gamma"] for r in csv_rows} == {"0.9", "0.99"}
    best = json.load(open(os.path.join(exp_dir, "marlx_tune_best.json")))
    assert best["config"]["lr"] == 0.003 and best["value"] == pytest.approx(0.003) and best["metric"] == LEARNER_LR
    assert os.path.isfile(os.path.join(best["checkpoint"], "rllib_checkpoint.json"))
    assert f"evaluate: marlx evaluate {best['checkpoint']} --episodes 32" in out

    from marlx.cli.evaluate import evaluate_checkpoint
    from marlx.cli.runner import init_ray

    init_ray()  # the env names into this process's Tune registry
    ev = evaluate_checkpoint(best["checkpoint"], episodes=2)
    assert ev["algorithm"] == "PPO" and ev["episodes"] == 2

    # --summary prints the same table from the folder without training
    from marlx.cli import marlx_cmd

    capsys.readouterr()
    assert marlx_cmd.main(["tune", "--summary", exp_dir]) == 0
    summary_lines = capsys.readouterr().out.splitlines()
    assert summary_lines[0] == table[0] and [line.split()[3] for line in summary_lines[2:6]] == [r[3] for r in rows]


@pytest.mark.slow
def test_pbt_exploit_uses_the_mutated_learning_rate(tmp_path, ray_session):
    from marlx.cli.experiment import parse_experiments
    from marlx.cli.runner import run_experiment
    from marlx.cli.tune import summarize

    (exp,) = parse_experiments({"pbt": {
        "run": "PPO", "env": "builtin/push_box", "stop": {"training_iteration": 4},
        "checkpoint_config": {"checkpoint_frequency": 2, "checkpoint_at_end": True},
        "config": {**TINY_PPO, "lr": {"grid_search": [1e-4, 1e-2]}},
        "tune": {"metric": LEARNER_LR, "max_concurrent_trials": 2,
                 "scheduler": {"type": "pbt", "perturbation_interval": 2, "synch": True, "quantile_fraction": 0.5,
                               "resample_probability": 0.0, "hyperparam_mutations": {"lr": {"loguniform": [1e-5, 1e-1]}}}},
    }}, storage_path=str(tmp_path / "runs"))
    results = run_experiment(exp, verbose=False)
    assert summarize(results, exp, out=lambda line: None) == 0
    exp_dir = str(tmp_path / "runs" / "pbt")
    with open(os.path.join(exp_dir, "pbt_global.txt")) as fh:
        exploits = [json.loads(line) for line in fh if line.strip()]
    assert exploits, "PBT never exploited"
    exploited = {e[1] for e in exploits}  # [donor, exploited, ...] (Ray 2.60's pbt_global.txt rows)
    checked = 0
    seen = {}
    for d in trial_dirs(exp_dir):
        rows = result_rows(d)
        seen[os.path.basename(d)] = [(r["training_iteration"], r["config"]["lr"]) for r in rows]
        for row in rows:
            assert row[LEARNER_LR.split("/")[0]]["shared"]["default_optimizer_learning_rate"] == pytest.approx(
                row["config"]["lr"]), (d, row["training_iteration"])
            checked += 1
        if rows[0]["trial_id"] in exploited:
            # exploited at iteration 2: from then on its config (and learner) lr is the donor's, mutated by 0.8/1.2
            lrs = [r["config"]["lr"] for r in rows]
            assert lrs[0] == pytest.approx(1e-4) and lrs[-1] != pytest.approx(1e-4), lrs
    assert checked >= 8, (seen, [e[:4] for e in exploits])
