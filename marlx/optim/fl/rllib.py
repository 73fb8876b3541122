"""Federated training of an RLlib policy: every client is a whole RLlib Algorithm (its own Learner and env
runners) inside a Ray actor; the server aggregates their RLModule weights with the same arithmetic as the
standalone trainer (FedAvg, FedLUAR).

Each round the server sends the global weights to the sampled clients, each client runs
``local_iterations`` of ``Algorithm.train()`` on its own environment copies (optionally with its own
``env_config``: non-IID tasks), and uploads its weights, less the layers FedLUAR recycles this round. The
optimiser state (e.g. PPO's Adam moments) stays on each client between rounds, as in FedAvg with
client-side state. Only public RLlib API is used (``LearnerGroup.get_weights/set_weights``,
``EnvRunnerGroup.sync_weights``), so no LearnerHook is needed: the seam is the weights.

Example (PPO on CartPole)::

    from ray.rllib.algorithms.ppo import PPOConfig
    config = PPOConfig().environment("CartPole-v1").env_runners(num_env_runners=0)
    fl = FederatedRLlib(config, RLlibFLConfig(strategy="fedluar", delta=2, num_clients=4, clients_per_round=2))
    history = fl.fit(10)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from marlx.errors import UnknownNameError
from marlx.optim.fl.aggregate import LayerRecycler, State, masked_average, numel


@dataclass
class RLlibFLConfig:
    """Settings of a federated RLlib run.

    Attributes:
        strategy: ``"fedavg"`` or ``"fedluar"``.
        delta: FedLUAR's recycled weight layers per round (must stay below the module's weight-tensor count).
        num_clients: clients, one Ray actor (one Algorithm) each.
        clients_per_round: clients sampled each round.
        local_iterations: ``Algorithm.train()`` calls per client per round.
        weighting: ``"steps"`` weights clients by env steps sampled this round, ``"uniform"`` equally.
        client_env_configs: per-client updates of the env config (client ``i`` takes entry ``i % len``).
        client_cpus: CPUs reserved by each client actor.
        seed: client ``i`` builds its Algorithm with ``seed + i``; also seeds sampling and FedLUAR.
    """

    strategy: str = "fedavg"
    delta: int = 1
    num_clients: int = 2
    clients_per_round: int = 2
    local_iterations: int = 1
    weighting: str = "steps"
    client_env_configs: list = field(default_factory=list)
    client_cpus: float = 0.5
    seed: int = 0


def shared_policy(agent_id, *args, **kwargs) -> str:
    """Policy mapping for a multi-agent env whose agents share one module ``"shared"`` (importable, so
    client actors can unpickle the config)."""
    return "shared"


def _flatten(weights: dict) -> State:
    return {f"{mid}/{k}": torch.as_tensor(np.asarray(v)) for mid, sd in weights.items() for k, v in sd.items()}


def _unflatten(state: State) -> dict:
    out: dict = {}
    for key, v in state.items():
        mid, k = key.split("/", 1)
        out.setdefault(mid, {})[k] = v.numpy()
    return out


class RLlibClient:
    """A Ray actor holding one client's Algorithm."""

    def __init__(self, config, seed: int, env_config: Optional[dict] = None):
        torch.set_num_threads(1)
        import marlx.envs  # noqa: F401  (registers marlx's env names with Tune in this actor's process)

        cfg = config.copy(copy_frozen=False)
        cfg.debugging(seed=seed)
        if env_config:
            cfg.environment(env_config={**(cfg.env_config or {}), **env_config})
        self.algo = cfg.build_algo()

    def get_weights(self) -> State:
        return _flatten(self.algo.learner_group.get_weights())

    def train_round(self, weights: dict, iterations: int, upload: Optional[list]) -> tuple[State, dict]:
        self.algo.learner_group.set_weights(weights)
        self.algo.env_runner_group.sync_weights(from_worker_or_learner_group=self.algo.learner_group,
                                                inference_only=True)
        steps, returns = 0, []
        for _ in range(iterations):
            res = self.algo.train()
            runners = res.get("env_runners", {})
            steps += int(runners.get("num_env_steps_sampled", 0))
            if "episode_return_mean" in runners:
                returns.append(float(runners["episode_return_mean"]))
        state = self.get_weights()
        if upload is not None:
            state = {k: state[k] for k in upload}
        return state, {"env_steps": steps, "episode_return_mean": float(np.mean(returns)) if returns else float("nan")}

    def stop(self) -> None:
        self.algo.stop()


class FederatedRLlib:
    """Server of a federated RLlib run (see the module docstring)."""

    def __init__(self, config, fl: Optional[RLlibFLConfig] = None):
        import ray

        self.fl = fl = fl or RLlibFLConfig()
        if fl.strategy not in ("fedavg", "fedluar"):
            raise UnknownNameError("federated RLlib strategy", fl.strategy, ("fedavg", "fedluar"))
        if fl.weighting not in ("steps", "uniform"):
            raise UnknownNameError("weighting", fl.weighting, ("steps", "uniform"))
        actor = ray.remote(num_cpus=fl.client_cpus)(RLlibClient)
        envs = fl.client_env_configs
        self.clients = [actor.remote(config, fl.seed + i, envs[i % len(envs)] if envs else None)
                        for i in range(fl.num_clients)]
        # The global model starts as client 0's initial weights.
        self.state: State = ray.get(self.clients[0].get_weights.remote())
        self.recycler = LayerRecycler(self.state, fl.delta, seed=fl.seed) if fl.strategy == "fedluar" else None
        self.rng = np.random.default_rng([fl.seed, 1])
        self.round, self.history = 0, []

    def step(self) -> dict:
        import ray

        fl = self.fl
        clients = sorted(self.rng.choice(fl.num_clients, fl.clients_per_round, replace=False).tolist())
        upload = None
        if self.recycler is not None:
            recycled = set(self.recycler.choose())
            upload = [k for k in self.state if k not in recycled]
        weights = _unflatten(self.state)
        results = ray.get([self.clients[c].train_round.remote(weights, fl.local_iterations, upload) for c in clients])
        uploads = [(s, max(1, m["env_steps"]) if fl.weighting == "steps" else 1.0) for s, m in results]
        averaged = masked_average(self.state, uploads)
        self.state = self.recycler.aggregate(self.state, averaged) if self.recycler else averaged
        returns = [m["episode_return_mean"] for _, m in results if np.isfinite(m["episode_return_mean"])]
        rec = {
            "round": self.round, "clients": clients,
            "uploaded": sum(numel(s) for s, _ in results), "downloaded": len(clients) * numel(self.state),
            "recycled": list(self.recycler.recycled) if self.recycler else [],
            "episode_return_mean": float(np.mean(returns)) if returns else float("nan"),
            "env_steps": sum(m["env_steps"] for _, m in results),
        }
        self.round += 1
        self.history.append(rec)
        return rec

    def fit(self, rounds: int) -> list[dict]:
        for _ in range(rounds):
            self.step()
        return self.history

    def stop(self) -> None:
        import ray

        ray.get([c.stop.remote() for c in self.clients])
        for c in self.clients:
            ray.kill(c)
