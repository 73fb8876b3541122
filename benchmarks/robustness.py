"""Robustness of QMIX and WALL under attack, side by side: natural, random and Wolfpack success on one task.

Per seed (seeds run side by side as Ray tasks, one CPU each):

1. QMIX from ``tuned_examples/qmix/predator_prey.yaml`` (natural training; it reaches greedy success 1.0 at
   ~13-16k env steps there) for ``--natural-steps`` env steps, saved;
2. the QMIX checkpoint evaluated greedily over ``--episodes`` natural episodes and as many under the random attack
   and under Wolfpack, all with the same ``--budget`` (attacked steps per episode). Wolfpack's attacker is fitted
   against the frozen QMIX policy first (``--fit-steps`` env steps, :mod:`marlx.attacks.fit`, as ``marlx attack``
   does);
3. WALL trained from that checkpoint (``restore_from``; the same learner settings as the QMIX example, every
   training episode attacked with WALL's training budget 12) for ``--wall-steps`` env steps, saved;
4. the WALL checkpoint evaluated the same way: natural, random, Wolfpack with an attacker fitted against the
   frozen WALL policy (the same protocol as for QMIX), and Wolfpack with WALL's own co-trained attacker.

Writes ``<out>/robustness_<task>.json`` (e.g. ``robustness_predator_prey.json``; per seed and mean) and prints a table; the last line printed is
one JSON object. The expected shape (paper: QMIX 98.7% -> 39.4% under Wolfpack; WALL 93.4%): Wolfpack's drop
>= 2x random's; WALL under Wolfpack recovers at least half of QMIX's drop with natural success within 5 points.

    python benchmarks/robustness.py --seeds 3

``--train-budget`` (WALL's ``num_attack_train`` and every attacker fit's budget) and ``--env-config`` (e.g. a shorter
``episode_limit``) scale the test to a task whose episodes are short: on predator_prey a natural episode lasts ~6.5
steps, so the paper's SMAC budget of 12 attacks nearly every training step (BENCHMARKS.md, issue 13).
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

torch.set_num_threads(1)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "tuned_examples", "qmix", "predator_prey.yaml")


def load_example(path: str) -> dict:
    with open(path) as f:
        (_, exp), = yaml.safe_load(f).items()
    return exp


def build_config(run: str, exp: dict, seed: int, **training):
    from marlx.algorithms import get_algorithm_class

    config = dict(exp["config"])
    env_config = config.pop("env_config", {})
    # no evaluation while training (the checkpoints are evaluated afterwards, side by side)
    config.update({"evaluation_interval": None})
    cfg = get_algorithm_class(run).get_default_config().update_from_dict(config)
    cfg.environment(exp["env"], env_config=env_config).debugging(seed=seed)
    if training:
        cfg.training(**training)
    return cfg


def train(cfg, steps: int, path: str) -> dict:
    algo = cfg.build_algo()
    t0 = time.perf_counter()
    try:
        while True:
            r = algo.train()
            done = int(r["num_env_steps_sampled_lifetime"])
            if done >= steps:
                break
        saved = str(algo.save_to_path(path))
    finally:
        algo.stop()
    return {"checkpoint": saved, "env_steps": done, "train_success": float(r["env_runners"].get("success_rate", np.nan)),
            "wall_s": round(time.perf_counter() - t0, 1)}


def evaluate(ckpt: str, args, seed: int, folder: str, which: str) -> dict:
    """One ``evaluate_checkpoint`` call: ``which`` = "random", "wolfpack" (attacker fitted against the frozen
    policy; refitted if one is saved), or "wolfpack_own" (a WALL checkpoint's own attacker)."""
    from marlx.cli.evaluate import evaluate_checkpoint

    kwargs = {"attack": "random" if which == "random" else "wolfpack", "budget": args.budget, "seed": seed,
              "out": folder, "episodes": args.episodes}
    if which == "wolfpack":
        kwargs.update(fit_steps=args.fit_steps, refit=True, fit_budget=args.train_budget)
    res = evaluate_checkpoint(ckpt, **kwargs)
    out = {"natural": res["natural"], which: res["attacked"]}
    if which == "wolfpack":
        out["attacker"] = {k: res["attacker"].get(k) for k in ("source", "env_steps", "updates", "seconds", "losses")}
    return out


def run_seed(args, seed: int) -> dict:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    import marlx.envs.registry  # noqa: F401  (env names in this worker's Tune registry)

    exp = load_example(args.example)
    if args.env_config:
        exp["config"]["env_config"] = {**exp["config"].get("env_config", {}), **json.loads(args.env_config)}
    if args.override:
        exp["config"].update(json.loads(args.override))
    base = os.path.join(args.out, "robustness_runs", f"seed{seed}")
    os.makedirs(base, exist_ok=True)
    t0 = time.perf_counter()
    partial: dict = {"seed": seed}

    def stage(key: str, value: dict) -> None:  # every stage is written at once (a run cut short keeps them)
        partial.setdefault(key, {}).update(value)
        partial["wall_s"] = round(time.perf_counter() - t0, 1)
        with open(os.path.join(base, "partial.json"), "w") as f:
            json.dump(partial, f, indent=1)
        print(f"seed {seed}: {key} {value}", flush=True)

    earlier = os.path.join(base, "partial.json")
    done = {}
    if args.reuse_natural and os.path.isfile(earlier):
        with open(earlier) as f:
            done = json.load(f).get("qmix", {})
    if all(k in done for k in ("checkpoint", "natural", "random", "wolfpack")) and os.path.isdir(done["checkpoint"]):
        qmix = done  # the natural stage of an earlier run with the same --out: checkpoint and its evaluations
        stage("qmix", {**done, "reused": True})
    else:
        qmix = train(build_config("QMIX", exp, seed), args.natural_steps, os.path.join(base, "qmix"))
        stage("qmix", qmix)
        for which in ("random", "wolfpack"):
            stage("qmix", evaluate(qmix["checkpoint"], args, seed, os.path.join(base, "qmix_attack"), which))
    # WALL keeps its own ε schedule (0 -> 0: the released code forces ε = 0 in attacked episodes, spec §3); the
    # natural example's exploration keys (e.g. SMAX's 1.0 -> 0.05 over 50k) would make WALL's training near-random
    exp = {**exp, "config": {k: v for k, v in exp["config"].items() if not k.startswith("epsilon_")}}
    budget = {} if args.train_budget is None else {"num_attack_train": args.train_budget}
    wall_extra = json.loads(args.wall_override) if args.wall_override else {}
    wall_cfg = build_config("WALL", exp, seed, restore_from=qmix["checkpoint"], **budget, **wall_extra)
    wall = train(wall_cfg, args.wall_steps, os.path.join(base, "wall"))
    stage("wall", wall)
    for which in ("wolfpack_own", "wolfpack", "random"):
        stage("wall", evaluate(wall["checkpoint"], args, seed, os.path.join(base, "wall_attack"), which))
    return partial


def stat(part: dict, key: str, field: str = "success_rate") -> float:
    """One evaluation figure (success rate by default, or e.g. ``length_mean``) of a stage; NaN if it did not run."""
    return float(part[key][field]) if key in part else float("nan")


def verdict(per_seed: list[dict]) -> dict:
    """Means over seeds (NaN where a stage did not run) and the three checks of the expected shape."""
    def m(model: str, key: str, field: str = "success_rate") -> float:
        vals = [stat(r.get(model, {}), key, field) for r in per_seed]
        vals = [v for v in vals if v == v]
        return float(np.mean(vals)) if vals else float("nan")

    q_nat, q_rand, q_wolf = m("qmix", "natural"), m("qmix", "random"), m("qmix", "wolfpack")
    w_nat, w_wolf, w_own, w_rand = m("wall", "natural"), m("wall", "wolfpack"), m("wall", "wolfpack_own"), m("wall", "random")
    drop_rand, drop_wolf = q_nat - q_rand, q_nat - q_wolf
    recovered = (w_wolf - q_wolf) / drop_wolf if drop_wolf > 0 else float("nan")
    return {
        "qmix_natural": q_nat, "qmix_random": q_rand, "qmix_wolfpack": q_wolf,
        "wall_natural": w_nat, "wall_random": w_rand, "wall_wolfpack": w_wolf, "wall_wolfpack_own_attacker": w_own,
        "random_drop": drop_rand, "wolfpack_drop": drop_wolf,
        "wolfpack_drop_over_random_drop": drop_wolf / drop_rand if drop_rand > 0 else float("nan"),
        "wall_recovered_fraction_of_wolfpack_drop": recovered,
        "shape_wolfpack_drop_ge_2x_random": bool(drop_wolf > 0 and drop_wolf >= 2 * drop_rand),
        "shape_wall_recovers_half": bool(recovered >= 0.5),
        "shape_wall_natural_within_5_points": bool(w_nat >= q_nat - 0.05),
        # episode lengths: an attack that only delays the team shows here, not in the success rate
        **{f"{model}_length_{key}": m(model, key, "length_mean")
           for model, keys in (("qmix", ("natural", "random", "wolfpack")),
                               ("wall", ("natural", "random", "wolfpack", "wolfpack_own"))) for key in keys},
    }


def report(per_seed: list[dict], args) -> dict:
    summary = verdict(per_seed)
    print(f"\nsuccess rate over {args.episodes} greedy episodes each, budget {args.budget} attacked steps "
          f"({len(per_seed)} seeds):")
    for label, key, cols in (("QMIX", "qmix", ("natural", "random", "wolfpack")),
                             ("WALL", "wall", ("natural", "random", "wolfpack", "wolfpack_own"))):
        for col in cols:
            vals = [stat(r.get(key, {}), col) for r in per_seed]
            lens = [stat(r.get(key, {}), col, "length_mean") for r in per_seed]
            print(f"  {label:5} {col:13} {np.nanmean(vals) if any(v == v for v in vals) else float('nan'):.3f}"
                  f"  per seed {vals}  episode length per seed {lens}")
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--example", default=EXAMPLE, help="the natural QMIX run (default tuned_examples/qmix/predator_prey.yaml)")
    p.add_argument("--natural-steps", type=int, default=20_000, help="env steps of natural QMIX training")
    p.add_argument("--wall-steps", type=int, default=5_000, help="env steps of WALL training from the QMIX checkpoint")
    p.add_argument("--fit-steps", type=int, default=3_000, help="env steps of each Wolfpack attacker fit")
    p.add_argument("--budget", type=int, default=8, help="attacked steps per episode, every attack (WALL test: 8)")
    p.add_argument("--episodes", type=int, default=32, help="natural and attacked episodes per evaluation")
    p.add_argument("--train-budget", type=int, default=None,
                   help="attacked steps per training episode: WALL's num_attack_train and every attacker fit's "
                        "budget (default: WALL's, 12 for QMIX; scale it down for tasks with short episodes)")
    p.add_argument("--env-config", default=None,
                   help="JSON merged into the example's env_config, e.g. '{\"episode_limit\": 15}' for time pressure")
    p.add_argument("--override", default=None,
                   help="JSON config keys that replace the example's for QMIX and WALL alike, e.g. "
                        "'{\"num_env_runners\": 0}' (each seed is a Ray task holding one CPU)")
    p.add_argument("--wall-override", default=None,
                   help="JSON WALL training keys for the WALL stage only, e.g. '{\"attack_train_episode_prob\": 0.5}'")
    p.add_argument("--reuse-natural", action="store_true",
                   help="reuse each seed's natural QMIX checkpoint and its evaluations from an earlier run with the "
                        "same --out (its partial.json); only WALL is trained and evaluated again")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--summarize", action="store_true",
                   help="only read the per-seed stages of an earlier (possibly cut short) run under --out")
    args = p.parse_args()
    args.out = os.path.abspath(args.out)  # RLlib saves checkpoints to absolute paths or URIs only

    if args.summarize:
        import glob

        parts = []
        for path in sorted(glob.glob(os.path.join(args.out, "robustness_runs", "seed*", "partial.json"))):
            with open(path) as f:
                parts.append(json.load(f))
        print(json.dumps({"summary": report(parts, args), "per_seed": parts}))
        return

    import ray

    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    ray.init(num_cpus=max(2, args.seeds), include_dashboard=False, log_to_driver=True, configure_logging=False)
    remote = ray.remote(num_cpus=1)(run_seed)
    per_seed = ray.get([remote.remote(args, s) for s in range(args.seeds)])
    ray.shutdown()
    summary = report(per_seed, args)
    out = {"args": vars(args), "summary": summary, "per_seed": per_seed, "wall_s": round(time.perf_counter() - t0, 1)}
    path = os.path.join(args.out, f"robustness_{load_example(args.example)['env'].split('/')[-1]}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"  results: {path}")
    print(json.dumps({"summary": summary, "wall_s": out["wall_s"]}))


if __name__ == "__main__":
    main()
