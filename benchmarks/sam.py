"""SGD vs SAM vs layer-wise SAM vs asynchronous SAM: time per step and test accuracy, side by side in one run.

Same model (marlx.optim.data.small_cnn) and data (scikit-learn digits), several seeds, contestants interleaved
per seed so that load on a shared machine hits them alike. Ratios are to SGD. Asynchronous SAM's
perturbation worker is a Ray actor on its own CPU.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sam.py [--seeds 3] [--epochs 12] [--backend ray|thread]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sam.py --profile   # where layer-wise SAM's time goes
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
    ap.add_argument("--profile", action="store_true",
                    help="only print where layer-wise SAM's extra time goes (CPU time of its passes; ~10 s)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.profile:
        profile_layerwise(args)
        return

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


def profile_layerwise(args, reps: int = 40) -> None:
    """CPU time of layer-wise SAM's pieces relative to one SGD step (forward + backward), interleaved.

    The layers are those the paper's rule (largest gradient norm) picks after a few SGD steps; the perturbed
    pass is what LayerwiseSAM runs: from the cached input of the first chosen layer to the loss, and back to
    the chosen parameters only (``autograd.grad``: no weight gradient of other layers, no input gradient
    below the lowest chosen layer).
    """
    import torch.nn.functional as F

    from marlx.optim.sam.core import SAMConfig, LayerwiseSAM, frozen_bn_stats

    train, _ = load_digits(seed=0)
    torch.manual_seed(0)
    model = model_fn(args.width)()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    step = LayerwiseSAM(model, opt, SAMConfig(variant="layerwise", rho=args.rho, layers=args.layers))
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        i = torch.randint(len(train), (args.batch_size,), generator=gen)
        step.step(train.x[i], train.y[i])
    children = list(model)
    chosen = [int(n) for n in step.selected]
    sel = [p for n in chosen for p in children[n].parameters()]
    macs = {n: sum(p.numel() for p in c.parameters() if p.dim() > 1) for n, c in enumerate(children)}
    x, y = train.x[: args.batch_size], train.y[: args.batch_size]
    t = {"sgd_step": 0.0, "perturbed_pass": 0.0, "suffix_forward": 0.0, "layer_scores": 0.0}
    for _ in range(reps):
        c0 = time.process_time()
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        t["sgd_step"] += time.process_time() - c0
        c0 = time.process_time()
        step.selected = []
        from marlx.optim.sam.core import critical_layers

        critical_layers(step.groups, {n: [p.grad for p in ps] for n, ps in step.groups.items()}, args.layers)
        t["layer_scores"] += time.process_time() - c0
        with torch.no_grad():
            h = x
            for c in children[: chosen[0]]:
                h = c(h)
        with frozen_bn_stats(model):
            c0 = time.process_time()
            z = h
            for c in children[chosen[0]:]:
                z = c(z)
            torch.autograd.grad(F.cross_entropy(z, y), sel)
            t["perturbed_pass"] += time.process_time() - c0
            c0 = time.process_time()
            with torch.no_grad():
                z = h
                for c in children[chosen[0]:]:
                    z = c(z)
            t["suffix_forward"] += time.process_time() - c0
    print(f"chosen layers (largest gradient norm): {[f'{n}:{type(children[n]).__name__}' for n in chosen]}")
    print("weights per layer: " + ", ".join(f"{n}:{type(children[n]).__name__}={v}" for n, v in macs.items() if v))
    for k, v in t.items():
        print(f"{k:16s} {v / t['sgd_step']:.3f} of an SGD step (CPU time, {reps} reps)")
    print(json.dumps({"bench": "sam_profile", "chosen": chosen, **{k: round(v / t["sgd_step"], 3) for k, v in t.items()}}))


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
