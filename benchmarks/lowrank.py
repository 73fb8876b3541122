"""Dynamic-rank training vs full-rank and fixed low-rank: same model, data and seeds, in one run.

Contestants (all from the same seeds and initialisation code, trained on scikit-learn's digits with a
small CNN; the low-rank ones use the paper's default rank r = floor(0.5 Cout) on every layer where that
saves parameters):
  full        dense training;
  lowrank     fixed low-rank training (no full-rank phase);
  dynamic     the reference schedule scaled to the run ([55, 120] of 150 epochs) with the reference
              deflation (dense W frozen + trainable adapter);
  dynamic_svd one short full-rank phase (10% of the epochs, from 55/150) and SVD deflation (marlx option).

Epochs of all contestants are interleaved round-robin, so machine load (shared CPUs) hits them alike.
Time per epoch excludes evaluation and rank monitoring but includes the cost of a switch. Prints a
table, writes the effective-rank curves to a PNG, and prints one JSON object as its last line.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lowrank.py [--epochs 30] [--seeds 3] [--png benchmarks/lowrank_erank.png]
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from marlx.optim.data import load_digits, small_cnn  # noqa: E402
from marlx.optim.lowrank import LowRankConfig, RankSchedule, TrainerConfig, effective_rank, iter_train  # noqa: E402


def contestants(epochs: int) -> dict[str, LowRankConfig | None]:
    return {
        "full": None,
        "lowrank": LowRankConfig(boundaries=()),
        "dynamic": LowRankConfig(boundaries=RankSchedule.scaled(epochs).boundaries, deflation="adapter"),
        "dynamic_svd": LowRankConfig(boundaries=RankSchedule.short_full_phase(epochs).boundaries, deflation="svd"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--width", type=int, default=32, help="small_cnn width")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--png", default="benchmarks/lowrank_erank.png")
    args = ap.parse_args()
    torch.set_num_threads(1)
    train, test = load_digits()
    model_fn = lambda: small_cnn(1, 10, width=args.width)  # noqa: E731
    configs = contestants(args.epochs)
    results: dict[str, list] = {name: [] for name in configs}
    dense_erank: dict[str, list[float]] = {"3": [], "8": []}  # dense baseline, seed 0, same layers
    for seed in range(args.seeds):
        cfg = TrainerConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=5e-4, seed=seed)
        runs = {name: iter_train(model_fn, train, test, cfg, low) for name, low in configs.items()}
        last = {}
        for _ in range(args.epochs):
            for name, run in runs.items():  # round-robin: one epoch of each contestant in turn
                last[name] = next(run)
                if name == "full" and seed == 0:
                    for layer in dense_erank:
                        dense_erank[layer].append(effective_rank(last[name].model.get_submodule(layer).weight))
        for name in runs:
            for _ in runs[name]:  # close generators (monitor files)
                pass
            results[name].append(last[name])

    ref_low = np.mean([np.mean(r.epoch_seconds) for r in results["lowrank"]])
    ref_acc = np.mean([r.final_accuracy for r in results["full"]])
    rows, figures = [], {}
    for name, runs in results.items():
        sec = np.mean([np.mean(r.epoch_seconds) for r in runs])
        acc = np.array([r.final_accuracy for r in runs])
        full_epochs = sum(f == "full" for f in runs[0].forms)
        figures[name] = {
            "sec_per_epoch": round(float(sec), 4),
            "time_over_lowrank": round(float(sec / ref_low), 3),
            "acc_mean": round(float(acc.mean()), 4),
            "acc_std": round(float(acc.std()), 4),
            "acc_minus_full_points": round(float(100 * (acc.mean() - ref_acc)), 2),
            "full_rank_epochs": full_epochs,
        }
        rows.append((name, sec, sec / ref_low, acc.mean(), acc.std(), 100 * (acc.mean() - ref_acc), full_epochs))

    print(f"\ndigits (1347 train / 450 test), small_cnn width {args.width}, {args.epochs} epochs, {args.seeds} seeds, "
          f"SGD lr {args.lr} cosine, batch {args.batch_size}; 2-core shared CPU, 1 thread")
    print(f"{'contestant':<12} {'s/epoch':>8} {'x lowrank':>9} {'acc':>7} {'+-':>6} {'vs full (pt)':>12} {'full epochs':>11}")
    for name, sec, ratio, acc, std, diff, fe in rows:
        print(f"{name:<12} {sec:8.4f} {ratio:9.3f} {acc:7.4f} {std:6.4f} {diff:12.2f} {fe:11d}")
    for name in ("dynamic", "dynamic_svd"):
        f = figures[name]
        ok = f["acc_minus_full_points"] >= -1.0 and f["time_over_lowrank"] <= 1.15
        print(f"goal (within 1 pt of full, <= 1.15x lowrank time) for {name}: {'met' if ok else 'NOT met'}")

    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        dense = results["full"][0].model
        for ax, layer in [(axes[0], "3"), (axes[1], "8")]:
            m = dense.get_submodule(layer)
            title = f"conv {m.in_channels}->{m.out_channels}" if hasattr(m, "in_channels") else f"linear {m.in_features}->{m.out_features}"
            ax.plot(range(1, args.epochs + 1), dense_erank[layer], label="full (dense W)", color="k")
            for name in ("lowrank", "dynamic", "dynamic_svd"):
                pts = results[name][0].erank.get(f"model/{layer}", [])
                ax.plot([t for t, _ in pts], [v for _, v in pts], label=name)
            ax.set_title(f"effective rank, {title}, seed 0")
            ax.set_xlabel("epoch")
            ax.legend()
        fig.tight_layout()
        fig.savefig(args.png, dpi=100)
        print(f"effective-rank curves: {args.png}")
    erank_end = {name: {k: round(v[-1][1], 2) for k, v in results[name][0].erank.items()}
                 for name in ("lowrank", "dynamic", "dynamic_svd")}
    erank_end["full"] = {f"model/{k}": round(v[-1], 2) for k, v in dense_erank.items()}
    print(json.dumps({"bench": "lowrank", "dataset": "digits", "model": f"small_cnn{args.width}", "epochs": args.epochs,
                      "seeds": args.seeds, **figures, "final_erank_seed0": erank_end}))


if __name__ == "__main__":
    main()
