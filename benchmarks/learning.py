"""Learning curves of marlx's value-decomposition learners: greedy success rate against env steps.

Runs a tuned example (``tuned_examples/<algo>/<env>.yaml`` by default) for several seeds, one after the
other, evaluates greedily (``explore=False``) at the file's ``evaluation_interval``, and writes
``<out>/learning_<algo>_<env>.csv`` (seed, iteration, env steps, wall seconds, train/eval success, returns)
and a PNG of the mean eval success (band: min..max over seeds). Also measures random play on the same env.
The last line printed is one JSON object.

    python benchmarks/learning.py --algo qmix --env builtin/push_box --seeds 3
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
SHORT_ENV = {"mpe/simple_spread": "mpe_spread"}


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


def run_seed(exp: dict, seed: int, max_env_steps: int | None) -> list[dict]:
    from marlx.algorithms import get_algorithm_class

    config = dict(exp["config"])
    env_config = config.pop("env_config", {})
    cfg = get_algorithm_class(exp["run"]).get_default_config().update_from_dict(config)
    cfg.environment(exp["env"], env_config=env_config).debugging(seed=seed)
    budget = max_env_steps or exp.get("stop", {}).get("num_env_steps_sampled_lifetime", 50_000)
    algo = cfg.build_algo()
    rows, t0, last_eval_episodes = [], time.perf_counter(), 0.0
    try:
        while True:
            r = algo.train()
            steps = int(r["num_env_steps_sampled_lifetime"])
            # RLlib repeats the last evaluation's results in later iterations: count evaluated episodes
            eval_episodes = get(r, "evaluation/env_runners/num_episodes_lifetime", 0.0)
            evaluated = eval_episodes > last_eval_episodes
            last_eval_episodes = max(last_eval_episodes, eval_episodes)
            if evaluated or steps >= budget:
                rows.append({
                    "seed": seed, "iteration": r["training_iteration"], "env_steps": steps,
                    "wall_s": round(time.perf_counter() - t0, 1),
                    "train_success": get(r, "env_runners/success_rate"),
                    "train_return": get(r, "env_runners/episode_return_mean"),
                    "eval_success": get(r, "evaluation/env_runners/success_rate") if evaluated else float("nan"),
                    "eval_return": get(r, "evaluation/env_runners/episode_return_mean") if evaluated else float("nan"),
                })
                print(rows[-1], flush=True)
            if steps >= budget:
                break
    finally:
        algo.stop()
    return rows


def _run_seed_task(exp: dict, seed: int, max_env_steps: int | None) -> list[dict]:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    import marlx.envs.registry  # noqa: F401  (env names in this worker's Tune registry)

    return run_seed(exp, seed, max_env_steps)


def plot(rows: list[dict], path: str, title: str, random_rate: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted({r["seed"] for r in rows})
    grid = np.linspace(0, max(r["env_steps"] for r in rows), 60)
    curves = []
    for s in seeds:
        pts = [(r["env_steps"], r["eval_success"]) for r in rows if r["seed"] == s and r["eval_success"] == r["eval_success"]]
        if pts:
            x, y = zip(*pts)
            curves.append(np.interp(grid, x, y, left=np.nan))
    fig, ax = plt.subplots(figsize=(6, 4))
    if curves:
        c = np.array(curves)
        ax.plot(grid, np.nanmean(c, 0), label=f"greedy success (mean of {len(curves)} seeds)")
        ax.fill_between(grid, np.nanmin(c, 0), np.nanmax(c, 0), alpha=0.25)
    ax.axhline(random_rate, color="grey", ls="--", label="random play")
    ax.set(xlabel="env steps", ylabel="success rate", ylim=(-0.02, 1.02))
    ax.set_title(title, fontsize=8)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--algo", default="qmix")
    p.add_argument("--env", default="builtin/push_box")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--example", default=None, help="tuned-example YAML (default tuned_examples/<algo>/<env>.yaml)")
    p.add_argument("--max-env-steps", type=int, default=None, help="override the file's env-step budget")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = p.parse_args()

    import ray

    import marlx.envs.registry  # noqa: F401

    path = args.example or default_example(args.algo, args.env)
    name, exp = load_example(path)
    exp.setdefault("env", args.env)
    env_config = exp["config"].get("env_config", {})
    rand_rate, rand_return = random_success(exp["env"], env_config)
    # seeds run side by side as Ray tasks (one CPU each; the algorithm lives inside the task)
    ray.init(num_cpus=max(2, args.seeds), include_dashboard=False, log_to_driver=False, configure_logging=False)
    remote = ray.remote(num_cpus=1)(_run_seed_task)
    rows = [row for part in ray.get([remote.remote(exp, s, args.max_env_steps) for s in range(args.seeds)]) for row in part]
    ray.shutdown()

    os.makedirs(args.out, exist_ok=True)
    stem = f"learning_{args.algo.lower()}_{exp['env'].replace('/', '_')}"
    with open(os.path.join(args.out, stem + ".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, os.path.join(args.out, stem + ".png"), f"{exp['run']} on {exp['env']} {env_config}", rand_rate)

    # final = the last evaluated row of each seed (the budget's last iteration may have no evaluation)
    finals = [[r for r in rows if r["seed"] == s and r["eval_success"] == r["eval_success"]][-1] for s in range(args.seeds)]
    best = [max((r["eval_success"] for r in rows if r["seed"] == s and r["eval_success"] == r["eval_success"]), default=float("nan")) for s in range(args.seeds)]
    print(f"{'seed':>4} {'env_steps':>9} {'wall_s':>7} {'final_eval':>10} {'best_eval':>9} {'final_return':>12}")
    for f_, b in zip(finals, best):
        print(f"{f_['seed']:>4} {f_['env_steps']:>9} {f_['wall_s']:>7} {f_['eval_success']:>10.2f} {b:>9.2f} {f_['eval_return']:>12.3f}")
    # stability: mean greedy success over the evaluations in the last quarter of each seed's budget
    last_q = []
    for s in range(args.seeds):
        seed_rows = [r for r in rows if r["seed"] == s and r["eval_success"] == r["eval_success"]]
        cut = 0.75 * max(r["env_steps"] for r in rows if r["seed"] == s)
        last_q.append(round(float(np.mean([r["eval_success"] for r in seed_rows if r["env_steps"] >= cut] or [np.nan])), 3))
    print(f"mean greedy success in the last quarter of the budget, per seed: {last_q}")
    print(f"random play: success {rand_rate:.3f}, return {rand_return:.3f}")
    print(json.dumps({
        "bench": "learning", "algo": args.algo, "env": exp["env"], "env_config": env_config, "example": os.path.relpath(path, ROOT),
        "seeds": args.seeds, "final_eval_success": [f_["eval_success"] for f_ in finals], "best_eval_success": best, "last_quarter_eval_success": last_q,
        "final_eval_return": [f_["eval_return"] for f_ in finals], "env_steps": [f_["env_steps"] for f_ in finals],
        "wall_s": [f_["wall_s"] for f_ in finals], "random_success": rand_rate, "random_return": rand_return,
        "csv": os.path.join(os.path.relpath(args.out, ROOT), stem + ".csv"),
    }))


if __name__ == "__main__":
    main()
