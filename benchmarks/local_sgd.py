"""Biased local SGD vs local SGD vs synchronous SGD on simulated heterogeneous Ray workers, side by side.

One fast worker and several slow ones (each local step of a slow worker takes ``--slowdown`` times its
compute time), the same model (small BatchNorm CNN), data (scikit-learn digits) and seeds for every
contestant. Each run trains ``--passes`` passes over the data; the clock counts training rounds only
(start-up, throughput measurement and test evaluation are excluded). Reported per contestant: training
seconds until the test accuracy first reaches ``--target`` (median over seeds; a seed that never reaches it
counts as +inf), the final accuracy, and the ratio of synchronous SGD's time to target over each method's.

    .venv/bin/python benchmarks/local_sgd.py --seeds 0 1 2

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from marlx.optim.data import load_digits, small_cnn  # noqa: E402
from marlx.optim.local_sgd import LocalSGDConfig, LocalSGDTrainer, WorkerSpec, steps_from_throughput  # noqa: E402

MODES = ("sync", "local", "biased")


def time_to_target(history: list[dict], target: float) -> float:
    for h in history:
        if h["accuracy"] >= target:
            return h["seconds"]
    return float("inf")


def run_one(mode: str, seed: int, args, train, test) -> dict:
    workers = [WorkerSpec(num_cpus=0.25, slowdown=1.0, name="fast")]
    workers += [WorkerSpec(num_cpus=0.25, slowdown=args.slowdown, name=f"slow{i}") for i in range(args.slow_workers)]
    cfg = LocalSGDConfig(
        mode=mode,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_milestones=tuple(args.lr_milestones),
        max_local_steps=args.max_local_steps,
        local_steps=None if mode == "sync" else tuple(args.steps[seed]),
        probe_steps=10,
        seed=seed,
    )
    trainer = LocalSGDTrainer(lambda: small_cnn(width=args.width), train, workers, cfg, test=test)
    try:
        history = trainer.fit(passes=args.passes, eval_every=args.eval_every)
    finally:
        trainer.shutdown()
    return {
        "mode": mode,
        "seed": seed,
        "steps": trainer.steps,
        "throughput": trainer.throughput,
        "rounds": trainer.rounds,
        "seconds": history[-1]["seconds"],
        "time_to_target": time_to_target(history, args.target),
        "final_accuracy": history[-1]["accuracy"],
        "failures": len(trainer.failures),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--slow-workers", type=int, default=3)
    p.add_argument("--slowdown", type=float, default=16.0)
    p.add_argument("--max-local-steps", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--passes", type=float, default=10)
    p.add_argument("--lr-milestones", type=int, nargs="*", default=[6, 8], help="passes after which lr drops 10x (the code's 60/80 of 100 epochs)")
    p.add_argument("--eval-every", type=int, default=1)
    p.add_argument("--target", type=float, default=0.93)
    args = p.parse_args()

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    train, test = load_digits(seed=0)
    results = []
    args.steps = {}
    for seed in args.seeds:
        for mode in MODES:
            t0 = time.time()
            r = run_one(mode, seed, args, train, test)
            results.append(r)
            if mode == "sync":  # sync runs first: its measured throughputs set both local methods' step counts
                args.steps[seed] = steps_from_throughput(r["throughput"], args.max_local_steps)
            print(f"seed {seed} {mode:6s} steps {r['steps']} rounds {r['rounds']:4d} train {r['seconds']:6.1f}s "
                  f"to-target {r['time_to_target']:6.1f}s final acc {r['final_accuracy']:.4f} (wall {time.time() - t0:.0f}s)", flush=True)
    ray.shutdown()

    summary = {}
    for mode in MODES:
        rs = [r for r in results if r["mode"] == mode]
        summary[mode] = {
            "time_to_target_median_s": float(np.median([r["time_to_target"] for r in rs])),
            "reached_target": int(sum(np.isfinite(r["time_to_target"]) for r in rs)),
            "final_accuracy_mean": float(np.mean([r["final_accuracy"] for r in rs])),
            "train_seconds_mean": float(np.mean([r["seconds"] for r in rs])),
        }
    sync_t = summary["sync"]["time_to_target_median_s"]
    print()
    print(f"{'method':8s} {'time to ' + str(args.target) + ' (median s)':>26s} {'reached':>8s} {'sync/method':>12s} {'final acc':>10s} {'train s':>8s}")
    for mode in MODES:
        s = summary[mode]
        s["speedup_vs_sync"] = sync_t / s["time_to_target_median_s"] if np.isfinite(s["time_to_target_median_s"]) else 0.0
        s["final_accuracy_minus_sync_points"] = 100 * (s["final_accuracy_mean"] - summary["sync"]["final_accuracy_mean"])
        print(f"{mode:8s} {s['time_to_target_median_s']:26.2f} {s['reached_target']:>5d}/{len(args.seeds)} "
              f"{s['speedup_vs_sync']:12.2f} {s['final_accuracy_mean']:10.4f} {s['train_seconds_mean']:8.1f}")
    out = {
        "bench": "local_sgd",
        "data": "sklearn digits",
        "model": f"small_cnn(width={args.width})",
        "workers": f"1 fast + {args.slow_workers} slow (slowdown {args.slowdown:g})",
        "seeds": args.seeds,
        "passes": args.passes,
        "lr_milestones": args.lr_milestones,
        "target_accuracy": args.target,
        "biased_speedup_vs_sync": summary["biased"]["speedup_vs_sync"],
        "local_speedup_vs_sync": summary["local"]["speedup_vs_sync"],
        "biased_final_acc_minus_sync_points": summary["biased"]["final_accuracy_minus_sync_points"],
        "local_final_acc_minus_sync_points": summary["local"]["final_accuracy_minus_sync_points"],
        "per_method": summary,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
