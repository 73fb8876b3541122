"""An independent implementation of one EPyMARL QMIX/VDN update, written from reading EPyMARL's source
(uoe-agents/epymarl ``src/learners/q_learner.py::QLearner.train``, ``src/modules/agents/rnn_agent.py`` with
``use_rnn: False``, ``src/controllers/basic_controller.py::_build_inputs``, ``src/modules/mixers/qmix.py``,
``src/components/standarize_stream.py``, ``src/runners/episode_runner.py``). No code was copied: it follows
EPyMARL's layout (``[B, T+1]`` episode batches, ``filled``/``terminated`` masks) with plain tensor ops on weights
taken from a marlx module, so that the two can be compared on the same batch and weights.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def mlp_agent_q(params: dict, inputs: torch.Tensor) -> torch.Tensor:
    """EPyMARL rnn_agent with use_rnn False: relu(fc1) -> relu(rnn as Linear) -> fc2."""
    x = F.relu(F.linear(inputs, params["fc1.weight"], params["fc1.bias"]))
    h = F.relu(F.linear(x, params["fc_hidden.weight"], params["fc_hidden.bias"]))
    return F.linear(h, params["fc2.weight"], params["fc2.bias"])


def build_inputs(obs: torch.Tensor) -> torch.Tensor:
    """basic_mac._build_inputs with obs_last_action False, obs_agent_id True: ``[B, T+1, n, d + n]``."""
    b, t, n, _ = obs.shape
    return torch.cat([obs, torch.eye(n).expand(b, t, n, n)], dim=-1)


def qmix_mix(params: dict, qs: torch.Tensor, states: torch.Tensor, embed: int) -> torch.Tensor:
    """QMixer.forward (2-layer hypernetworks): ``qs [B, T, n]``, ``states [B, T, S]`` -> ``[B, T, 1]``."""
    b, t, n = qs.shape

    def hyper(prefix, x):  # Linear -> ReLU -> Linear
        x = F.relu(F.linear(x, params[f"{prefix}.0.weight"], params[f"{prefix}.0.bias"]))
        return F.linear(x, params[f"{prefix}.2.weight"], params[f"{prefix}.2.bias"])

    s = states.reshape(-1, states.shape[-1])
    q = qs.reshape(-1, 1, n)
    w1 = hyper("hyper_w_1", s).abs().view(-1, n, embed)
    b1 = F.linear(s, params["hyper_b_1.weight"], params["hyper_b_1.bias"]).view(-1, 1, embed)
    hidden = F.elu(torch.bmm(q, w1) + b1)
    w_final = hyper("hyper_w_final", s).abs().view(-1, embed, 1)
    v = hyper("V", s).view(-1, 1, 1)
    return (torch.bmm(hidden, w_final) + v).view(b, t, 1)


class RunningMeanStd:
    """standarize_stream.RunningMeanStd for one reward column (float32 tensors, as EPyMARL)."""

    def __init__(self):
        self.mean, self.var, self.count = torch.zeros(1), torch.ones(1), 1e-4

    def update(self, arr: torch.Tensor) -> None:
        arr = arr.reshape(-1, arr.size(-1))
        bm, bv, bc = arr.mean(0), arr.var(0), arr.shape[0]
        delta, tot = bm - self.mean, self.count + bc
        m2 = self.var * self.count + bv * bc + delta.square() * self.count * bc / tot
        self.mean, self.var, self.count = self.mean + delta * bc / tot, m2 / tot, tot


def epymarl_episode_batch(obs, state, avail, actions, rewards, lengths):
    """EPyMARL's stored episodes from per-episode arrays: everything ``[B, T+1]`` (the last action and reward slot
    unused), ``filled`` 1 for ``t <= L``, ``terminated`` 1 at the last step: on a gymma env (no ``episode_limit``
    in info) the runner stores ``terminated = done or truncated``, i.e. the time limit too."""
    b, t1 = obs.shape[:2]
    pad = lambda x: torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)  # noqa: E731
    filled = (torch.arange(t1)[None] <= lengths[:, None]).float()
    terminated = torch.zeros(b, t1)
    terminated[torch.arange(b), lengths - 1] = 1.0
    return {"obs": obs, "state": state, "avail_actions": avail, "actions": pad(actions).unsqueeze(-1),
            "reward": pad(rewards).unsqueeze(-1), "filled": filled.unsqueeze(-1), "terminated": terminated.unsqueeze(-1)}


def epymarl_loss(batch: dict, agent: dict, target_agent: dict, mixer: dict | None, target_mixer: dict | None,
                 rew_ms: RunningMeanStd | None, gamma: float = 0.99, embed: int = 32) -> torch.Tensor:
    """QLearner.train up to the loss (double Q, standardised rewards when ``rew_ms`` is given)."""
    rewards = batch["reward"][:, :-1]
    actions = batch["actions"][:, :-1]
    terminated = batch["terminated"][:, :-1].float()
    mask = batch["filled"][:, :-1].float().clone()
    mask[:, 1:] = mask[:, 1:] * (1 - terminated[:, :-1])
    avail = batch["avail_actions"]
    if rew_ms is not None:
        rew_ms.update(rewards)
        rewards = (rewards - rew_ms.mean) / torch.sqrt(rew_ms.var)
    inputs = build_inputs(batch["obs"])
    mac_out = mlp_agent_q(agent, inputs)  # [B, T+1, n, A] (no recurrence: all steps at once)
    chosen = torch.gather(mac_out[:, :-1], 3, actions).squeeze(3)
    target_out = mlp_agent_q(target_agent, inputs)[:, 1:].clone()
    target_out[avail[:, 1:] == 0] = -9999999
    detached = mac_out.clone().detach()
    detached[avail == 0] = -9999999
    best = detached[:, 1:].max(dim=3, keepdim=True)[1]
    target_max = torch.gather(target_out, 3, best).squeeze(3)
    if mixer is None:  # VDN
        chosen_tot, target_tot = chosen.sum(-1, keepdim=True), target_max.sum(-1, keepdim=True)
    else:
        chosen_tot = qmix_mix(mixer, chosen, batch["state"][:, :-1], embed)
        target_tot = qmix_mix(target_mixer, target_max, batch["state"][:, 1:], embed)
    targets = rewards + gamma * (1 - terminated) * target_tot.detach()
    td = (chosen_tot - targets.detach()) * mask
    return (td**2).sum() / mask.sum()
