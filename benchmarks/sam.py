"""SGD vs SAM vs layer-wise SAM vs asynchronous SAM: time per step and test accuracy, side by side in one run.

Same model (marlx.optim.data.small_cnn) and data (scikit-learn digits), several seeds, contestants interleaved
per seed so that load on a shared machine hits them alike. Ratios are to SGD. Asynchronous SAM's
perturbation worker is a Ray actor on its own CPU.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sam.py [--seeds 3] [--epochs 12] [--backend ray|thread]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from marlx.optim.data import load_digits, small_cnn  # noqa: E402
from marlx.optim.sam.trainer import SAMTrainer  # noqa: E402

# contestant -> (trainer method, extra SAMConfig options)
CONTESTANTS = {
    "sgd": ("sgd", {}),
    "sam": ("sam", {}),
    "layerwise": ("layerwise", {}),  # the paper's choice: layers with the largest gradient norm
    "layerwise_output": ("layerwise", {"selection": "output"}),  # marlx option: the last k layers
    # the paper's selection, perturbed pass every 3rd step, LookSAM reuse in between (marlx option)
    "layerwise_reuse3": ("layerwise", {"perturb_every": 3}),
    "async": ("async", {}),
}
METHODS = tuple(CONTESTANTS)


def make_trainer(name, train, test, args, **kw):
    method, extra = CONTESTANTS[name]
    return SAMTrainer(model_fn(args.width), train, test, method=method, batch_size=args.batch_size, lr=args.lr,
                      sam={"rho": args.rho, "layers": args.layers, **extra}, worker_backend=args.backend,
                      device=args.device, **kw)


def model_fn(width: int):
    return lambda: small_cnn(in_channels=1, num_classes=10, width=width)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--rho", type=float, default=0.05)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--backend", choices=("ray", "thread"), default="ray", help="async SAM's perturbation worker")
    ap.add_argument("--device", default="cpu", help="device of the main step (the perturbation stays on the CPU)")
    ap.add_argument("--rounds", type=int, default=15, help="timing rounds (interleaved blocks)")
    ap.add_argument("--block", type=int, default=10, help="steps per timing block")
    args = ap.parse_args()
    torch.set_num_threads(1)

    if args.backend == "ray":
        import ray

        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    train, test = load_digits(seed=0)
    wall, cpu, thread = timing(train, test, args)
    runs: dict[str, list[dict]] = {m: [] for m in METHODS}
    for seed in range(args.seeds):
        for method in METHODS:
            trainer = make_trainer(method, train, test, args, epochs=args.epochs, seed=seed)
            try:
                r = trainer.fit()
            finally:
                trainer.close()
            runs[method].append(r)
            extra = f" perturb_batch={r['perturb_batch']}" if "perturb_batch" in r else ""
            print(f"seed {seed} {method:16s} test acc {r['test_accuracy']:.4f}{extra}", flush=True)
    if args.backend == "ray":
        ray.shutdown()

    rows, figures = [], {}
    for m in METHODS:
        accs = [r["test_accuracy"] for r in runs[m]]
        gnorm = statistics.mean(r["train_grad_norm"] for r in runs[m])
        rows.append((m, 1000 * statistics.median(b[m] for b in wall) / args.block, ratio(wall, m),
                     ratio(cpu, m), ratio(thread, m), statistics.mean(accs), statistics.pstdev(accs), gnorm))
        figures[f"{m}_time_ratio"] = round(ratio(wall, m), 3)
        figures[f"{m}_main_cpu_ratio"] = round(ratio(cpu, m), 3)
        figures[f"{m}_main_thread_cpu_ratio"] = round(ratio(thread, m), 3)
        figures[f"{m}_test_acc"] = round(statistics.mean(accs), 4)
        figures[f"{m}_train_grad_norm"] = round(gnorm, 5)
    print()
    print(f"{'method':16s} {'ms/step':>8s} {'time/SGD':>9s} {'cpu/SGD':>8s} {'thr/SGD':>8s} {'test acc':>9s} "
          f"{'± sd':>7s} {'|grad|':>8s}")
    for m, ms, r, c, t, acc, sd, gn in rows:
        print(f"{m:16s} {ms:8.2f} {r:9.2f} {c:8.2f} {t:8.2f} {acc:9.4f} {sd:7.4f} {gn:8.4f}")
    print("time/SGD: median over rounds of wall-time ratios of interleaved blocks; cpu/SGD: main process CPU time "
          "(all its threads); thr/SGD: the main thread's own CPU time (an async step's cost when its perturbation "
          "worker has a core of its own); |grad|: full training-set gradient norm at the end, mean over seeds")
    print()
    print(f"goals: layerwise <= 1.30x SGD time: {figures['layerwise_time_ratio']:.2f}x "
          f"(output-side selection {figures['layerwise_output_time_ratio']:.2f}x, "
          f"perturbed pass every 3rd step {figures['layerwise_reuse3_time_ratio']:.2f}x); "
          f"async <= 1.15x (needs a spare core): {figures['async_time_ratio']:.2f}x")
    print(json.dumps({"bench": "sam", "model": f"small_cnn(width={args.width})", "data": "sklearn digits",
                      "backend": args.backend, "device": args.device,
                      "seeds": args.seeds, "epochs": args.epochs, "batch_size": args.batch_size, **figures}))


def ratio(blocks: list[dict], m: str) -> float:
    return statistics.median(b[m] / b["sgd"] for b in blocks)


def timing(train, test, args) -> tuple[list[dict], list[dict]]:
    """Blocks of ``args.block`` steps per contestant, interleaved round by round (load drifts hit all alike)."""
    trainers = {m: make_trainer(m, train, test, args) for m in METHODS}
    gen = torch.Generator().manual_seed(0)
    wall, cpu, thread = [], [], []
    try:
        for r in range(args.rounds + 1):
            w, c, th = {}, {}, {}
            for m, trainer in trainers.items():
                data = trainer.train_on_device
                idx = [torch.randint(len(train), (args.batch_size,), generator=gen).to(data.x.device)
                       for _ in range(args.block)]
                t0, c0, h0 = time.perf_counter(), time.process_time(), time.thread_time()
                for i in idx:
                    trainer.stepper.step(data.x[i], data.y[i])
                w[m], c[m], th[m] = time.perf_counter() - t0, time.process_time() - c0, time.thread_time() - h0
            if r > 0:  # round 0 warms up (and lets async SAM size its perturbation batch)
                wall.append(w)
                cpu.append(c)
                thread.append(th)
    finally:
        for t in trainers.values():
            t.close()
    return wall, cpu, thread


if __name__ == "__main__":
    main()
