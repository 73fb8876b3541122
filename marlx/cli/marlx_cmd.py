"""The ``marlx`` command.

    marlx train tuned_examples/qmix/push_box.yaml [--resume] [--stop JSON] [--config JSON] [--address auto]
    marlx tune tuned_examples/qmix/push_box_search.yaml [EXPERIMENT ...] [--resume] [--num-samples N] [--summary DIR]
    marlx envs
    marlx algos
    marlx evaluate CHECKPOINT [--episodes N] [--video greedy.mp4 [--fps F] | --trace]
    marlx attack CHECKPOINT --attack wolfpack|random [--budget K] [--episodes 32] [--fit-steps N] [--refit] [--json]
    marlx plot RUN_DIR... [--metric success_rate] [--x env_steps] [--out curves.png]
    marlx report RUN_DIR... [--metric success_rate] [--x env_steps] [--threshold T] [--out report.md]
"""

from __future__ import annotations

import argparse
import os
import sys

from marlx.cli.common import (
    add_attack_args, add_evaluate_args, add_train_args, attack_command, evaluate_command, file_with_overrides,
    prepare_process, run_command,
    train_experiments,
)
from marlx.cli.tune import add_tune_args


def tune_command(args: argparse.Namespace) -> int:
    from marlx.cli.tune import tune_command as run

    return run(args)


def train_command(args: argparse.Namespace) -> int:
    return train_experiments(file_with_overrides(args.file, args), args.file, args.resume, args.address,
                             args.storage_path)


def list_envs(args: argparse.Namespace | None = None) -> int:
    from marlx.envs.registry import env_names, get_spec

    names = env_names()
    width = max(len(n) for n in names)
    for name in names:
        spec = get_spec(name)
        state = "installed" if spec.installed() else f"not installed: {spec.install}"
        print(f"{name:<{width}}  {state:<14}  {spec.description}" if spec.installed() else f"{name:<{width}}  {state}")
    return 0


def list_algos(args: argparse.Namespace | None = None) -> int:
    from marlx.algorithms import algorithm_names
    from marlx.cli.experiment import rllib_algorithm_names

    print("marlx: " + ", ".join(algorithm_names()))
    print("RLlib: " + ", ".join(rllib_algorithm_names()))
    return 0


def plot_command(args: argparse.Namespace) -> int:
    from marlx.results.plot import plot_runs

    res = plot_runs(args.runs, metric=args.metric, x=args.x, out=args.out)
    groups = ", ".join(f"{k} ({v} seed{'s' if v != 1 else ''})" for k, v in res["groups"].items())
    print(f"{res['metric']} against {res['x']}: {groups}\n  plot: {os.path.abspath(res['out'])}")
    return 0


def report_command(args: argparse.Namespace) -> int:
    from marlx.results.report import report_runs

    res = report_runs(args.runs, metric=args.metric, x=args.x, out=args.out, threshold=args.threshold)
    print(res["table"])
    print(f"  report: {os.path.abspath(res['out'])}\n  plot: {os.path.abspath(res['png'])}")
    return 0


def _add_run_args(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (runs/<experiment> or trial folders)")
    p.add_argument("--metric", default="success_rate",
                   help="result key, or a short name looked up under env_runners/ (default success_rate)")
    p.add_argument("--x", default="env_steps", help="x axis: env_steps, iteration, time or a result key")
    p.add_argument("--out", default=out, help=f"output file (default {out})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="marlx", description="marlx: multi-agent RL on Ray RLlib.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train the experiments of a YAML file (classic RLlib format)")
    t.add_argument("file", help="experiment file, e.g. tuned_examples/qmix/push_box.yaml")
    add_train_args(t)
    t.set_defaults(func=train_command)

    tu = sub.add_parser("tune", help="hyper-parameter search: the experiments of a YAML file with search spaces and "
                                     "a tune: block, ending with a results table and the best checkpoint")
    add_tune_args(tu)
    add_train_args(tu)
    tu.set_defaults(func=tune_command)

    sub.add_parser("envs", help="list environment names, whether each is installed, and how to install it"
                   ).set_defaults(func=list_envs)
    sub.add_parser("algos", help="list algorithm names").set_defaults(func=list_algos)

    e = sub.add_parser("evaluate", help="run greedy episodes from a checkpoint")
    add_evaluate_args(e)
    e.set_defaults(func=evaluate_command)

    a = sub.add_parser("attack", help="natural and attacked episodes of a checkpoint side by side (Wolfpack fits "
                                      "its attacker against the frozen policy first, then reuses it)")
    add_attack_args(a)
    a.set_defaults(func=attack_command)

    pl = sub.add_parser("plot", help="learning curves of run folders: seeds as mean with a 95%% band")
    _add_run_args(pl, "curves.png")
    pl.set_defaults(func=plot_command)

    r = sub.add_parser("report", help="multi-seed table: final/best metric with bootstrap CIs, IQM, steps to a "
                                      "threshold, env steps/s (Markdown + PNG)")
    _add_run_args(r, "report.md")
    r.add_argument("--threshold", type=float, default=None,
                   help="metric level for 'steps to threshold' (default 0.5 for success rates)")
    r.set_defaults(func=report_command)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prepare_process()
    return run_command("marlx", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
