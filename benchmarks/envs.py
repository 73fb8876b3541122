"""Environment adapters against the raw environments they wrap, side by side in one process.

For every contestant pair the adapter (the marlx team view) and the raw env take turns for
``--rounds`` rounds of ``--seconds`` each (interleaved, so that load from other processes hits both),
with uniformly random AVAILABLE actions chosen the same way for both. Reported: team steps/s of each
and ``adapter / raw``.

* ``grf``: ``grf/academy_3_vs_1_with_keeper`` (3 players, simple115v2, scoring) against
  ``gfootball.env.create_environment(...)`` stepped with the old gym API;
* ``smax``: ``smax/3m`` (one jitted call per step, auto-reset inside) against JaxMARL's jitted
  ``env.step`` (its own auto-reset) plus jitted ``env.get_avail_actions``, as a user would loop it;
* ``smax_batched``: ``SMAXVectorTeamEnv`` with ``--batch`` envs against ``jit(vmap(env.step))``
  plus ``jit(vmap(get_avail_actions))`` on the same number of envs (steps counted per env);
* ``mpe``: ``mpe/simple_spread`` against mpe2's ``parallel_env`` (dict actions);
* ``builtin/push_box``, ``builtin/predator_prey``: bare team steps/s (they have no raw env); the
  foundation issue asks for >= 5,000 team steps/s.

Envs that are not installed are skipped (named in the table). JAX compiles before timing starts.
The last line is one JSON object.

    OMP_NUM_THREADS=1 python benchmarks/envs.py --seconds 2 --rounds 3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from marlx.envs.smax import configure_jax_for_cpu  # noqa: E402

configure_jax_for_cpu()  # before anything imports jax

import numpy as np  # noqa: E402

BUILTIN_MIN_STEPS_PER_S = 5000


def random_available(rng: np.random.Generator, avail: np.ndarray) -> np.ndarray:
    """One uniformly random available action per agent (works for any leading batch axes)."""
    return (rng.random(avail.shape) * avail).argmax(-1)


# -- contestants: each returns a `step()` closure that plays one step (batched: `batch` steps) -------
def team_stepper(env, seed: int = 0):
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    state = {"obs": obs}

    def step() -> int:
        obs, _, term, trunc, _ = env.step(random_available(rng, state["obs"]["avail"]))
        if term or trunc:
            obs, _ = env.reset()
        state["obs"] = obs
        return 1

    return step


def vector_stepper(venv, seed: int = 0):
    rng = np.random.default_rng(seed)
    obs, _ = venv.reset(seed=seed)
    state = {"obs": obs}

    def step() -> int:
        state["obs"], *_ = venv.step(random_available(rng, state["obs"]["avail"]))
        return venv.num_envs

    return step


def raw_grf_stepper(n_agents: int = 3, seed: int = 0):
    import gfootball.env as football_env

    env = football_env.create_environment(
        env_name="academy_3_vs_1_with_keeper", representation="simple115v2", rewards="scoring",
        number_of_left_players_agent_controls=n_agents, render=False,
    )
    env.reset()
    rng = np.random.default_rng(seed)
    n_actions = int(env.action_space.nvec[0])
    avail = np.ones((n_agents, n_actions))  # football has no masks

    def step() -> int:
        _, _, done, _ = env.step(random_available(rng, avail).tolist())
        if done:
            env.reset()
        return 1

    return step


def raw_smax_stepper(batch: int | None, seed: int = 0):
    import jax
    import jax.numpy as jnp
    from jaxmarl.environments.smax import HeuristicEnemySMAX
    from jaxmarl.environments.smax.smax_env import map_name_to_scenario

    env = HeuristicEnemySMAX(scenario=map_name_to_scenario("3m"))
    agents = env.agents

    def act_dict(actions):
        return {a: actions[..., i] for i, a in enumerate(agents)}

    def avail_arr(state):
        av = env.get_avail_actions(state)
        return jnp.stack([av[a] for a in agents], -2)

    rng = np.random.default_rng(seed)
    if batch is None:
        step_fn = jax.jit(lambda k, s, a: env.step(k, s, act_dict(a)))
        avail_fn = jax.jit(avail_arr)
        key = jax.random.PRNGKey(seed)
        _, env_state = jax.jit(env.reset)(key)
    else:
        step_fn = jax.jit(jax.vmap(lambda k, s, a: env.step(k, s, act_dict(a))))
        avail_fn = jax.jit(jax.vmap(avail_arr))
        key = jax.random.split(jax.random.PRNGKey(seed), batch)
        _, env_state = jax.jit(jax.vmap(env.reset))(key)
    box = {"key": key, "state": env_state}

    def step() -> int:
        avail = np.asarray(avail_fn(box["state"]))
        actions = random_available(rng, avail).astype(np.int32)
        if batch is None:
            box["key"], sub = jax.random.split(box["key"])
        else:
            keys = jax.vmap(jax.random.split)(box["key"])
            box["key"], sub = keys[:, 0], keys[:, 1]
        obs, box["state"], rew, dones, _ = step_fn(sub, box["state"], actions)
        jax.device_get((obs, rew, dones))  # what a host-side learner needs every step
        return 1 if batch is None else batch

    return step


def raw_mpe_stepper(seed: int = 0):
    from mpe2 import simple_spread_v3

    env = simple_spread_v3.parallel_env(max_cycles=25, continuous_actions=False)
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    ids = list(env.possible_agents)
    avail = np.ones((len(ids), int(env.action_space(ids[0]).n)))

    def step() -> int:
        actions = random_available(rng, avail)
        _, _, terms, truncs, _ = env.step({a: int(actions[i]) for i, a in enumerate(ids)})
        if all(terms.values()) or all(truncs.values()) or not env.agents:
            env.reset()
        return 1

    return step


# -- timing -------------------------------------------------------------------------------------------
def race(contestants: dict, seconds: float, rounds: int) -> dict[str, float]:
    """Interleave the contestants: `rounds` x (each runs `seconds`); return steps/s of each."""
    steps = dict.fromkeys(contestants, 0)
    elapsed = dict.fromkeys(contestants, 0.0)
    for fn in contestants.values():  # warm-up (JAX compiles here)
        for _ in range(3):
            fn()
    for _ in range(rounds):
        for name, fn in contestants.items():
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                steps[name] += fn()
            elapsed[name] += time.perf_counter() - t0
    return {name: steps[name] / elapsed[name] for name in contestants}


def installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per contestant per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--batch", type=int, default=32, help="envs in the batched SMAX pair")
    parser.add_argument("--only", nargs="*", default=None,
                        help="subset of: grf smax smax_batched mpe builtin/push_box builtin/predator_prey")
    args = parser.parse_args()

    from marlx.envs.registry import make_env

    wanted = args.only or ["builtin/push_box", "builtin/predator_prey", "mpe", "grf", "smax", "smax_batched"]
    rows: list[tuple[str, float, float | None]] = []  # (name, adapter steps/s, raw steps/s)
    skipped: list[str] = []
    for name in wanted:
        t0 = time.perf_counter()
        if name.startswith("builtin/"):
            res = race({"adapter": team_stepper(make_env(name))}, args.seconds, args.rounds)
            rows.append((name, res["adapter"], None))
        elif name == "mpe":
            if not installed("mpe2"):
                skipped.append(name)
                continue
            res = race({"adapter": team_stepper(make_env("mpe/simple_spread")), "raw": raw_mpe_stepper()},
                       args.seconds, args.rounds)
            rows.append(("mpe/simple_spread", res["adapter"], res["raw"]))
        elif name == "grf":
            if not installed("gfootball"):
                skipped.append(name)
                continue
            res = race({"adapter": team_stepper(make_env("grf/academy_3_vs_1_with_keeper")),
                        "raw": raw_grf_stepper()}, args.seconds, args.rounds)
            rows.append(("grf/academy_3_vs_1_with_keeper", res["adapter"], res["raw"]))
        elif name in ("smax", "smax_batched"):
            if not installed("jaxmarl"):
                skipped.append(name)
                continue
            if name == "smax":
                adapter, raw, label = team_stepper(make_env("smax/3m")), raw_smax_stepper(None), "smax/3m"
            else:
                from marlx.envs.smax import SMAXVectorTeamEnv

                adapter = vector_stepper(SMAXVectorTeamEnv(args.batch, "3m"))
                raw, label = raw_smax_stepper(args.batch), f"smax/3m x{args.batch} batched"
            res = race({"adapter": adapter, "raw": raw}, args.seconds, args.rounds)
            rows.append((label, res["adapter"], res["raw"]))
        else:
            parser.error(f"unknown contestant {name!r}")
        print(f"  measured {rows[-1][0]} in {time.perf_counter() - t0:.0f} s", flush=True)

    print(f"\n{'env':<36} {'adapter steps/s':>16} {'raw steps/s':>12} {'adapter/raw':>12}")
    figures: dict = {}
    for label, adapter, raw in rows:
        ratio = None if raw is None else adapter / raw
        raw_s = "-" if raw is None else f"{raw:,.0f}"
        ratio_s = "-" if ratio is None else f"{ratio:.2f}"
        note = ""
        if label.startswith("builtin/"):
            note = "  (>= 5,000: yes)" if adapter >= BUILTIN_MIN_STEPS_PER_S else "  (>= 5,000: NO)"
        print(f"{label:<36} {adapter:>16,.0f} {raw_s:>12} {ratio_s:>12}{note}")
        figures[label] = {"adapter_steps_per_s": round(adapter, 1),
                          "raw_steps_per_s": None if raw is None else round(raw, 1),
                          "adapter_over_raw": None if ratio is None else round(ratio, 3)}
    if skipped:
        print(f"not installed, skipped: {', '.join(skipped)}")
    print(json.dumps({
        "bench": "envs", "seconds": args.seconds, "rounds": args.rounds, "batch": args.batch,
        "machine": f"{platform.machine()} {os.cpu_count()} cpu", "skipped": skipped,
        "builtin_min_steps_per_s": BUILTIN_MIN_STEPS_PER_S, "envs": figures,
    }))


if __name__ == "__main__":
    main()
