"""Sampling speed of marlx QMIX on the team view, against the bare env and RLlib's default multi-agent PPO.

Contestants, measured side by side in this one process (one thread):

* ``bare``: the team env stepped with random available actions (no RLlib), the reference;
* ``marlx_qmix``: RLlib's SingleAgentEnvRunner with marlx's QMIX module (epsilon-greedy, one batched
  forward pass over envs x agents per step), whole episodes;
* ``rllib_ppo_ma``: RLlib's MultiAgentEnvRunner with a shared PPO module on the env's multi-agent view
  (``env_config={"marlx_view": "multi_agent"}``), RLlib's default multi-agent sampling.

For 1 and 8 envs per runner it prints env steps/s and the ratios, then the replay memory of QMIX per env step
(measured on the sampled episodes) and the projection to 5,000 episodes of GRF academy_3_vs_1_with_keeper
(simple115 observations: 3 agents x 115, state 115, 19 actions, 150 steps). The last line is one JSON object.

    python benchmarks/sampling.py --env builtin/push_box --seconds 8
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def bare_steps_per_s(env_name: str, env_config: dict, n_envs: int, seconds: float) -> float:
    from marlx.envs.registry import make_env

    envs = [make_env(env_name, **env_config) for _ in range(n_envs)]
    rng = np.random.default_rng(0)
    obs = [e.reset(seed=i)[0] for i, e in enumerate(envs)]
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for i, env in enumerate(envs):
            avail = obs[i]["avail"]
            action = (rng.random(avail.shape) * avail).argmax(-1)
            obs[i], _, term, trunc, _ = env.step(action)
            if term or trunc:
                obs[i] = env.reset()[0]
            steps += 1
    return steps / (time.perf_counter() - t0)


def runner_steps_per_s(algo, seconds: float) -> float:
    runner = algo.env_runner
    runner.sample()  # warm-up (connectors, first forward)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        episodes = runner.sample()
        steps += sum(len(e) for e in episodes)
    return steps / (time.perf_counter() - t0)


def qmix_algo(env_name, env_config, n_envs):
    from marlx.algorithms.qmix import QMIXConfig

    cfg = QMIXConfig().environment(env_name, env_config=env_config).env_runners(num_envs_per_env_runner=n_envs)
    return cfg.build_algo()


def ppo_algo(env_name, env_config, n_envs):
    from ray.rllib.algorithms.ppo import PPOConfig

    cfg = (
        PPOConfig()
        .environment(env_name, env_config={**env_config, "marlx_view": "multi_agent"})
        .env_runners(num_env_runners=0, num_envs_per_env_runner=n_envs, rollout_fragment_length="auto")
        .multi_agent(policies={"shared"}, policy_mapping_fn=lambda agent_id, episode, **kw: "shared")
    )
    return cfg.build_algo()


def replay_figures(algo) -> dict:
    from marlx.runtime.replay import TeamEpisodeReplay

    replay = TeamEpisodeReplay(capacity=64)
    replay.add(algo.env_runner.sample())
    # GRF academy_3_vs_1_with_keeper with simple115 observations, PyMARL's 150-step limit
    grf = TeamEpisodeReplay(capacity=1)
    n, d, s, a, T = 3, 115, 115, 19, 150
    grf.add_arrays({
        "obs": {"obs": np.zeros((T + 1, n, d), np.float32), "state": np.zeros((T + 1, s), np.float32),
                "avail": np.ones((T + 1, n, a), np.float32)},
        "actions": np.zeros((T, n), np.int64), "rewards": np.zeros(T, np.float32), "terminated": False,
    })
    return {
        "replay_bytes_per_step": replay.bytes_per_step(),
        "grf_3v1_bytes_per_step": grf.bytes_per_step(),
        "grf_3v1_5000_episodes_gib": round(grf.bytes_per_step() * T * 5000 / 2**30, 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="builtin/push_box")
    p.add_argument("--env-config", default="{}", help="JSON env config")
    p.add_argument("--seconds", type=float, default=8.0, help="measuring time per contestant")
    p.add_argument("--envs", default="1,8", help="envs per runner to compare")
    p.add_argument("--no-ppo", action="store_true", help="skip RLlib's multi-agent PPO sampler")
    args = p.parse_args()

    import ray

    import marlx.envs.registry  # noqa: F401  (registers env names with Tune)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    env_config = json.loads(args.env_config)
    figures: dict = {"bench": "sampling", "env": args.env}
    print(f"{'envs':>4} {'bare/s':>9} {'marlx/s':>9} {'ppo_ma/s':>9} {'marlx/bare':>10} {'marlx/ppo':>9}")
    for n_envs in [int(x) for x in args.envs.split(",")]:
        bare = bare_steps_per_s(args.env, env_config, n_envs, args.seconds)
        algo = qmix_algo(args.env, env_config, n_envs)
        marlx = runner_steps_per_s(algo, args.seconds)
        if n_envs == 1:
            figures.update(replay_figures(algo))
        algo.stop()
        ppo = float("nan")
        if not args.no_ppo:
            palgo = ppo_algo(args.env, env_config, n_envs)
            ppo = runner_steps_per_s(palgo, args.seconds)
            palgo.stop()
        print(f"{n_envs:>4} {bare:>9.0f} {marlx:>9.0f} {ppo:>9.0f} {marlx / bare:>10.2f} {marlx / ppo:>9.2f}")
        figures[f"bare_steps_per_s_{n_envs}"] = round(bare, 1)
        figures[f"marlx_steps_per_s_{n_envs}"] = round(marlx, 1)
        figures[f"rllib_ppo_ma_steps_per_s_{n_envs}"] = round(ppo, 1)
        figures[f"marlx_over_bare_{n_envs}"] = round(marlx / bare, 3)
        figures[f"marlx_over_rllib_ppo_ma_{n_envs}"] = round(marlx / ppo, 3) if ppo == ppo else None
    print(f"replay: {figures['replay_bytes_per_step']} bytes per env step on {args.env}; GRF 3v1: "
          f"{figures['grf_3v1_bytes_per_step']} bytes/step, 5000 episodes x 150 steps = "
          f"{figures['grf_3v1_5000_episodes_gib']} GiB")
    ray.shutdown()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
