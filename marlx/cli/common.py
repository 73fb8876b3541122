"""What the ``rllib`` and ``marlx`` commands share: start-up, error reporting, train and evaluate."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from typing import Callable


def prepare_process() -> None:
    """One thread per process: with 2 threads under load RLlib iterations slow down 5-10x."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    # gymnasium's env checker warns about envs of RLlib's registry that marlx never runs
    warnings.filterwarnings("ignore", category=UserWarning, module=r"gymnasium\..*")
    # "You are running PPO on the new API stack!" on every config validation: noise for a CLI user
    logging.getLogger("ray.rllib.algorithms.algorithm_config").setLevel(logging.ERROR)
    from marlx._rllib import quiet_ray_lines

    quiet_ray_lines()
    import torch

    torch.set_num_threads(1)


def run_command(prog: str, func: Callable[[], int | None]) -> int:
    """Run a command; a MarlxError becomes one line on stderr and exit code 2."""
    from marlx.cli.runner import Interrupted
    from marlx.errors import MarlxError

    try:
        return int(func() or 0)
    except Interrupted as e:  # a deliberate stop, not an error
        print(f"{prog}: {e}", file=sys.stderr)
        return e.exit_code
    except MarlxError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; `marlx train FILE --resume` continues from the last checkpoint", file=sys.stderr)
        return 130


def parse_json_arg(value: str | None, flag: str) -> dict:
    from marlx.errors import MarlxError

    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise MarlxError(f"{flag} must be a JSON object, e.g. {flag} '{{\"lr\": 0.001}}': {e}") from None
    if not isinstance(parsed, dict):
        raise MarlxError(f"{flag} must be a JSON object, got {type(parsed).__name__}")
    return parsed


def add_train_args(p: argparse.ArgumentParser) -> None:
    """The training flags that ``marlx train`` and ``rllib train`` share (with a file they override its entries)."""
    p.add_argument("--config", help="algorithm config as a JSON object (with a file: overrides its entries)")
    p.add_argument("--stop", help="stop criteria as a JSON object, e.g. '{\"training_iteration\": 10}' "
                                  "(with a file: replaces its stop)")
    p.add_argument("--checkpoint-freq", type=int, default=None,
                   help="checkpoint every N iterations, and at the end (default 10; with a file: overrides it)")
    p.add_argument("--storage-path", default=None, help="where runs go (default: the file's storage_path or ./runs)")
    p.add_argument("--address", default=None, help="join a Ray cluster: 'auto' or HOST:PORT (default: start Ray here)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")


def add_evaluate_args(p: argparse.ArgumentParser, algo_flags: tuple[str, ...] = ("--algo",)) -> None:
    p.add_argument("checkpoint", help="checkpoint folder (or a run folder: its newest checkpoint is used)")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument(*algo_flags, dest="algo", default=None, help="expected algorithm (checked against the checkpoint)")
    p.add_argument("--address", default=None)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--attack", default="none",
                   help="also play as many episodes under an attack: none (default), random (ROMANCE's), wolfpack")
    p.add_argument("--budget", type=int, default=None,
                   help="attacked time steps per episode (default: wolfpack 8, random 6)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the envs and the attack (default: the run's); with --video, episode k starts from "
                        "reset(seed=SEED+k) (default SEED 0)")
    add_attacker_args(p)
    p.add_argument("--video", default=None, metavar="PATH",
                   help="render the greedy episodes to PATH (.mp4 or .gif) instead: they are played in this process, "
                        "the numbers printed are theirs")
    p.add_argument("--fps", type=float, default=4.0, help="frames per second of --video (default 4)")
    p.add_argument("--trace", action="store_true",
                   help="print every step of the greedy episodes instead (played in this process, no Ray): each "
                        "agent's action by name, the reward and the return, and how each episode ended "
                        "(with --json: one JSON object)")


def add_attacker_args(p: argparse.ArgumentParser) -> None:
    """Flags of Wolfpack's attacker fit (``marlx attack`` and ``evaluate --attack wolfpack``)."""
    p.add_argument("--fit-steps", type=int, default=None, metavar="N",
                   help="wolfpack on a policy not trained with WALL: env steps of the attacker fit against the "
                        "frozen policy (default 20000; a saved attacker is reused unless N differs)")
    p.add_argument("--refit", action="store_true",
                   help="fit the Wolfpack attacker again instead of reusing the saved one (on a WALL checkpoint: "
                        "fit one instead of using the checkpoint's own)")
    p.add_argument("--attacker-dir", default=None, metavar="DIR",
                   help="where the fitted attacker and the results go (default: CHECKPOINT_attack beside the "
                        "checkpoint)")


