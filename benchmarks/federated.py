"""Federated learning on Ray, side by side on the same data, partition and seeds.

Real data: scikit-learn's bundled digits (1,347 train / 450 test), Dirichlet(alpha) label skew over the
clients, clients served by a pool of Ray actors (or in this process, the default, which gives the same numbers).
No text set ships offline with the installed packages (scikit-learn's 20 newsgroups is fetched over the network),
so the model on which FedLUAR's recycling matters is a deep residual MLP, not a text model.
Contestants per seed (every contestant of a seed gets the same partition, client sampling and initial model):

  A  FedAvg vs FedLUAR, sweeping delta (recycled weight layers per round; fixed over the rounds, as in the
     paper's code): test accuracy and upload, the accuracy / communication trade-off curve. Model: a deep
     pre-norm residual MLP (``residual_mlp``: ``blocks + 2`` weight matrices, 12 + 2 by default), so that
     recycling a few layers leaves most of the model on fresh updates and recycling many of them is what cuts
     the upload. Ablation at the same deltas (``--uniform-deltas``): recycled layers drawn uniformly instead of
     with p ~ 1 / s_l.
  B  EmbracingFL vs FedAvg over strong clients only vs width reduction (HeteroFL-style), tiers
     strong / moderate / weak (plain MLP ``--depth`` x ``--hidden``); FedAvg of the full MLP on every client
     as the reference (its upload is the unit of groups B and C);
  C  on-device KD (target model) vs FedAvg of the small (25 % width) model alone (same MLP), for
     ``--kd-rounds`` rounds, with two references that explain the gap: FedAvg of the target over the
     strong + moderate clients only (on-device KD without the distillation) and FedAvg of the target on every
     client (what the target reaches when the weak clients can train it); the KD run's teacher (its auxiliary
     small model) is reported too, and every model's accuracy every ``--kd-eval-every`` rounds. Variant: the
     distillation steps start from a zero momentum buffer (``kd_fresh_momentum``) instead of coasting on the
     cross-entropy phase's velocity (the authors' code shares one optimizer).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/federated.py    # 10 seeds, groups A, B, C: about 25 minutes

Per contestant: mean test accuracy and its 95 % Student-t interval over the seeds, and the paired per-seed
difference to the group's FedAvg reference (mean and 95 % t-interval): the seeds are shared, so the paired
interval is the one that resolves a claim about a gap. Prints a table and, as its last line, one JSON object
with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from marlx.optim.data import load_digits, mlp, residual_mlp  # noqa: E402
from marlx.optim.fl import FederatedTrainer, FLConfig, ScaledModel, make_strategy  # noqa: E402
from marlx.optim.fl.strategies import FedLUAR  # noqa: E402
from marlx.results.stats import paired_t_interval, t_interval  # noqa: E402

GOAL_GAP_POINTS, GOAL_UPLOAD = 1.0, 0.25  # issue 7: within 1 point of FedAvg at <= 25 % of its upload


class UniformFedLUAR(FedLUAR):
    """Ablation (benchmark only): FedLUAR with the recycled layers drawn uniformly at random, not by 1 / s_l.
    Everything else (no upload, previous update re-applied, accounting) is FedLUAR's."""

    name = "fedluar_uniform"

    def setup(self, model_fn, tiers, local_steps, seed):
        super().setup(model_fn, tiers, local_steps, seed)
        rec = self.recycler
        plain_choose = rec.choose

        def choose():
            if rec.delta == 0 or any(k not in rec.scores for k in rec.candidates):
                return plain_choose()
            pick = rec.rng.choice(len(rec.candidates), size=rec.delta, replace=False)
            rec.recycled = [rec.candidates[i] for i in sorted(pick)]
            return rec.recycled

        rec.choose = choose


