"""The ``marlx`` command.

    marlx train tuned_examples/qmix/push_box.yaml [--resume] [--stop JSON] [--config JSON] [--address auto]
    marlx envs
    marlx algos
    marlx evaluate CHECKPOINT [--episodes N]
"""

from __future__ import annotations

import argparse
import sys

from marlx.cli.common import (
    add_evaluate_args, add_train_args, evaluate_command, file_with_overrides, prepare_process, run_command,
    train_experiments,
)


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="marlx", description="marlx: multi-agent RL on Ray RLlib.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train the experiments of a YAML file (classic RLlib format)")
    t.add_argument("file", help="experiment file, e.g. tuned_examples/qmix/push_box.yaml")
    add_train_args(t)
    t.set_defaults(func=train_command)

    sub.add_parser("envs", help="list environment names, whether each is installed, and how to install it"
                   ).set_defaults(func=list_envs)
    sub.add_parser("algos", help="list algorithm names").set_defaults(func=list_algos)

    e = sub.add_parser("evaluate", help="run greedy episodes from a checkpoint")
    add_evaluate_args(e)
    e.set_defaults(func=evaluate_command)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prepare_process()
    return run_command("marlx", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
