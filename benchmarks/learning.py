"""Learning curves of marlx's value-decomposition learners: greedy success rate against env steps.

Runs a tuned example (``tuned_examples/<algo>/<env>.yaml`` by default) for several seeds, one after the
other, evaluates greedily (``explore=False``) at the file's ``evaluation_interval``, and writes
``<out>/learning_<algo>_<env>.csv`` (seed, iteration, env steps, wall seconds, train/eval success, returns)
and a PNG of the mean eval success (band: 95% bootstrap interval of the mean over seeds, as `marlx plot`).
Also measures random play on the same env, and for every team algorithm the number of distinct formations
(FoX's formation keys, ``--formation-round`` decimals, from the agents' observations) its training episodes
visited: the ``formations`` column, counted by the same keyer for every contestant.
The last line printed is one JSON object.

    python benchmarks/learning.py --algo qmix --env builtin/push_box --seeds 3
    python benchmarks/learning.py --algo fox,qmix --env builtin/push_box --seeds 3   # side by side, one plot
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

torch.set_num_threads(1)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT_ENV = {"mpe/simple_spread": "mpe_spread", "lbf/8x8-2p-2f-coop": "lbf_8x8"}
#: learner statistics of value-decomposition learners kept per row (NaN for other algorithms)
LEARNER_COLUMNS = ("td_loss", "q_tot_mean", "target_mean", "reward_std_running")


def default_example(algo: str, env: str) -> str:
    short = SHORT_ENV.get(env, env.split("/")[-1])
    return os.path.join(ROOT, "tuned_examples", algo.lower(), f"{short}.yaml")


def load_example(path: str) -> tuple[str, dict]:
    with open(path) as f:
        data = yaml.safe_load(f)
    (name, exp), = data.items()
    return name, exp


def random_success(env: str, env_config: dict, episodes: int = 300, seed: int = 0) -> tuple[float, float]:
    from marlx.envs.registry import make_env

    e = make_env(env, **env_config)
    rng = np.random.default_rng(seed)
    wins, returns = 0, []
    for ep in range(episodes):
        obs, _ = e.reset(seed=seed + ep)
        total = 0.0
        while True:
            obs, r, term, trunc, info = e.step((rng.random(obs["avail"].shape) * obs["avail"]).argmax(-1))
            total += r
            if term or trunc:
                wins += bool(info.get("success"))
                returns.append(total)
                break
    return wins / episodes, float(np.mean(returns))


def get(result: dict, path: str, default=float("nan")):
    for part in path.split("/"):
        if not isinstance(result, dict) or part not in result:
            return default
        result = result[part]
    return float(result)


def formation_tally(formation_round: int):
    """A driver-side ``fox_count`` component that only counts formations of collected training episodes (no
    bonus, no batch columns): appended to a team algorithm's components, it measures distinct formations visited."""
    from marlx.intrinsic.fox import FoXCount

    class FormationTally(FoXCount):
        def annotate(self, batch: dict) -> None:
            pass

        def get_state(self) -> dict:
            return {}

    return FormationTally({"beta1": 0.0, "formation_round": formation_round, "count_at": "sampling"}, None, None,
                          where="driver")


def run_seed(exp: dict, seed: int, max_env_steps: int | None, formation_round: int | None = 1,
             max_wall_s: float | None = None) -> list[dict]:
    from marlx.algorithms import get_algorithm_class
    from marlx.results.runs import evaluated_at

    config = dict(exp["config"])
    env_config = config.pop("env_config", {})
    cfg = get_algorithm_class(exp["run"]).get_default_config().update_from_dict(config)
    cfg.environment(exp["env"], env_config=env_config).debugging(seed=seed)
    budget = max_env_steps or exp.get("stop", {}).get("num_env_steps_sampled_lifetime", 50_000)
    algo = cfg.build_algo()
    tally = None
    if formation_round is not None and isinstance(getattr(algo, "intrinsic", None), list):
        tally = formation_tally(formation_round)
        algo.intrinsic.append(tally)
    rows, t0 = [], time.perf_counter()
    try:
        while True:
            r = algo.train()
            steps = int(r["num_env_steps_sampled_lifetime"])
            # RLlib repeats the last evaluation's results in later iterations: its own rule says which evaluated
            evaluated = bool(evaluated_at(r["training_iteration"], cfg.evaluation_interval))
            out_of_time = max_wall_s is not None and time.perf_counter() - t0 >= max_wall_s
            if evaluated or steps >= budget or out_of_time:
                rows.append({
                    "seed": seed, "iteration": r["training_iteration"], "env_steps": steps,
                    "wall_s": round(time.perf_counter() - t0, 1),
                    "train_success": get(r, "env_runners/success_rate"),
                    "train_return": get(r, "env_runners/episode_return_mean"),
                    "eval_success": get(r, "evaluation/env_runners/success_rate") if evaluated else float("nan"),
                    "eval_return": get(r, "evaluation/env_runners/episode_return_mean") if evaluated else float("nan"),
                    "formations": len(tally.counter) if tally is not None else float("nan"),
                    **{k: get(r, f"learners/default_policy/{k}") for k in LEARNER_COLUMNS},
                })
                print(rows[-1], flush=True)
            if steps >= budget or out_of_time:
                break
    finally:
        algo.stop()
    return rows


