"""Which result rows hold a fresh greedy evaluation, on a real QMIX run (Ray 2.60, local evaluation runner).

RLlib repeats the last evaluation's results in the iterations between evaluations, and its
``evaluation/env_runners/num_episodes_lifetime`` is not a count that grows per evaluation: in an evaluation iteration
it is the latest merged value (this evaluation's episodes), in the iterations between it is the accumulated total.
A "count grew" rule found one evaluation with ``evaluation_interval: 1`` (the SMAX learning runs' missing curve)
and lagged one iteration behind otherwise; marlx uses RLlib's own rule, ``iteration % evaluation_interval == 0``.
"""

import json

import pytest

from marlx.results.runs import evaluated_at, find_trials


def test_evaluated_at_is_rllibs_rule():
    assert [evaluated_at(i, 3) for i in range(1, 7)] == [False, False, True, False, False, True]
    assert evaluated_at(5, 1) is True and evaluated_at(5, 0) is False and evaluated_at(5, None) is None


def run_qmix(iterations: int, interval: int, episodes: int):
    import marlx.envs.registry  # noqa: F401
    from marlx.algorithms import get_algorithm_class

    cfg = get_algorithm_class("QMIX").get_default_config().update_from_dict(dict(
        num_env_runners=0, num_envs_per_env_runner=2, batch_size_episodes=2, learning_starts_episodes=2,
        evaluation_interval=interval, evaluation_duration=episodes, evaluation_duration_unit="episodes", seed=0))
    cfg.environment("builtin/push_box", env_config={"size": 4})
    algo = cfg.build_algo()
    try:
        rows = []
        for _ in range(iterations):
            r = algo.train()
            ev = r.get("evaluation", {}).get("env_runners", {})
            rows.append({"training_iteration": int(r["training_iteration"]),
                         "num_env_steps_sampled_lifetime": float(r["num_env_steps_sampled_lifetime"]),
                         "evaluation": {"env_runners": {k: float(ev[k]) for k in
                                                        ("num_episodes_lifetime", "episode_return_mean") if k in ev}}})
        return rows
    finally:
        algo.stop()


@pytest.mark.usefixtures("ray_session")
def test_evaluation_rows_of_a_real_run(tmp_path):
    rows = run_qmix(iterations=5, interval=2, episodes=3)
    counts = [r["evaluation"]["env_runners"].get("num_episodes_lifetime") for r in rows]
    # the layer below: not a per-evaluation running count (evaluations at iterations 2 and 4, 3 episodes each)
    assert counts[1] == 3 and counts[3] == 3, counts
    assert counts[0] is None and counts[2] == 3 and counts[4] == 6, counts
    folder = tmp_path / "exp" / "trial_0"
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps({"seed": 0, "evaluation_interval": 2}))
    (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (trial,) = find_trials([str(tmp_path)])
    xs, ys = trial.series("training_iteration", "evaluation/env_runners/episode_return_mean")
    assert xs == [2.0, 4.0]
    assert ys == [rows[1]["evaluation"]["env_runners"]["episode_return_mean"],
                  rows[3]["evaluation"]["env_runners"]["episode_return_mean"]]
    # the same rows through the old count rule (no params): the second evaluation is found one iteration late
    (folder / "params.json").write_text(json.dumps({"seed": 0}))
    (trial,) = find_trials([str(tmp_path)])
    assert trial.series("training_iteration", "evaluation/env_runners/episode_return_mean")[0] == [2.0, 5.0]
