"""The ``rllib`` command that Ray 2.60 dropped, with its old syntax.

    rllib train file tuned_examples/qmix/push_box.yaml
    rllib train --algo PPO --env builtin/push_box --config '{"lr": 0.0003}' --stop '{"training_iteration": 5}'
    rllib evaluate CHECKPOINT --episodes 10
"""

from __future__ import annotations

import argparse
import sys

from marlx.cli.common import evaluate_and_print, parse_json_arg, prepare_process, run_command, train_experiments


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rllib", description="Train and evaluate RLlib algorithms (marlx's rllib command).")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train from an experiment file or from flags")
    t.add_argument("file_kw", nargs="?", metavar="file", help="the word 'file' followed by a YAML experiment file")
    t.add_argument("path", nargs="?", help="experiment file (tuned_examples/<algo>/<task>.yaml)")
    t.add_argument("--algo", "--run", dest="algo", help="algorithm name (RLlib's, marlx's) or import path")
    t.add_argument("--env", help="environment: marlx registry name or gymnasium id")
    t.add_argument("--config", help="algorithm config as a JSON object (with a file: overrides its entries)")
    t.add_argument("--stop", help="stop criteria as a JSON object, e.g. '{\"training_iteration\": 10}' (with a file: replaces its stop)")
    t.add_argument("--checkpoint-freq", type=int, default=None,
                   help="checkpoint every N iterations, and at the end (default 10; with a file: overrides it)")
    t.add_argument("--name", default=None, help="experiment name (default: <algo>_<env>)")
    t.add_argument("--storage-path", default=None, help="where runs go (default ./runs)")
    t.add_argument("--address", default=None, help="join a Ray cluster: 'auto' or HOST:PORT (default: start Ray here)")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")

    e = sub.add_parser("evaluate", help="run greedy episodes from a checkpoint")
    e.add_argument("checkpoint", help="checkpoint folder (or a run folder: its newest checkpoint is used)")
    e.add_argument("--episodes", type=int, default=10)
    e.add_argument("--algo", "--run", dest="algo", default=None, help="expected algorithm (checked against the checkpoint)")
    e.add_argument("--address", default=None)
    e.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return p


def _train(args) -> int:
    from marlx.cli.experiment import load_experiment_file
    from marlx.errors import MarlxError

    if args.file_kw is not None:
        if args.file_kw != "file" or not args.path:
            raise MarlxError("usage: rllib train file PATH.yaml  or  rllib train --algo X --env Y")
        ignored = [flag for flag, value in (("--algo", args.algo), ("--env", args.env), ("--name", args.name)) if value]
        if ignored:
            raise MarlxError(f"{', '.join(ignored)} cannot be combined with a file: edit run/env/name in {args.path}")
        data = load_experiment_file(args.path)
        source = args.path
        # flags given with a file override every experiment's stop criteria and config entries
        stop, overrides = parse_json_arg(args.stop, "--stop"), parse_json_arg(args.config, "--config")
        for block in data.values():
            if isinstance(block, dict):
                if stop:
                    block["stop"] = stop
                if overrides:
                    block["config"] = {**(block.get("config") or {}), **overrides}
                if args.checkpoint_freq:
                    block["checkpoint_config"] = {**(block.get("checkpoint_config") or {}),
                                                  "checkpoint_frequency": args.checkpoint_freq}
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
    return train_experiments(data, source, args.resume, args.address, args.storage_path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prepare_process()
    if args.command == "train":
        return run_command("rllib", lambda: _train(args))
    return run_command(
        "rllib", lambda: evaluate_and_print(args.checkpoint, args.episodes, args.algo, args.address, args.json)
    )


if __name__ == "__main__":
    sys.exit(main())