def _run_seed_task(exp: dict, seed: int, max_env_steps: int | None, formation_round: int | None = 1,
                   max_wall_s: float | None = None) -> list[dict]:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    import marlx.envs.registry  # noqa: F401  (env names in this worker's Tune registry)

    return run_seed(exp, seed, max_env_steps, formation_round, max_wall_s)


def eval_curve(rows: list[dict], seed: int) -> list[dict]:
    """The rows of ``seed`` that hold a greedy evaluation: a success rate or, on tasks that define no success (MPE),
    a return."""
    return [r for r in rows if r["seed"] == seed
            and (r["eval_success"] == r["eval_success"] or r["eval_return"] == r["eval_return"])]


def plot(rows_by_algo: dict[str, list[dict]], path: str, title: str, random_rate: float, metric: str = "success",
         ylim=(-0.02, 1.02)) -> None:
    """Greedy success (or return, ``metric="return"``) against env steps: per algorithm the mean over seeds with
    its 95% bootstrap band (the curves of `marlx plot`)."""
    from marlx.results.plot import plot_curves

    curves = {}
    for algo, rows in rows_by_algo.items():
        per_seed = []
        for s in sorted({r["seed"] for r in rows}):
            pts = [(r["env_steps"], r[f"eval_{metric}"]) for r in eval_curve(rows, s)]
            if pts:
                per_seed.append(tuple(zip(*pts)))
        curves[f"{algo}: greedy {metric}"] = per_seed
    plot_curves(curves, path, xlabel="env steps", ylabel="success rate" if metric == "success" else "return",
                title=title, hlines={"random play": random_rate} if random_rate == random_rate else None, ylim=ylim)


def summarise(rows: list[dict], seeds: int, threshold: float) -> dict:
    """Per-seed final/best/last-quarter greedy success and the env steps at which success first reached
    ``threshold`` (None when it never did)."""
    out = {"final_eval_success": [], "best_eval_success": [], "last_quarter_eval_success": [], "final_eval_return": [],
           "last_quarter_eval_return": [], "env_steps": [], "wall_s": [], "steps_to_threshold": [],
           "distinct_formations": []}
    for s in range(seeds):
        curve = eval_curve(rows, s)
        if not curve:  # the budget ended before the first greedy evaluation
            curve = [{**[r for r in rows if r["seed"] == s][-1], "eval_success": float("nan")}]
        final = curve[-1]
        cut = 0.75 * max(r["env_steps"] for r in rows if r["seed"] == s)
        reached = [r["env_steps"] for r in curve if r["eval_success"] >= threshold]
        out["final_eval_success"].append(final["eval_success"])
        out["best_eval_success"].append(max(r["eval_success"] for r in curve))
        out["last_quarter_eval_success"].append(
            round(float(np.mean([r["eval_success"] for r in curve if r["env_steps"] >= cut] or [np.nan])), 3))
        out["final_eval_return"].append(final["eval_return"])
        out["last_quarter_eval_return"].append(
            round(float(np.mean([r["eval_return"] for r in curve if r["env_steps"] >= cut] or [np.nan])), 3))
        out["env_steps"].append(final["env_steps"])
        out["wall_s"].append(final["wall_s"])
        out["steps_to_threshold"].append(reached[0] if reached else None)
        out["distinct_formations"].append([r for r in rows if r["seed"] == s][-1].get("formations", float("nan")))
    return out


