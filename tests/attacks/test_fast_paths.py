"""The batched computations of the Wolfpack attack and its training give the row-by-row results, and a seeded attack
makes the same decisions with them as with the row-by-row reference code (attack starts, initial agents, follow-up
groups, executed actions, budget used)."""

import numpy as np
import pytest
import torch

from marlx.attacks import wolfpack as wolfpack_module
from marlx.attacks.followup import batched_agent_forward, kl_followup, kl_followup_rows, top_m
from marlx.attacks.transformers import QDifferenceTransformer
from marlx.attacks.wolfpack import ATTACK_COUNT, ATTACK_FLAG, ATTACKER_ACTIONS, FOLLOWUP_AGENTS, INITIAL_AGENT, WolfpackAttack
from marlx.modules.agent import MLPAgent, RNNAgent
from marlx.modules.mixers import QMixer, VDNMixer
from marlx.runtime.columns import ATTACKED

from attack_helpers import Driver, make_module


def reference_all_agents(model, timesteps, states):
    """The Q-difference transformer run once per (row, agent) and read at the last position (the earlier code)."""
    b, length = states.shape[:2]
    n = model.n_agents
    eye = torch.eye(n, dtype=states.dtype)
    onehot = eye.view(1, n, 1, n).expand(b, n, length, n).reshape(b * n, length, n)
    rep = lambda x: x.unsqueeze(1).expand(b, n, *x.shape[1:]).reshape(b * n, *x.shape[1:])  # noqa: E731
    return model(rep(timesteps), rep(states), onehot)[:, -1].view(b, n, -1)


@pytest.mark.parametrize("agent_cls,mixer", [(RNNAgent, "qmix"), (MLPAgent, "qmix"), (RNNAgent, "vdn")])
def test_batched_kl_followup_equals_the_row_by_row_update(agent_cls, mixer):
    for seed in range(4):
        torch.manual_seed(seed)
        n, a, d, s_dim, h_dim, b = 3 + seed % 2, 5, 12, 7, 16, 6
        agent = agent_cls(d, a, h_dim)
        mix = QMixer(n, s_dim) if mixer == "qmix" else VDNMixer()
        x, h, s = torch.randn(b, n, d), torch.randn(b, n, h_dim), torch.randn(b, s_dim)
        intended, worst = torch.randint(0, a, (b, n)), torch.randint(0, a, (b, n))
        initial = torch.randint(0, n, (b,))
        worst[0] = intended[0]  # a row whose attack changes nothing: zero gradient, KL 0 everywhere
        assert batched_agent_forward(agent) is not None
        with torch.no_grad():
            ref = kl_followup_rows(agent, x, h, mix, s, intended, worst, initial, 5e-4)
            fast = kl_followup(agent, x, h, mix, s, intended, worst, initial, 5e-4)
        assert fast.shape == ref.shape == (b, n)
        assert torch.allclose(fast, ref, rtol=1e-4, atol=1e-6)
        assert torch.equal(fast[0], torch.zeros(n)) and torch.equal(ref[0], torch.zeros(n))
        assert np.array_equal(top_m(fast.numpy(), initial.numpy(), 2), top_m(ref.numpy(), initial.numpy(), 2))


def test_batched_forward_is_the_agent_forward_and_other_agents_use_the_row_loop():
    torch.manual_seed(0)
    agent = RNNAgent(9, 4, 8)
    x, h = torch.randn(5, 3, 9), torch.randn(5, 3, 8)
    params = {k: v.detach().unsqueeze(0).expand(5, *v.shape) for k, v in agent.named_parameters()}
    with torch.no_grad():
        q_ref, _ = agent(x.view(15, 9), h.view(15, 8))
        assert torch.allclose(batched_agent_forward(agent)(params, x, h), q_ref.view(5, 3, 4), atol=1e-6)

    class Other(torch.nn.Module):  # any other network: no batched forward, the row loop does it
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(9, 4)

        def forward(self, x, h):
            return self.fc(x), h

    assert batched_agent_forward(Other()) is None
    other = Other()
    with torch.no_grad():
        got = kl_followup(other, x, h, VDNMixer(), torch.zeros(5, 2), torch.zeros(5, 3, dtype=torch.long),
                          torch.ones(5, 3, dtype=torch.long), torch.zeros(5, dtype=torch.long), 5e-4)
        ref = kl_followup_rows(other, x, h, VDNMixer(), torch.zeros(5, 2), torch.zeros(5, 3, dtype=torch.long),
                               torch.ones(5, 3, dtype=torch.long), torch.zeros(5, dtype=torch.long), 5e-4)
    assert torch.equal(got, ref)


def test_qdiff_all_agents_equals_one_pass_per_agent():
    torch.manual_seed(3)
    model = QDifferenceTransformer(state_dim=6, n_agents=4).eval()
    times, states = torch.randint(0, 80, (5, 20)), torch.randn(5, 20, 6)
    with torch.no_grad():
        assert torch.allclose(model.all_agents(times, states), reference_all_agents(model, times, states), atol=1e-6)


