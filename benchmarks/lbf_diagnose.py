"""What QMIX/VDN's replay holds on LBF 8x8-2p-2f-coop (time limit 50) under random play, through marlx's team
runtime: episode lengths, rewards, distinct start states, and the reward statistics that EPyMARL's
``standardise_rewards`` turns them into. Prints one JSON object last.

    python benchmarks/lbf_diagnose.py --episodes 400
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--episodes", type=int, default=400)
    p.add_argument("--task", default="lbf/8x8-2p-2f-coop")
    p.add_argument("--time-limit", type=int, default=50)
    args = p.parse_args()

    import ray

    from marlx.algorithms.qmix import VDNConfig
    from marlx.algorithms.qmix.learner import RunningMeanStd

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    cfg = (VDNConfig().environment(args.task, env_config={"time_limit": args.time_limit})
           .update_from_dict({"preset": "epymarl", "num_envs_per_env_runner": 8, "learning_starts_episodes": 10**9,
                              "buffer_size": max(args.episodes, 64)})
           .debugging(seed=0))
    algo = cfg.build_algo()
    try:
        while len(algo.replay) < args.episodes:
            algo.train()  # epsilon 1 at the start: uniformly random joint actions
        rp = algo.replay
        n = len(rp)
        lengths = rp.lengths[:n]
        rewards = rp.data["rewards"][:n]
        mask = np.arange(rewards.shape[1])[None] < lengths[:, None]
        step_rewards = rewards[mask]
        starts = rp.data["obs"][:n, 0].reshape(n, -1)
        distinct_starts = len({row.tobytes() for row in starts})
        stats = RunningMeanStd()
        import torch

        stats.update(torch.as_tensor(step_rewards))
        std = stats.var ** 0.5
        out = {
            "bench": "lbf_diagnose", "task": args.task, "episodes": int(n),
            "length_min_mean_max": [int(lengths.min()), float(lengths.mean()), int(lengths.max())],
            "episodes_at_time_limit": float((lengths == args.time_limit).mean()),
            "episodes_with_reward": float((rewards.sum(1) > 0).mean()),
            "rewarded_steps": int((step_rewards > 0).sum()), "steps": int(step_rewards.size),
            "reward_values": sorted({round(float(r), 4) for r in step_rewards[step_rewards > 0]}),
            "mean_return": float(rewards.sum(1).mean()),
            "distinct_start_states": distinct_starts,
            "standardised": {"mean": stats.mean, "std": std,
                             "zero_reward_becomes": -stats.mean / std if std > 0 else None,
                             "reward_0.25_becomes": (0.25 - stats.mean) / std if std > 0 else None},
        }
    finally:
        algo.stop()
        ray.shutdown()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