def add_attack_args(p: argparse.ArgumentParser) -> None:
    """``marlx attack CHECKPOINT --attack wolfpack|random [--budget K] [--episodes 32] [--fit-steps N] ...``."""
    p.add_argument("checkpoint", help="checkpoint folder (or a run folder: its newest checkpoint is used)")
    p.add_argument("--attack", required=True, help="wolfpack (value-based checkpoints) or random (any team "
                                                   "checkpoint; ROMANCE's, 10%% per agent and step)")
    p.add_argument("--budget", type=int, default=None,
                   help="attacked time steps per episode (default: wolfpack 8, WALL's test budget; random 6)")
    p.add_argument("--episodes", type=int, default=32, help="natural and attacked episodes each (default 32)")
    add_attacker_args(p)
    p.add_argument("--seed", type=int, default=None, help="seed of the envs, the attack and the attacker fit "
                                                          "(default: the run's)")
    p.add_argument("--algo", default=None, help="expected algorithm (checked against the checkpoint)")
    p.add_argument("--address", default=None)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def attack_command(args: argparse.Namespace) -> int:
    from marlx.errors import MarlxError

    if args.attack in (None, "none"):
        raise MarlxError("marlx attack needs --attack wolfpack or --attack random (marlx evaluate plays natural "
                         "episodes only)")
    return evaluate_and_print(args.checkpoint, args.episodes, args.algo, args.address, args.json,
                              attack=args.attack, budget=args.budget, seed=args.seed, fit_steps=args.fit_steps,
                              refit=args.refit, out=args.attacker_dir)


def file_with_overrides(path: str, args: argparse.Namespace) -> dict:
    """An experiment file with the --stop/--config/--checkpoint-freq flags of ``args`` applied."""
    from marlx.cli.experiment import apply_overrides, load_experiment_file

    return apply_overrides(
        load_experiment_file(path),
        stop=parse_json_arg(args.stop, "--stop"),
        config=parse_json_arg(args.config, "--config"),
        checkpoint_freq=args.checkpoint_freq,
    )


def evaluate_command(args: argparse.Namespace) -> int:
    if args.video and getattr(args, "trace", False):
        from marlx.errors import MarlxError

        raise MarlxError("--video and --trace each play their own episodes: pass one of them")
    if args.video:
        return video_and_print(args)
    if getattr(args, "trace", False):
        return trace_and_print(args)
    return evaluate_and_print(args.checkpoint, args.episodes, args.algo, args.address, args.json,
                              attack=args.attack, budget=args.budget, seed=args.seed, fit_steps=args.fit_steps,
                              refit=args.refit, out=args.attacker_dir)


def check_played_episodes_args(args: argparse.Namespace) -> None:
    """The flags ``evaluate --video`` and ``--trace`` share (episodes, budget, the checkpoint's files), each a
    one-line error."""
    from marlx.cli.evaluate import check_checkpoint_files, find_checkpoint
    from marlx.errors import MarlxError

    if args.episodes < 1:
        raise MarlxError(f"--episodes must be >= 1, got {args.episodes}")
    if args.budget is not None and args.budget < 0:
        raise MarlxError(f"--budget must be >= 0 attacked steps per episode, got {args.budget}")
    check_checkpoint_files(find_checkpoint(args.checkpoint))


def trace_and_print(args: argparse.Namespace) -> int:
    """``evaluate --trace``: greedy episodes played here (no Ray), printed step by step."""
    from marlx.render.play import format_trace, trace_episodes

    check_played_episodes_args(args)
    res = trace_episodes(args.checkpoint, episodes=args.episodes, seed=args.seed or 0, algo=args.algo,
                         attack=args.attack, budget=args.budget)
    print(json.dumps(res) if args.json else format_trace(res))
    return 0


