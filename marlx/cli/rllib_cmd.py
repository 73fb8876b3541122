"""The ``rllib`` command that Ray 2.60 dropped, with its old syntax.

    rllib train file tuned_examples/qmix/push_box.yaml
    rllib train file tuned_examples/qmix/push_box_search.yaml --scheduler asha --scheduler-config '{"grace_period": 5}'
    rllib train --algo PPO --env builtin/push_box --config '{"lr": 0.0003}' --stop '{"training_iteration": 5}'
    rllib evaluate CHECKPOINT --episodes 10
"""

from __future__ import annotations

import argparse
import sys

from marlx.cli.common import (
    add_evaluate_args, add_train_args, evaluate_command, file_with_overrides, parse_json_arg, prepare_process,
    run_command, train_experiments,
)


def train_command(args: argparse.Namespace) -> int:
    from marlx.cli.experiment import apply_tune_overrides
    from marlx.errors import MarlxError

    if args.file_kw is not None:
        if args.file_kw != "file" or not args.path:
            raise MarlxError("usage: rllib train file PATH.yaml  or  rllib train --algo X --env Y")
        ignored = [flag for flag, value in (("--algo", args.algo), ("--env", args.env), ("--name", args.name)) if value]
        if ignored:
            raise MarlxError(f"{', '.join(ignored)} cannot be combined with a file: edit run/env/name in {args.path}")
        data, source = file_with_overrides(args.path, args), args.path
    else:
        if not args.algo:
            raise MarlxError("rllib train needs 'file PATH.yaml' or --algo (and --env)")
        name = args.name or f"{args.algo}_{(args.env or 'env').replace('/', '_')}"
        block = {
            "run": args.algo,
            "config": parse_json_arg(args.config, "--config"),
            "stop": parse_json_arg(args.stop, "--stop") or {"training_iteration": 10},
            "checkpoint_config": {"checkpoint_frequency": args.checkpoint_freq or 10, "checkpoint_at_end": True},
        }
        if args.env:
            block["env"] = args.env
        data, source = {name: block}, "command line"
    apply_tune_overrides(data, num_samples=args.num_samples, scheduler=args.scheduler,
                         scheduler_config=parse_json_arg(args.scheduler_config, "--scheduler-config"))
    return train_experiments(data, source, args.resume, args.address, args.storage_path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rllib", description="Train and evaluate RLlib algorithms (marlx's rllib command).")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train from an experiment file or from flags")
    t.add_argument("file_kw", nargs="?", metavar="file", help="the word 'file' followed by a YAML experiment file")
    t.add_argument("path", nargs="?", help="experiment file (tuned_examples/<algo>/<task>.yaml)")
    t.add_argument("--algo", "--run", dest="algo", help="algorithm name (RLlib's, marlx's) or import path")
    t.add_argument("--env", help="environment: marlx registry name or gymnasium id")
    t.add_argument("--name", default=None, help="experiment name (default: <algo>_<env>)")
    t.add_argument("--num-samples", type=int, default=None, help="samples per grid point of the search space")
    t.add_argument("--scheduler", default=None, help="Tune trial scheduler: fifo, asha, pbt, ... (the file's tune: "
                                                     "block takes the same as tune.scheduler)")
    t.add_argument("--scheduler-config", default=None, help="the scheduler's options as a JSON object")
    add_train_args(t)
    t.set_defaults(func=train_command)

    e = sub.add_parser("evaluate", help="run greedy episodes from a checkpoint")
    add_evaluate_args(e, algo_flags=("--algo", "--run"))
    e.set_defaults(func=evaluate_command)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prepare_process()
    return run_command("rllib", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
