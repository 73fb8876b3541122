"""Sparse-reward exploration side by side: QMIX vs FoX vs FIM on the same tasks, seeds and env-step budget.

Each method runs its tuned example (``tuned_examples/<algo>/push_box.yaml``: the same QMIX schedule, PyMARL2
settings) on each task below with the task's ``env_config`` replacing the file's, so every contestant sees the same
env; seeds run side by side as Ray tasks (``benchmarks/learning.py``'s ``compare``). Per method and task it prints
env steps to greedy success ``--threshold`` (default 0.8), final and best greedy success, wall-clock seconds per
1,000 env steps (all contestants share the machine, so that figure includes waiting for the cores), and the distinct
formations (FoX's keys, 1 decimal) each seed's training episodes visited.

Tasks (issue 14): (a) ``paper_like``: push_box paper-like mode, 5x5, two boxes, one pusher moves a box with
probability 0.25 and two always, 30-step limit; (b) ``strict_5x5``: strict push_box 5x5, the box two rows from the
goal edge, 30-step limit (both QMIX and FoX failed it in 80k steps on the old runner).

    python benchmarks/exploration.py --seeds 3 --max-env-steps 40000
    python benchmarks/exploration.py --tasks paper_like --algos fim,qmix --seeds 3

The last line printed is one JSON object; CSV and PNG per task go under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from learning import ROOT, compare  # noqa: E402

TASKS = {
    "paper_like": {"size": 5, "mode": "paper_like", "episode_limit": 30},
    "strict_5x5": {"size": 5, "box_start_row": 2, "episode_limit": 30},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--algos", default="qmix,fox,fim", help="comma-separated; each runs tuned_examples/<algo>/push_box.yaml")
    p.add_argument("--tasks", default="paper_like,strict_5x5", help=f"comma-separated, from {sorted(TASKS)}")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--max-env-steps", type=int, default=80_000, help="the same env-step budget for every contestant")
    p.add_argument("--threshold", type=float, default=0.8)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "exploration"))
    args = p.parse_args()
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        p.error(f"unknown task(s) {unknown}: choose from {sorted(TASKS)}")

    report = {"bench": "exploration", "algos": algos, "seeds": args.seeds, "max_env_steps": args.max_env_steps,
              "threshold": args.threshold, "tasks": {}}
    for task in tasks:
        run = compare(algos, "builtin/push_box", TASKS[task], args.seeds, args.max_env_steps, args.threshold,
                      os.path.join(args.out, task))
        print(f"\n== {task} {TASKS[task]}: random play success {run['random_success']:.3f}")
        print(f"{'algo':>6} {'solved':>6} {'steps_to_' + str(args.threshold):>22} {'final':>16} {'best':>16} "
              f"{'wall_s/1k_steps':>15} {'formations':>18}")
        rows = {}
        for algo, sm in run["summary"].items():
            solved = sum(s is not None for s in sm["steps_to_threshold"])
            per_k = [round(1000 * w / max(n, 1), 2) for w, n in zip(sm["wall_s"], sm["env_steps"])]
            rows[algo] = {**sm, "seeds_solved": solved, "wall_s_per_1k_steps": per_k}
            print(f"{algo:>6} {solved:>3}/{args.seeds:<2} {str(sm['steps_to_threshold']):>22} "
                  f"{str([round(x, 2) for x in sm['final_eval_success']]):>16} "
                  f"{str([round(x, 2) for x in sm['best_eval_success']]):>16} {str(per_k):>15} "
                  f"{str(sm['distinct_formations']):>18}")
        report["tasks"][task] = {"env_config": TASKS[task], "random_success": run["random_success"],
                                 "csv": os.path.relpath(os.path.join(args.out, task, run["stem"] + ".csv"), ROOT),
                                 "results": rows}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