def video_and_print(args: argparse.Namespace) -> int:
    """``evaluate --video``: greedy episodes played and rendered in this process (no Ray), one video file."""
    from marlx.errors import MarlxError
    from marlx.render.play import record_video
    from marlx.render.video import check_video_path

    if args.fps <= 0:
        raise MarlxError(f"--fps must be > 0, got {args.fps}")
    check_video_path(args.video)
    check_played_episodes_args(args)
    res = record_video(args.checkpoint, args.video, episodes=args.episodes, fps=args.fps, seed=args.seed or 0,
                       algo=args.algo, attack=args.attack, budget=args.budget)
    print_evaluation(res, args.json)
    out = sys.stderr if args.json else sys.stdout
    if "attack" in res:
        opts = ", ".join(f"{k} {v}" for k, v in res["attack"].items() if k != "name")
        print(f"  attacked by {res['attack']['name']} ({opts}): {res['attacked_steps_mean']:.2f} attacked steps per "
              f"episode, marked red in the frames", file=out)
    print(f"  video: {res['video']} ({res['frames']} frames)", file=out)
    return 0


def print_evaluation(res: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(res))
    elif "attacked" in res:
        nat, att = res["natural"], res["attacked"]
        print(f"{res['algorithm']} on {res['env']}: {res['episodes']} greedy episodes each, attack "
              f"{res['attack']['name']} (budget {res['budget']} steps)\n"
              f"  {'':9} {'return':>8} {'success':>8} {'length':>7} {'attacked steps (mean/max)':>26}\n"
              f"  {'natural':9} {nat['return_mean']:8.3f} {nat['success_rate']:8.2f} {nat['length_mean']:7.1f}\n"
              f"  {'attacked':9} {att['return_mean']:8.3f} {att['success_rate']:8.2f} {att['length_mean']:7.1f} "
              f"{att['attacked_steps_mean']:19.2f}/{att['attacked_steps_max']}\n"
              f"  hits per agent and episode: {att['hits_per_agent']}\n  checkpoint: {res['checkpoint']}")
        if "attacker" in res:
            a = res["attacker"]
            where = ("the checkpoint's own Q-difference transformer (trained with WALL)" if a["source"] == "checkpoint"
                     else f"{a['source']} against the frozen policy ({a.get('fit_steps')} env steps): {a['path']}")
            print(f"  attacker: {where}")
        if "results_file" in res:
            print(f"  results: {res['results_file']}")
    else:
        print(
            f"{res['algorithm']} on {res['env']}: {res['episodes']} greedy episodes | return {res['return_mean']:.3f} "
            f"| success {res['success_rate']:.2f} | length {res['length_mean']:.1f}\n  checkpoint: {res['checkpoint']}"
        )


def train_experiments(data: dict, source: str, resume: bool, address: str | None, storage_path: str | None,
                      force: bool = False) -> int:
    """Validate every experiment first (no Ray started on bad input), then run them in order.

    Exit code: 0, or 3 when a search had errored trials (the others still run)."""
    from marlx.cli.experiment import parse_experiments
    from marlx.cli.runner import check_resumable, init_ray, run_experiment
    from marlx.cli.tune import summarize

    experiments = parse_experiments(data, source=source, storage_path=storage_path)
    if resume:
        for exp in experiments:
            check_resumable(exp)
    init_ray(address)
    code = 0
    for exp in experiments:
        results = run_experiment(exp, resume=resume, force=force)
        if exp.is_search:
            code = max(code, summarize(results, exp))
    return code


def evaluate_and_print(checkpoint: str, episodes: int, algo: str | None, address: str | None, as_json: bool,
                       attack: str | None = None, budget: int | None = None, seed: int | None = None,
                       fit_steps: int | None = None, refit: bool = False, out: str | None = None) -> int:
    from marlx.cli.evaluate import (
        attack_spec, check_checkpoint_files, checkpoint_algorithm, evaluate_checkpoint, find_checkpoint,
    )
    from marlx.cli.runner import init_ray

    from marlx.errors import MarlxError

    if episodes < 1:
        raise MarlxError(f"--episodes must be >= 1, got {episodes}")
    if fit_steps is not None and fit_steps < 1:
        raise MarlxError(f"--fit-steps must be >= 1 env steps, got {fit_steps}")
    found = find_checkpoint(checkpoint)  # fail on a bad path, a damaged checkpoint, attack or budget before Ray starts
    check_checkpoint_files(found)
    attack_spec(attack, budget, checkpoint_algorithm(found)[0], fitted_planner=True)
    init_ray(address)
    res = evaluate_checkpoint(checkpoint, episodes=episodes, algo=algo, attack=attack, budget=budget, seed=seed,
                              fit_steps=fit_steps, refit=refit, out=out)
    print_evaluation(res, as_json)
    return 0