def contestants(args) -> tuple[list[tuple[str, str, str, dict, str]], dict]:
    """(group, label, strategy, options, reported model). A ``None`` strategy is another model of the previous
    run (on-device KD's teacher), not a run of its own."""
    tiers = {"strong": 0.2, "moderate": 0.3, "weak": 0.5}
    rampup = max(1, int(0.75 * args.rounds))  # the paper ramps w(t) up over 300 of 400 rounds
    out = []
    if "A" in args.groups:
        out += [("A", "fedavg", "fedavg", {}, "global"),
                *[("A", f"fedluar_d{d}", "fedluar", {"delta": d}, "global") for d in args.deltas],
                *[("A", f"fedluar_uniform_d{d}", "fedluar_uniform", {"delta": d}, "global")
                  for d in args.uniform_deltas]]
    if "B" in args.groups:
        out += [("B", "fedavg_mlp", "fedavg", {}, "global"),  # every tier trains the full MLP: reference
                ("B", "embracingfl", "embracingfl", {}, "global"),
                ("B", "strong_only", "fedavg", {"tiers": ("strong",)}, "global"),
                ("B", "width_reduction", "width", {"widths": {"strong": 1.0, "moderate": 0.4, "weak": 0.15}},
                 "global")]
    if "C" in args.groups:
        kd_rampup = max(1, int(0.75 * args.kd_rounds))
        out += [("C", "kd_target", "kd", {"aux_width": 0.25, "rampup_rounds": kd_rampup}, "global"),
                ("C", "kd_teacher", None, {}, "aux"),  # the auxiliary model of the kd_target run itself
                ("C", "kd_target_fresh_momentum", "kd",
                 {"aux_width": 0.25, "rampup_rounds": kd_rampup, "kd_fresh_momentum": True}, "global"),
                ("C", "fedavg_small", "fedavg", {"width": 0.25}, "global"),
                ("C", "fedavg_target_nonweak", "fedavg", {"tiers": ("strong", "moderate")}, "global"),
                ("C", "fedavg_target_all", "fedavg", {}, "global")]
    return out, tiers