def compare(algos: list[str], env: str, env_config: dict | None, seeds: int, max_env_steps: int | None,
            threshold: float, out: str, example: str | list[str] | None = None, formation_round: int | None = 1,
            max_wall_s: float | None = None, num_cpus: int | None = None,
            overrides: dict[str, dict] | None = None) -> dict:
    """Run the tuned examples of ``algos`` (``example``: one file, or one per algorithm in order; default
    ``tuned_examples/<algo>/<env>.yaml``) on one task (``env_config`` replaces the examples' when given) for
    ``seeds`` seeds side by side as Ray tasks (``overrides``: algorithm -> config keys that replace that example's,
    e.g. a local env runner inside a benchmark task); write the CSV and PNG under ``out`` and return the per-algorithm
    summaries with the random-play baseline measured on the same task."""
    import ray

    import marlx.envs.registry  # noqa: F401

    examples = [example] if isinstance(example, str) else list(example or [])
    if examples and len(examples) != len(algos):
        raise ValueError(f"{len(examples)} example file(s) for {len(algos)} algorithms: give one per algorithm")
    exps = {}
    for i, algo in enumerate(algos):
        path = examples[i] if examples else default_example(algo, env)
        _, exp = load_example(path)
        exp.setdefault("env", env)
        exp["config"].update((overrides or {}).get(algo, {}))
        if env_config is not None:
            exp["config"]["env_config"] = dict(env_config)
        exps[algo] = (path, exp)
    env_configs = {json.dumps(e["config"].get("env_config", {}), sort_keys=True) for _, e in exps.values()}
    if len(env_configs) > 1:
        raise ValueError(f"the examples use different tasks {sorted(env_configs)}: pass --env-config to compare on one")
    first = next(iter(exps.values()))[1]
    env_config = first["config"].get("env_config", {})
    rand_rate, rand_return = random_success(first["env"], env_config)
    # seeds (and algorithms) run side by side as Ray tasks (one CPU each; the algorithm lives inside the task)
    ray.init(num_cpus=num_cpus or max(2, seeds), include_dashboard=False, log_to_driver=False, configure_logging=False)
    remote = ray.remote(num_cpus=1)(_run_seed_task)
    futures = {algo: [remote.remote(exp, s, max_env_steps, formation_round, max_wall_s) for s in range(seeds)]
               for algo, (_, exp) in exps.items()}
    rows_by_algo = {algo: [row for part in ray.get(f) for row in part] for algo, f in futures.items()}
    ray.shutdown()

    os.makedirs(out, exist_ok=True)
    stem = f"learning_{'_vs_'.join(a.lower() for a in algos)}_{first['env'].replace('/', '_')}"
    with open(os.path.join(out, stem + ".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["algo"] + list(next(iter(rows_by_algo.values()))[0]))
        writer.writeheader()
        for algo, rows in rows_by_algo.items():
            writer.writerows({"algo": algo, **r} for r in rows)
    title = f"{' vs '.join(algos)} on {first['env']} {env_config}"
    plot(rows_by_algo, os.path.join(out, stem + ".png"), title, rand_rate)
    plot(rows_by_algo, os.path.join(out, stem + "_return.png"), title, rand_return, metric="return", ylim=None)
    summary = {algo: summarise(rows, seeds, threshold) for algo, rows in rows_by_algo.items()}
    return {"summary": summary, "first": first, "env_config": env_config, "exps": exps, "stem": stem,
            "random_success": rand_rate, "random_return": rand_return}


def replot(path: str, random_rate: float = float("nan"), random_return: float = float("nan")) -> None:
    """Redraw the success and return PNGs of a CSV this script wrote (random play is not in the CSV: pass it to
    draw it)."""
    rows_by_algo: dict[str, list[dict]] = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            row = {k: (v if k == "algo" else float(v) if v not in ("", "nan") else float("nan")) for k, v in r.items()}
            rows_by_algo.setdefault(r["algo"], []).append(row)
    stem = path[:-len(".csv")]
    title = f"{' vs '.join(rows_by_algo)} ({os.path.basename(stem)})"
    plot(rows_by_algo, stem + ".png", title, random_rate)
    plot(rows_by_algo, stem + "_return.png", title, random_return, metric="return", ylim=None)
    print(f"wrote {stem}.png and {stem}_return.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--algo", default="qmix", help="one algorithm or several, comma-separated (e.g. fox,qmix): "
                   "they run on the same task and seeds, side by side")
    p.add_argument("--env", default="builtin/push_box")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--example", default=None, help="tuned-example YAML, or comma-separated files, one per --algo in "
                   "the same order (default tuned_examples/<algo>/<env>.yaml)")
    p.add_argument("--env-config", default=None, help="JSON env_config that replaces the examples' (same task for all)")
    p.add_argument("--override", action="append", default=[], metavar="ALGO=JSON",
                   help="config keys that replace one contestant's example values, e.g. "
                   "'qmix={\"num_env_runners\": 0}' (repeatable; say in BENCHMARKS.md what was overridden)")
    p.add_argument("--max-env-steps", type=int, default=None, help="override the file's env-step budget")
    p.add_argument("--threshold", type=float, default=0.5, help="success rate whose first env step is reported")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--formation-round", type=int, default=1,
                   help="decimals of the formation keys counted in the formations column (FoX's push_box example: 1)")
    p.add_argument("--max-wall-s", type=float, default=None,
                   help="also stop each seed after this many seconds (it then reports the env steps it reached)")
    p.add_argument("--replot", default=None, metavar="CSV",
                   help="only redraw the PNGs of an earlier run's CSV (written next to it) and exit; "
                   "--replot-random SUCCESS,RETURN draws random play's levels")
    p.add_argument("--replot-random", default=None, metavar="SUCCESS,RETURN")
    p.add_argument("--num-cpus", type=int, default=None,
                   help="CPUs Ray may use (default max(2, seeds)); algorithms x seeds of them run every trial at once")
    args = p.parse_args()
    if args.replot:
        rand = [float(x) for x in args.replot_random.split(",")] if args.replot_random else []
        replot(args.replot, *rand)
        return
    if args.formation_round < 0:  # no formation count
        args.formation_round = None

    algos = [a.strip() for a in args.algo.split(",") if a.strip()]
    examples = [e.strip() for e in args.example.split(",")] if args.example else None
    if examples and len(examples) != len(algos):
        p.error(f"--example names {len(examples)} file(s) for {len(algos)} algorithms: give one per --algo, in order")
    overrides = {}
    for item in args.override:
        algo, sep, text = item.partition("=")
        if not sep or algo.strip() not in algos:
            p.error(f"--override {item!r}: write ALGO=JSON with ALGO one of {algos}")
        try:
            overrides[algo.strip()] = json.loads(text)
        except json.JSONDecodeError as e:
            p.error(f"--override {item!r}: the JSON does not parse ({e})")
    try:
        run = compare(algos, args.env, json.loads(args.env_config) if args.env_config else None, args.seeds,
                      args.max_env_steps, args.threshold, args.out, example=examples,
                      formation_round=args.formation_round, max_wall_s=args.max_wall_s, num_cpus=args.num_cpus,
                      overrides=overrides)
    except ValueError as e:
        p.error(str(e))
    summary, first, env_config, exps = run["summary"], run["first"], run["env_config"], run["exps"]
    rand_rate, rand_return, stem = run["random_success"], run["random_return"], run["stem"]

    print(f"{'algo':>6} {'seed':>4} {'env_steps':>9} {'wall_s':>7} {'final_eval':>10} {'best_eval':>9} "
          f"{'last_quarter':>12} {'steps_to_' + str(args.threshold):>14} {'formations':>10} {'final_return':>12} "
          f"{'last_q_return':>13}")
    for algo, sm in summary.items():
        for s in range(args.seeds):
            print(f"{algo:>6} {s:>4} {sm['env_steps'][s]:>9} {sm['wall_s'][s]:>7} {sm['final_eval_success'][s]:>10.2f} "
                  f"{sm['best_eval_success'][s]:>9.2f} {sm['last_quarter_eval_success'][s]:>12.3f} "
                  f"{str(sm['steps_to_threshold'][s]):>14} {sm['distinct_formations'][s]:>10} "
                  f"{sm['final_eval_return'][s]:>12.3f} {sm['last_quarter_eval_return'][s]:>13.3f}")
    print(f"random play: success {rand_rate:.3f}, return {rand_return:.3f}")
    result = {"bench": "learning", "algos": algos, "env": first["env"], "env_config": env_config, "seeds": args.seeds,
              "threshold": args.threshold, "random_success": rand_rate, "random_return": rand_return,
              "examples": {a: os.path.relpath(path, ROOT) for a, (path, _) in exps.items()}, "overrides": overrides,
              "csv": os.path.join(os.path.relpath(args.out, ROOT), stem + ".csv")}
    if len(algos) == 1:
        result.update(algo=algos[0], **summary[algos[0]])
    else:
        result["results"] = summary
    print(json.dumps(result))


if __name__ == "__main__":
    main()
