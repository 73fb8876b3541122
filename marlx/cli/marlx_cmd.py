"""The ``marlx`` command.

    marlx train tuned_examples/qmix/push_box.yaml [--resume] [--address auto]
    marlx envs
    marlx algos
    marlx evaluate CHECKPOINT [--episodes N]
"""

from __future__ import annotations

import argparse
import sys

from marlx.cli.common import evaluate_and_print, prepare_process, run_command, train_experiments


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="marlx", description="marlx: multi-agent RL on Ray RLlib.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the experiments of a YAML file (classic RLlib format)")
    t.add_argument("file", help="experiment file, e.g. tuned_examples/qmix/push_box.yaml")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    t.add_argument("--storage-path", default=None, help="where runs go (default: the file's storage_path or ./runs)")
    t.add_argument("--address", default=None, help="join a Ray cluster: 'auto' or HOST:PORT (default: start Ray here)")

    sub.add_parser("envs", help="list environment names, whether each is installed, and how to install it")
    sub.add_parser("algos", help="list algorithm names")

    e = sub.add_parser("evaluate", help="run greedy episodes from a checkpoint")
    e.add_argument("checkpoint", help="checkpoint folder (or a run folder: its newest checkpoint is used)")
    e.add_argument("--episodes", type=int, default=10)
    e.add_argument("--algo", default=None, help="expected algorithm (checked against the checkpoint)")
    e.add_argument("--address", default=None)
    e.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return p


def list_envs() -> int:
    from marlx.envs.registry import env_names, get_spec

    names = env_names()
    width = max(len(n) for n in names)
    for name in names:
        spec = get_spec(name)
        state = "installed" if spec.installed() else f"not installed: {spec.install}"
        print(f"{name:<{width}}  {state:<14}  {spec.description}" if spec.installed() else f"{name:<{width}}  {state}")
    return 0


def list_algos() -> int:
    from marlx.algorithms import algorithm_names
    from marlx.cli.experiment import rllib_algorithm_names

    print("marlx: " + ", ".join(algorithm_names()))
    print("RLlib: " + ", ".join(rllib_algorithm_names()))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prepare_process()
    if args.command == "train":
        from marlx.cli.experiment import load_experiment_file

        return run_command(
            "marlx",
            lambda: train_experiments(
                load_experiment_file(args.file), args.file, args.resume, args.address, args.storage_path
            ),
        )
    if args.command == "envs":
        return run_command("marlx", list_envs)
    if args.command == "algos":
        return run_command("marlx", list_algos)
    return run_command(
        "marlx", lambda: evaluate_and_print(args.checkpoint, args.episodes, args.algo, args.address, args.json)
    )


if __name__ == "__main__":
    sys.exit(main())
