"""What a QMIX/VDN run learns from, iteration by iteration: the data in its replay and the TD quantities.

Trains one tuned example (one process, local env runner) and prints, every ``--every`` iterations, one JSON line:
env steps, epsilon, training return / episode length / success rate, and the learner's TD loss, mean TD target,
mean Q_tot and mean chosen per-agent Q. At the end it prints what the replay holds: episode lengths, the action
histogram of the last 200 episodes, returns, and the largest ``|value|`` of every state dimension (by name, the
ten largest), which is what QMIX's hypernetworks are fed. A healthy run has TD targets on the scale of the returns.

    python benchmarks/qmix_diagnose.py --example tuned_examples/qmix/smax_3m.yaml --steps 100000
    python benchmarks/qmix_diagnose.py --example tuned_examples/qmix/smax_3m.yaml --steps 40000 \\
        --env-config '{"state_normalise": false}'     # SMAX's raw world_state: TD targets ~40 on returns < 2

The last line is one JSON object (the summary).
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

LEARNER_KEYS = ("td_loss", "target_mean", "q_tot_mean", "q_taken_mean")


def state_names(algo) -> list[str] | None:
    """The env's ``state_names`` from the local team runner's env (its list of envs or its batched env)."""
    envs = getattr(getattr(algo, "env_runner", None), "env", None)
    env = (getattr(envs, "envs", None) or [getattr(envs, "env", None)])[0]
    names = getattr(getattr(env, "unwrapped", env), "state_names", None)
    return list(names) if names else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--example", required=True, help="a QMIX/VDN tuned example (YAML)")
    p.add_argument("--steps", type=int, default=100_000, help="env steps to train")
    p.add_argument("--override", default=None, help="JSON config keys that replace the example's")
    p.add_argument("--env-config", default=None, help="JSON merged into the example's env_config")
    p.add_argument("--every", type=int, default=10, help="print every N iterations")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import ray

    import marlx.envs.registry  # noqa: F401  (marlx env names)
    from marlx.algorithms import get_algorithm_class

    with open(args.example) as f:
        (_, exp), = yaml.safe_load(f).items()
    config = dict(exp["config"])
    env_config = {**config.pop("env_config", {}), **json.loads(args.env_config or "{}")}
    config.update({"num_env_runners": 0, "evaluation_interval": None, **json.loads(args.override or "{}")})
    config.pop("seed", None)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    cfg = get_algorithm_class(exp["run"]).get_default_config().update_from_dict(config)
    cfg.environment(exp["env"], env_config=env_config).debugging(seed=args.seed)
    algo = cfg.build_algo()
    t0, it, rows = time.perf_counter(), 0, []
    try:
        while True:
            r = algo.train()
            it += 1
            steps = int(r["env_runners"].get("num_env_steps_sampled_lifetime", 0))
            if it % args.every == 0 or steps >= args.steps:
                er = r["env_runners"]
                learner = r.get("learners", {}).get("default_policy", {})
                row = {"iteration": it, "env_steps": steps, "wall_s": round(time.perf_counter() - t0, 1),
                       "epsilon": r.get("epsilon"), "train_return": er.get("episode_return_mean"),
                       "train_length": er.get("episode_len_mean"), "train_success": er.get("success_rate"),
                       **{k: learner.get(k) for k in LEARNER_KEYS}}
                rows.append(row)
                print(json.dumps(row), flush=True)
            if steps >= args.steps:
                break
        rp = algo.replay
        n = len(rp)
        lengths = rp.lengths[:n]
        last = slice(max(0, n - 200), n)
        mask = np.arange(rp.data["actions"].shape[1])[None] < lengths[:, None]
        actions = rp.data["actions"][:n][last][mask[last]].reshape(-1).astype(int)
        states = rp.data["state"][:n]
        state_mask = np.arange(states.shape[1])[None] <= lengths[:, None]  # T+1 observations per episode
        state_max = np.abs(states[state_mask]).max(0)
        names = state_names(algo) or [f"state{i}" for i in range(len(state_max))]
        top = np.argsort(-state_max)[:10]
        summary = {
            "bench": "qmix_diagnose", "example": args.example, "env_config": env_config,
            "replay_episodes": int(n), "length_min_mean_max": [int(lengths.min()), float(lengths.mean()),
                                                               int(lengths.max())],
            "action_histogram_last_200": np.bincount(actions).tolist(),
            "return_mean_last_200": float(rp.data["rewards"][:n][last].sum(1).mean()),
            "state_abs_max_top10": {names[i] if i < len(names) else f"state{i}": float(state_max[i]) for i in top},
            "last": rows[-1] if rows else None,
        }
    finally:
        algo.stop()
        ray.shutdown()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
