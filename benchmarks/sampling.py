"""Sampling speed of marlx QMIX on the team view, against the bare env and RLlib's default multi-agent PPO.

Contestants, measured side by side in this one process (one thread):

* ``bare``: the team env stepped with random available actions (no RLlib), the reference;
* ``marlx_qmix``: marlx's :class:`~marlx.runtime.runner.TeamEnvRunner` with the QMIX module (epsilon-greedy,
  one batched forward pass over envs x agents per step, numpy team arrays), whole episodes;
* ``marlx_mappo`` (with ``--mappo``): the same runner with MAPPO's module in fragment mode (stochastic actor,
  per-agent log-probs and the actor's hidden state kept after every step), what MAPPO samples with;
* ``rllib_ppo_ma``: RLlib's MultiAgentEnvRunner with a shared PPO module on the env's multi-agent view
  (``env_config={"marlx_view": "multi_agent"}``), RLlib's default multi-agent sampling.

The machine is shared, so the contestants run interleaved in ``--rounds`` rounds of ``--seconds`` each and the
MEDIAN per-round ratio is reported (as benchmarks/envs.py does). Beside the wall-clock rates, each contestant's
env steps per second of this thread's CPU time (``time.thread_time``) are reported (``*_cpu`` keys): every
contestant runs single-threaded in this thread (torch at one thread, the env runner local), so that ratio is the
same work measured without the time other processes (and Ray's own background threads) take from the two cores.
For 1 and 8 envs per runner it prints env steps/s and the ratios, then the replay memory of QMIX per env step
(measured on the sampled episodes) and the projection to 5,000 episodes of GRF academy_3_vs_1_with_keeper
(simple115 observations: 3 agents x 115, state 115, 19 actions, 150 steps). The last line is one JSON object.

    python benchmarks/sampling.py --env builtin/push_box --env-config '{"size": 6}' --seconds 3 --rounds 5
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


class Bare:
    """The team envs stepped with random available actions, no RLlib."""

    def __init__(self, env_name: str, env_config: dict, n_envs: int):
        from marlx.envs.registry import make_env

        self.envs = [make_env(env_name, **env_config) for _ in range(n_envs)]
        self.rng = np.random.default_rng(0)
        self.obs = [e.reset(seed=i)[0] for i, e in enumerate(self.envs)]

    def steps_per_s(self, seconds: float) -> tuple[float, float]:
        return bare_steps_per_s(self.envs, self.obs, self.rng, seconds)


def _rates(steps: int, t0: float, c0: float) -> tuple[float, float]:
    """``(env steps per wall second, env steps per second of this thread's CPU time)``."""
    return steps / (time.perf_counter() - t0), steps / max(time.thread_time() - c0, 1e-9)


def bare_steps_per_s(envs, obs, rng, seconds: float) -> tuple[float, float]:
    steps, t0, c0 = 0, time.perf_counter(), time.thread_time()
    while time.perf_counter() - t0 < seconds:
        for i, env in enumerate(envs):
            avail = obs[i]["avail"]
            action = (rng.random(avail.shape) * avail).argmax(-1)
            obs[i], _, term, trunc, _ = env.step(action)
            if term or trunc:
                obs[i] = env.reset()[0]
            steps += 1
    return _rates(steps, t0, c0)


def runner_steps_per_s(algo, seconds: float) -> tuple[float, float]:
    runner = algo.env_runner
    steps, t0, c0 = 0, time.perf_counter(), time.thread_time()
    while time.perf_counter() - t0 < seconds:
        episodes = runner.sample()
        steps += sum(len(e) for e in episodes)
    return _rates(steps, t0, c0)


def qmix_algo(env_name, env_config, n_envs):
    from marlx.algorithms.qmix import QMIXConfig

    cfg = QMIXConfig().environment(env_name, env_config=env_config).env_runners(num_envs_per_env_runner=n_envs)
    return cfg.build_algo()


def mappo_algo(env_name, env_config, n_envs):
    from marlx.algorithms.mappo import MAPPOConfig

    cfg = (MAPPOConfig().environment(env_name, env_config=env_config).env_runners(num_envs_per_env_runner=n_envs)
           .training(train_batch_size_per_learner=100 * n_envs))
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
    p.add_argument("--seconds", type=float, default=3.0, help="measuring time per contestant and round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the median ratio is reported)")
    p.add_argument("--envs", default="1,8", help="envs per runner to compare")
    p.add_argument("--no-ppo", action="store_true", help="skip RLlib's multi-agent PPO sampler")
    p.add_argument("--mappo", action="store_true", help="also measure MAPPO's sampling (fragments) on the team runner")
    args = p.parse_args()

    import ray

    import marlx.envs.registry  # noqa: F401  (registers env names with Tune)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    env_config = json.loads(args.env_config)
    figures: dict = {"bench": "sampling", "env": args.env, "env_config": env_config, "rounds": args.rounds,
                     "seconds": args.seconds}
    print(f"{'envs':>4} {'bare/s':>9} {'marlx/s':>9} {'ppo_ma/s':>9} {'marlx/bare':>10} {'marlx/ppo':>9}"
          "   (medians of per-round figures)")
    for n_envs in [int(x) for x in args.envs.split(",")]:
        bare = Bare(args.env, env_config, n_envs)
        algo = qmix_algo(args.env, env_config, n_envs)
        algo.env_runner.sample()  # warm-up
        palgo = None if args.no_ppo else ppo_algo(args.env, env_config, n_envs)
        if palgo is not None:
            palgo.env_runner.sample()
        malgo = mappo_algo(args.env, env_config, n_envs) if args.mappo else None
        if malgo is not None:
            malgo.env_runner.sample()
        rows, mappo_rows = [], []
        for _ in range(args.rounds):
            (b, b_cpu), (m, m_cpu) = bare.steps_per_s(args.seconds), runner_steps_per_s(algo, args.seconds)
            pp = runner_steps_per_s(palgo, args.seconds)[0] if palgo is not None else float("nan")
            rows.append((b, m, pp, b_cpu, m_cpu))
            if malgo is not None:
                mappo_rows.append((runner_steps_per_s(malgo, args.seconds)[0], b))
        if "replay_bytes_per_step" not in figures:  # measured on the first runner size
            figures.update(replay_figures(algo))
        algo.stop()
        if palgo is not None:
            palgo.stop()
        if malgo is not None:
            malgo.stop()
            marr = np.array(mappo_rows)
            mappo_over_bare = float(np.median(marr[:, 0] / marr[:, 1]))
            print(f"{n_envs:>4} MAPPO fragments: {np.median(marr[:, 0]):.0f} steps/s, MAPPO / bare {mappo_over_bare:.2f}")
            figures[f"marlx_mappo_steps_per_s_{n_envs}"] = round(float(np.median(marr[:, 0])), 1)
            figures[f"marlx_mappo_over_bare_{n_envs}"] = round(mappo_over_bare, 3)
        arr = np.array(rows)
        b, m, pp, b_cpu, m_cpu = np.median(arr, axis=0)
        over_bare = float(np.median(arr[:, 1] / arr[:, 0]))
        over_bare_cpu = float(np.median(arr[:, 4] / arr[:, 3]))
        over_ppo = float(np.median(arr[:, 1] / arr[:, 2])) if palgo is not None else float("nan")
        print(f"{n_envs:>4} {b:>9.0f} {m:>9.0f} {pp:>9.0f} {over_bare:>10.2f} {over_ppo:>9.2f}"
              f"   per thread-CPU second: bare {b_cpu:.0f}, marlx {m_cpu:.0f}, marlx/bare {over_bare_cpu:.3f}")
        figures[f"bare_steps_per_s_{n_envs}"] = round(float(b), 1)
        figures[f"marlx_steps_per_s_{n_envs}"] = round(float(m), 1)
        figures[f"rllib_ppo_ma_steps_per_s_{n_envs}"] = round(float(pp), 1)
        figures[f"marlx_over_bare_{n_envs}"] = round(over_bare, 3)
        figures[f"bare_steps_per_cpu_s_{n_envs}"] = round(float(b_cpu), 1)
        figures[f"marlx_steps_per_cpu_s_{n_envs}"] = round(float(m_cpu), 1)
        figures[f"marlx_over_bare_cpu_{n_envs}"] = round(over_bare_cpu, 3)
        figures[f"marlx_over_rllib_ppo_ma_{n_envs}"] = round(over_ppo, 3) if palgo is not None else None
    print(f"replay: {figures['replay_bytes_per_step']} bytes per env step on {args.env}; GRF 3v1: "
          f"{figures['grf_3v1_bytes_per_step']} bytes/step, 5000 episodes x 150 steps = "
          f"{figures['grf_3v1_5000_episodes_gib']} GiB")
    ray.shutdown()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
