"""A real QMIX module (mixer on the runner) and hand-made steps to drive an attack without the runner."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.columns import Columns

from marlx.attacks.base import AttackContext
from marlx.modules.qmix_module import QMIXRLModule


def make_module(n=3, n_actions=4, obs_dim=5, state_dim=6, mixer="qmix", seed=0, hidden=8):
    torch.manual_seed(seed)
    obs_space = gym.spaces.Dict({
        "obs": gym.spaces.Box(-1, 1, (n, obs_dim), np.float32),
        "state": gym.spaces.Box(-1, 1, (state_dim,), np.float32),
        "avail": gym.spaces.Box(0, 1, (n, n_actions), np.float32),
    })
    return QMIXRLModule(
        observation_space=obs_space, action_space=gym.spaces.MultiDiscrete([n_actions] * n), inference_only=True,
        model_config={"rnn_hidden_dim": hidden, "mixing_embed_dim": 4, "hypernet_embed": 8, "mixer": mixer,
                      "mixer_on_runners": True},
    )


class Driver:
    """Steps ``attack`` on B rows with random observations and the module's greedy actions."""

    def __init__(self, module, attack, num_envs=1, seed=0, avail=None):
        self.module, self.attack, self.b = module, attack, num_envs
        self.rng = np.random.default_rng(seed)
        self.n, self.a = module.n_agents, module.n_actions
        self.avail = np.ones((num_envs, self.n, self.a), np.float32) if avail is None else avail
        self.t = np.zeros(num_envs, np.int64)
        self.h = torch.zeros(num_envs, self.n, module.hidden_dim)
        self.prev = torch.full((num_envs, self.n), -1.0)
        for e in range(num_envs):
            attack.begin_episode(e)

    def step(self):
        obs = {
            "obs": torch.as_tensor(self.rng.uniform(-1, 1, (self.b, self.n, self.module.obs_dim)), dtype=torch.float32),
            "state": torch.as_tensor(self.rng.uniform(-1, 1, (self.b, self.module.state_dim)), dtype=torch.float32),
            "avail": torch.as_tensor(self.avail),
        }
        state_in = {"h": self.h, "prev_actions": self.prev}
        with torch.no_grad():
            q, h = self.module.agent_q_values(obs, self.prev, self.h)
        intended = q.masked_fill(obs["avail"] <= 0, -1e9).argmax(-1).numpy()
        ctx = AttackContext(module=self.module, obs=obs, state_in=state_in,
                            outputs={"q_values": q, Columns.STATE_OUT: {"h": h}}, actions=intended,
                            avail=self.avail, t=self.t.copy(), env_indices=np.arange(self.b), explore=False)
        with torch.no_grad():  # the runner calls attacks under no_grad
            executed, extras = self.attack(ctx)
        self.h, self.prev = h, torch.as_tensor(intended, dtype=torch.float32)
        self.t += 1
        return intended, executed, extras, q.numpy()


class FixedPlanner(torch.nn.Module):
    """A stand-in Q-difference transformer returning the ΔQ vector ``dq(t)`` for every agent (``agent_bonus`` added)."""

    def __init__(self, n_agents, dq, agent_bonus=None):
        super().__init__()
        self.n_agents, self.dq = n_agents, dq
        self.bonus = np.zeros(n_agents) if agent_bonus is None else np.asarray(agent_bonus, dtype=np.float64)
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.calls = []

    def all_agents(self, timesteps, states):
        self.calls.append(timesteps.clone())
        rows = []
        for ts in timesteps:
            t = int(ts.max())
            base = np.asarray(self.dq(t), dtype=np.float64)
            rows.append(base[None, :] + self.bonus[:, None])
        return torch.as_tensor(np.stack(rows))