def build_strategy(name: str, opts: dict):
    return UniformFedLUAR(**opts) if name == "fedluar_uniform" else make_strategy(name, **opts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=10, help="seeds 0 .. N-1; the intervals need >= 2 (use >= 5)")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--per-round", type=int, default=8)
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--alpha", type=float, default=0.3)
    p.add_argument("--groups", default="ABC", help="which contestant groups to run (A, B, C)")
    p.add_argument("--kd-rounds", type=int, default=160, help="group C: rounds (KD weight ramp-up over 3/4 of them)")
    p.add_argument("--kd-eval-every", type=int, default=20, help="group C: accuracy curve every this many rounds")
    p.add_argument("--hidden", type=int, default=128, help="groups B, C: MLP width")
    p.add_argument("--depth", type=int, default=4, help="groups B, C: MLP hidden layers")
    p.add_argument("--luar-hidden", type=int, default=64, help="group A: residual MLP width")
    p.add_argument("--luar-blocks", type=int, default=12, help="group A: residual blocks (weight layers = blocks + 2)")
    p.add_argument("--luar-stem", type=int, default=0,
                   help="group A: > 0 gives the residual MLP a wide input stem of this width (one more weight layer; "
                   "the two stem layers then hold most of the parameters, like a text model's embedding)")
    p.add_argument("--deltas", type=int, nargs="+", default=[4, 8, 10, 11, 12, 13])
    p.add_argument("--uniform-deltas", type=int, nargs="*", default=[11, 12])
    p.add_argument("--workers", type=int, default=0,
                   help="Ray actors serving the clients; 0 (default) runs them in this process, which gives the same "
                   "numbers (tests/optim/test_fl.py checks it) without paying actor start-up per contestant")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.workers > 0:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)

    train, test = load_digits(seed=0)
    models = {"A": ScaledModel(residual_mlp, "hidden", args.luar_hidden,
                               (("blocks", args.luar_blocks), ("stem", args.luar_stem))),
              "B": ScaledModel(mlp, "hidden", args.hidden, (("depth", args.depth),))}
    models["C"] = models["B"]
    luar_model = models["A"]()
    n_weight_layers = sum(1 for p_ in luar_model.parameters() if p_.dim() >= 2)
    n_params = sum(v.numel() for v in luar_model.state_dict().values())
    entries, tiers = contestants(args)
    acc: dict[str, list[float]] = {e[1]: [] for e in entries}
    upl: dict[str, list[float]] = {e[1]: [] for e in entries}
    secs: dict[str, float] = {e[1]: 0.0 for e in entries}
    curves: dict[str, list[list[float]]] = {e[1]: [] for e in entries if e[0] == "C"}  # [seed][eval point]
    curve_rounds: list[int] = []
    for seed in range(args.seeds):
        trainer = None
        for group, label, name, opts, report in entries:
            rounds = args.kd_rounds if group == "C" else args.rounds
            eval_every = args.kd_eval_every if group == "C" else rounds
            t0 = time.perf_counter()
            if name is not None:  # a new run; a None strategy reads another model of the previous run
                cfg = FLConfig(num_clients=args.clients, clients_per_round=args.per_round, rounds=rounds,
                               local_steps=args.local_steps, lr=args.lr, dirichlet_alpha=args.alpha,
                               tiers=tiers if group != "A" else {"strong": 1.0}, num_workers=args.workers,
                               worker_cpus=1.0, eval_every=eval_every, seed=seed)
                trainer = FederatedTrainer(models[group], train, test, build_strategy(name, opts), cfg)
                trainer.fit()
                trainer.close()
            s = trainer.summary()
            secs[label] += time.perf_counter() - t0
            acc[label].append(100 * s[f"accuracy/{report}"])
            upl[label].append(s["uploaded"])
            if label in curves:
                evals = [h for h in trainer.history if f"accuracy/{report}" in h]
                curve_rounds = [h["round"] + 1 for h in evals]
                curves[label].append([100 * h[f"accuracy/{report}"] for h in evals])
            print(f"seed {seed} {label:22s} acc {acc[label][-1]:6.2f}  uploaded {s['uploaded']:>10d}  "
                  f"{time.perf_counter() - t0:6.1f}s", flush=True)

    ci = {k: t_interval(v) for k, v in acc.items()}
    # Paired per-seed differences to the group's FedAvg reference (A: the residual MLP; B: the MLP on every
    # client; C: the small model alone, the paper's comparison), and upload relative to FedAvg of the same model
    # (A: the residual MLP; B, C: the MLP on every client), seed by seed.
    acc_ref = {"A": "fedavg", "B": "fedavg_mlp", "C": "fedavg_small"}
    upl_ref = {"A": "fedavg", "B": "fedavg_mlp", "C": "fedavg_target_all"}
    diff = {label: paired_t_interval(acc[label], acc[acc_ref[group]])
            for group, label, *_ in entries if acc_ref[group] in acc}
    up_ratio = {label: float(np.mean(np.array(upl[label]) / np.array(upl[upl_ref[group]])))
                for group, label, name, *_ in entries if upl_ref[group] in upl and name is not None}
    conf = f"95 % t-interval over {args.seeds} seeds"
    print(f"\nsklearn digits, {args.clients} clients ({args.per_round}/round), Dirichlet alpha {args.alpha}, "
          f"{args.rounds} rounds (group C {args.kd_rounds}) x {args.local_steps} local steps, lr {args.lr}, "
          f"{args.seeds} seeds; intervals: {conf}")
    r2 = lambda x: round(float(x), 2)  # noqa: E731
    figures = {"bench": "federated", "data": "sklearn_digits", "seeds": args.seeds, "rounds": args.rounds,
               "kd_rounds": args.kd_rounds, "confidence": 0.95,
               "accuracy": {k: r2(v[0]) for k, v in ci.items()},
               "accuracy_ci95": {k: [r2(v[1]), r2(v[2])] for k, v in ci.items()},
               "diff_to_ref": {k: r2(v[0]) for k, v in diff.items()},
               "diff_to_ref_ci95": {k: [r2(v[1]), r2(v[2])] for k, v in diff.items()},
               "reference": {label: acc_ref[group] for group, label, *_ in entries},
               "upload_over_fedavg": {k: round(v, 4) for k, v in up_ratio.items()},
               "per_seed_accuracy": {k: [r2(x) for x in v] for k, v in acc.items()}}

    def fmt(c) -> str:
        return f"{c[0]:6.2f} [{c[1]:6.2f}, {c[2]:6.2f}]"

    if "A" in args.groups:
        print(f"group A: residual MLP, {args.luar_blocks} blocks x {args.luar_hidden}, stem {args.luar_stem}, "
              f"{n_weight_layers} weight layers, {n_params} parameters")
        print(f"{'contestant':22s} {'delta':>5s} {'test acc % [95% CI]':>24s} {'minus FedAvg, paired [95% CI]':>30s} "
              f"{'upload / FedAvg':>16s} {'verdict':>12s} {'seconds':>8s}")
        curve = []
        for group, label, name, opts, _ in entries:
            if group != "A":
                continue
            d = opts.get("delta", 0)
            gap, glo, ghi = -diff[label][0], -diff[label][2], -diff[label][1]  # FedAvg minus contestant
            # The 1-point claim is resolved by the paired interval of the gap: met when all of it is <= 1 point,
            # not met when all of it is above, unresolved when it straddles 1 point.
            verdict = "met" if ghi <= GOAL_GAP_POINTS else "not met" if glo > GOAL_GAP_POINTS else "unresolved"
            if label == "fedavg":
                verdict = "-"
            print(f"{label:22s} {d:5d} {fmt(ci[label]):>24s} {fmt(diff[label]):>30s} {up_ratio[label]:16.3f} "
                  f"{verdict:>12s} {secs[label]:8.1f}")
            if name == "fedluar":
                curve.append({"delta": d, "acc": r2(ci[label][0]), "acc_ci95": [r2(ci[label][1]), r2(ci[label][2])],
                              "gap_points": r2(gap), "gap_ci95": [r2(glo), r2(ghi)], "gap_verdict": verdict,
                              "upload_over_fedavg": round(up_ratio[label], 4)})
        cheap = [c for c in curve if c["upload_over_fedavg"] <= GOAL_UPLOAD]
        met = [c["delta"] for c in cheap if c["gap_verdict"] == "met"]
        goal = ("met" if met else "not met" if cheap and all(c["gap_verdict"] == "not met" for c in cheap)
                else "unresolved" if cheap else "not tested (no delta at <= 25 % upload)")
        figures.update({"luar_model": f"residual_mlp blocks={args.luar_blocks} hidden={args.luar_hidden} "
                                      f"stem={args.luar_stem}", "luar_parameters": n_params,
                        "luar_weight_layers": n_weight_layers, "fedluar_curve": curve, "goal": goal,
                        "goal_met": bool(met), "goal_met_at_deltas": met})
        print(f"goal (gap <= {GOAL_GAP_POINTS} point at upload <= {GOAL_UPLOAD:.0%} of FedAvg, by the paired "
              f"interval of the gap): {goal}" + (f" at delta {met}" if met else ""))
    other = [e for e in entries if e[0] != "A"]
    if other:
        print(f"\ngroups B, C: MLP {args.depth} x {args.hidden}, tiers {tiers}; group C compared with FedAvg of the "
              "small model alone")
        print(f"{'group':5s} {'contestant':22s} {'test acc % [95% CI]':>24s} {'minus reference, paired [95% CI]':>33s} "
              f"{'upload / FedAvg':>16s} {'seconds':>8s}")
        for group, label, *_ in other:
            ratio = f"{up_ratio[label]:16.3f}" if label in up_ratio else f"{'-':>16s}"
            print(f"{group:5s} {label:22s} {fmt(ci[label]):>24s} {fmt(diff[label]):>33s} {ratio} {secs[label]:8.1f}")
    if curves:
        mean_curves = {k: np.mean(np.array(v), axis=0) for k, v in curves.items()}
        print(f"\ngroup C, test accuracy % (mean over seeds) after round: " + " ".join(f"{r:>6d}" for r in curve_rounds))
        for k, v in mean_curves.items():
            print(f"  {k:22s}" + " " * 31 + " ".join(f"{x:6.2f}" for x in v))
        figures["kd_curve_rounds"] = curve_rounds
        figures["kd_curves"] = {k: [r2(x) for x in v] for k, v in mean_curves.items()}
        if "kd_target" in diff:
            d, lo, hi = diff["kd_target"]
            figures["kd_claim"] = "above" if lo > 0 else "below" if hi < 0 else "unresolved"
            print(f"on-device KD target minus FedAvg of the small model: {d:.2f} [{lo:.2f}, {hi:.2f}] -> "
                  f"{figures['kd_claim']}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