def _trajectory(reference: bool, monkeypatch, steps=90, num_envs=3):
    """A seeded Wolfpack attack (real QMIX module, real untrained Q-difference transformer) on ``num_envs`` rows."""
    with monkeypatch.context() as m:
        if reference:
            m.setattr(wolfpack_module, "kl_followup", kl_followup_rows)
            m.setattr(QDifferenceTransformer, "all_agents", reference_all_agents)
        module = make_module(n=4, seed=1, hidden=64)  # the QMIX default GRU width
        torch.manual_seed(5)
        planner = QDifferenceTransformer(state_dim=module.state_dim, n_agents=4).eval()
        attack = WolfpackAttack({"budget": 12}, num_envs=num_envs, n_agents=4, n_actions=4, seed=7)
        attack.set_qdiff_transformer(planner)
        drv = Driver(module, attack, num_envs=num_envs, seed=2)
        out = []
        for t in range(steps):
            if t == 45:  # a second episode on every row
                for e in range(num_envs):
                    attack.begin_episode(e)
                drv.t[:] = 0
            _, executed, ex, _ = drv.step()
            out.append({"executed": executed.copy(), **{k: np.asarray(ex[k]).copy() for k in
                        (ATTACKED, ATTACKER_ACTIONS, INITIAL_AGENT, FOLLOWUP_AGENTS, ATTACK_COUNT, ATTACK_FLAG)}})
    return out


def test_seeded_attack_makes_the_same_decisions_as_the_row_by_row_code(monkeypatch):
    # The batched follow-up runs the row-by-row ops on per-row weight copies; with this CPU build its KL scores are
    # bitwise the row-by-row ones at these sizes (a BLAS whose batched products round differently could flip a
    # follow-up choice where two agents' scores tie to float precision).
    fast = _trajectory(False, monkeypatch)
    ref = _trajectory(True, monkeypatch)
    for step_fast, step_ref in zip(fast, ref):
        for key in step_ref:
            assert np.array_equal(step_fast[key], step_ref[key]), key
    # the trajectory is not trivial: attacks started and followed up, and the budget ran out on some row
    attacked_steps = sum(int(s[ATTACKED].any(-1).sum()) for s in fast)
    assert attacked_steps > 20
    assert max(int(s[ATTACK_COUNT].max()) for s in fast) > 12
    assert len({tuple(g) for s in fast for g in s[FOLLOWUP_AGENTS]}) > 2


@pytest.mark.parametrize("t_len", [30, 7])
def test_delta_q_labels_with_shared_window_positions_equal_the_per_window_planner(t_len, monkeypatch):
    """The ΔQ labels (planning transformer in training mode: dropout on) from keys and values computed once per
    episode step equal those of ``forward_last`` on every window, dropout draws included."""
    from marlx.attacks.fit import AttackerModels, _Trainer, victim_dims
    from marlx.attacks.training import WALL_HIDDEN
    from marlx.attacks.transformers import PlanningTransformer
    from marlx.modules.qmix_module import Q_VALUES
    from marlx.runtime.columns import EXECUTED_ACTIONS, MASK
    from ray.rllib.core.columns import Columns

    victim = make_module(n=3, seed=4)
    models = AttackerModels(victim, victim_dims(victim))
    cfg = type("Cfg", (), {"wall_faithful": False, "attack_duration": 3})()
    rng = np.random.default_rng(0)
    b, n, a = 4, 3, 4
    mask = np.ones((b, t_len), np.float32)
    mask[1, t_len - 3:] = 0
    batch = {
        "obs": rng.normal(size=(b, t_len + 1, n, victim.obs_dim)).astype(np.float32),
        "state": rng.normal(size=(b, t_len + 1, victim.state_dim)).astype(np.float32),
        "avail": (rng.random((b, t_len + 1, n, a)) > 0.2).astype(np.float32),
        Columns.ACTIONS: rng.integers(0, a, (b, t_len, n)), EXECUTED_ACTIONS: rng.integers(0, a, (b, t_len, n)),
        ATTACKER_ACTIONS: rng.integers(0, a, (b, t_len, n)), INITIAL_AGENT: rng.integers(0, n, (b, t_len)),
        FOLLOWUP_AGENTS: np.stack([rng.permutation(n)[:2] for _ in range(b * t_len)]).reshape(b, t_len, 2),
        MASK: mask,
    }
    batch = {k: torch.as_tensor(v) for k, v in batch.items()}
    batch["avail"][..., 0] = 1.0
    fwd = {Q_VALUES: torch.randn(b, t_len + 1, n, a), WALL_HIDDEN: torch.randn(b, t_len + 1, n, victim.hidden_dim)}
    models.train()
    assert models.planning_transformer.shares_window_positions()
    labels = []
    for shared in (True, False):
        with monkeypatch.context() as m:
            if not shared:
                m.setattr(PlanningTransformer, "shares_window_positions", lambda self: False)
            w = _Trainer(3).attacker_windows(models, cfg, batch, fwd)
            torch.manual_seed(11)
            with torch.no_grad():
                labels.append(_Trainer(3).delta_q_labels(models, cfg, w))
            labels.append(torch.rand(3))  # the torch generator is where the same draws leave it
    fast, after_fast, ref, after_ref = labels
    assert fast.abs().sum() > 0
    assert torch.allclose(fast, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(after_fast, after_ref)
