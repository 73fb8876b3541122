"""Federated learning on Ray, side by side on the same data, partition and seeds.

Real data: scikit-learn's bundled digits (1,347 train / 450 test), Dirichlet(alpha) label skew over the
clients, clients served by a pool of Ray actors. Contestants per seed:

  A  FedAvg vs FedLUAR (delta recycled layers): test accuracy and upload fraction;
  B  EmbracingFL vs FedAvg over strong clients only vs width reduction (HeteroFL-style), tiers
     strong / moderate / weak;
  C  on-device KD (target model) vs FedAvg of the small (25 % width) model alone.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/federated.py --seeds 3

Prints a table and, as its last line, one JSON object with the figures (means over seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from marlx.optim.data import load_digits, mlp  # noqa: E402
from marlx.optim.fl import FederatedTrainer, FLConfig, ScaledModel, make_strategy  # noqa: E402


def contestants(args) -> list[tuple[str, str, str, dict, str]]:
    """(group, label, strategy, options, reported model)."""
    tiers = {"strong": 0.2, "moderate": 0.3, "weak": 0.5}
    rampup = max(1, int(0.75 * args.rounds))  # the paper ramps w(t) up over 300 of 400 rounds
    return [
        ("A", "fedavg", "fedavg", {}, "global"),
        *[("A", f"fedluar_d{d}", "fedluar", {"delta": d}, "global") for d in args.deltas],
        ("B", "embracingfl", "embracingfl", {}, "global"),
        ("B", "strong_only", "fedavg", {"tiers": ("strong",)}, "global"),
        ("B", "width_reduction", "width", {"widths": {"strong": 1.0, "moderate": 0.4, "weak": 0.15}}, "global"),
        ("C", "kd_target", "kd", {"aux_width": 0.25, "rampup_rounds": rampup}, "global"),
        ("C", "fedavg_small", "fedavg", {"width": 0.25}, "global"),
    ], tiers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--per-round", type=int, default=8)
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--alpha", type=float, default=0.3)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--deltas", type=int, nargs="+", default=[3, 4])
    p.add_argument("--workers", type=int, default=0,
                   help="Ray actors serving the clients; 0 (default) runs them in this process, which gives the same "
                   "numbers (tests/optim/test_fl.py checks it) without paying actor start-up per contestant")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.workers > 0:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)

    train, test = load_digits(seed=0)
    model_fn = ScaledModel(mlp, "hidden", args.hidden, (("depth", args.depth),))
    entries, tiers = contestants(args)
    acc: dict[str, list[float]] = {e[1]: [] for e in entries}
    upl: dict[str, list[float]] = {e[1]: [] for e in entries}
    secs: dict[str, float] = {e[1]: 0.0 for e in entries}
    for seed in range(args.seeds):
        for group, label, name, opts, report in entries:
            cfg = FLConfig(num_clients=args.clients, clients_per_round=args.per_round, rounds=args.rounds,
                           local_steps=args.local_steps, lr=args.lr, dirichlet_alpha=args.alpha,
                           tiers=tiers if group != "A" else {"strong": 1.0}, num_workers=args.workers,
                           worker_cpus=1.0, eval_every=args.rounds, seed=seed)
            t0 = time.perf_counter()
            trainer = FederatedTrainer(model_fn, train, test, make_strategy(name, **opts), cfg)
            trainer.fit()
            s = trainer.summary()
            trainer.close()
            secs[label] += time.perf_counter() - t0
            acc[label].append(100 * s[f"accuracy/{report}"])
            upl[label].append(s["uploaded"])
            print(f"seed {seed} {label:16s} acc {acc[label][-1]:6.2f}  uploaded {s['uploaded']:>10d}  "
                  f"{time.perf_counter() - t0:6.1f}s", flush=True)

    mean = {k: float(np.mean(v)) for k, v in acc.items()}
    std = {k: float(np.std(v)) for k, v in acc.items()}
    up_ratio = {k: float(np.mean(np.array(upl[k]) / np.array(upl["fedavg"]))) for k in upl}
    print(f"\nsklearn digits, {args.clients} clients ({args.per_round}/round), Dirichlet alpha {args.alpha}, "
          f"{args.rounds} rounds x {args.local_steps} local steps, MLP {args.depth}x{args.hidden}, "
          f"{args.seeds} seeds, tiers {tiers} (groups B, C)")
    print(f"{'group':5s} {'contestant':16s} {'test acc %':>12s} {'upload / FedAvg':>16s} {'seconds':>8s}")
    for group, label, *_ in entries:
        print(f"{group:5s} {label:16s} {mean[label]:6.2f}+-{std[label]:4.2f} {up_ratio[label]:16.3f} "
              f"{secs[label]:8.1f}")
    figures = {"bench": "federated", "data": "sklearn_digits", "seeds": args.seeds, "rounds": args.rounds,
               "accuracy": {k: round(v, 2) for k, v in mean.items()},
               "accuracy_std": {k: round(v, 2) for k, v in std.items()},
               "upload_over_fedavg": {k: round(v, 4) for k, v in up_ratio.items()}}
    for d in args.deltas:
        figures[f"fedluar_d{d}_acc_gap_points"] = round(mean["fedavg"] - mean[f"fedluar_d{d}"], 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
