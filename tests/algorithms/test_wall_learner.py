"""WALL's learner without Ray actors: the RL optimiser leaves the attacker models alone, one update steps the
planning and Q-difference transformers (their losses fall on a fixed batch), short episodes are padded to the
window, and the ΔQ labels follow the stored initial agents and follow-up groups."""

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.policy.sample_batch import DEFAULT_POLICY_ID, MultiAgentBatch, SampleBatch

from marlx.runtime.columns import EXECUTED_ACTIONS, MASK
from marlx.algorithms.wall import WALLConfig
from marlx.runtime.columns import EXECUTED_ACTIONS
from marlx.attacks.wolfpack import ATTACKER_ACTIONS, FOLLOWUP_AGENTS, INITIAL_AGENT
from marlx.envs.registry import make_env


def build(**training):
    env = make_env("builtin/push_box", size=4, box_start_row=1, episode_limit=6)
    cfg = WALLConfig().environment(observation_space=env.observation_space, action_space=env.action_space)
    cfg.training(rnn_hidden_dim=8, mixing_embed_dim=4, hypernet_embed=8, trans_embed_dim=8, **training)
    return cfg, cfg.build_learner(env=env), env


def batch_of(env, b=3, t=6, seed=0):
    rng = np.random.default_rng(seed)
    n, d = env.observation_space["obs"].shape
    s = env.observation_space["state"].shape[0]
    a = int(env.action_space.nvec[0])
    mask = np.ones((b, t), np.float32)
    mask[0, 4:] = 0  # episode 0 ends after 4 steps
    return {
        "obs": rng.normal(size=(b, t + 1, n, d)).astype(np.float32),
        "state": rng.normal(size=(b, t + 1, s)).astype(np.float32),
        "avail": np.ones((b, t + 1, n, a), np.float32),
        Columns.ACTIONS: rng.integers(0, a, (b, t, n)),
        EXECUTED_ACTIONS: rng.integers(0, a, (b, t, n)),
        ATTACKER_ACTIONS: rng.integers(0, a, (b, t, n)),
        INITIAL_AGENT: rng.integers(0, n, (b, t)),
        FOLLOWUP_AGENTS: np.full((b, t, 1), 1 - rng.integers(0, n, (b, t, 1)).clip(0, 1)),
        Columns.REWARDS: rng.normal(size=(b, t)).astype(np.float32),
        Columns.TERMINATEDS: np.zeros((b, t), np.float32),
        MASK: mask,
    }


def test_rl_optimiser_excludes_the_attacker_models():
    cfg, learner, _ = build()
    module = learner.module[DEFAULT_POLICY_ID].unwrapped()
    opt = learner.get_optimizer(DEFAULT_POLICY_ID)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    attacker = {id(p) for p in module.attacker_parameters("qdiff") + module.attacker_parameters("planning")}
    agent = {id(p) for p in module.agent.parameters()} | {id(p) for p in module.mixer.parameters()}
    assert not in_opt & attacker and agent <= in_opt
    assert cfg.epsilon_start == 0.0 and cfg.epsilon_finish == 0.0  # the victim is greedy in attacked episodes
    assert (cfg.num_attack_train, cfg.num_attack_test, cfg.attack_duration, cfg.temperature) == (12, 8, 3, 0.5)


def test_update_trains_both_transformers_and_their_losses_fall():
    torch.manual_seed(0)
    cfg, learner, env = build(wall_planning_lr=3e-3, wall_qdiff_lr=3e-3)
    module = learner.module[DEFAULT_POLICY_ID].unwrapped()
    data = batch_of(env)
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    losses = []
    for _ in range(25):
        res = learner.update(batch=MultiAgentBatch({DEFAULT_POLICY_ID: SampleBatch(data)}, env_steps=16))
        losses.append((res[DEFAULT_POLICY_ID]["wall_planning_loss"].peek(), res[DEFAULT_POLICY_ID]["wall_qdiff_loss"].peek()))
    after = module.state_dict()
    for prefix in ("qdiff_transformer.", "planning_transformer.", "agent.", "mixer."):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)), prefix
    assert np.mean([p for p, _ in losses[-5:]]) < 0.8 * np.mean([p for p, _ in losses[:5]])
    assert np.mean([q for _, q in losses[-5:]]) < np.mean([q for _, q in losses[:5]])


def test_windows_pad_short_episodes_and_labels_follow_stored_agents():
    torch.manual_seed(0)
    cfg, learner, env = build()
    module = learner.module[DEFAULT_POLICY_ID].unwrapped()
    data = batch_of(env)
    b = {k: torch.as_tensor(v) for k, v in data.items()}
    fwd = module.forward_train(b)
    w = learner.attacker_windows(module, cfg, b, fwd)
    assert w["mask"].shape == (3, 20)  # 6 steps padded to the window length, start 0
    assert w["mask"][0].tolist() == [1.0] * 4 + [0.0] * 16 and w["mask"][1].sum() == 6
    assert torch.equal(w["initial"][:, :6], b[INITIAL_AGENT]) and (w["initial"][:, 6:] == module.n_agents).all()
    # the history of window position 2 ends with step 2 and is zero before step 0
    assert torch.allclose(w["state_hist"][1, 2, -3:], b["state"][1, :3]) and (w["state_hist"][1, 2, :-3] == 0).all()
    labels = learner.delta_q_labels(module, cfg, w)
    assert labels.shape == (3, 20) and (labels[:, 6:] == 0).all() and (labels[0, 4:] == 0).all()
    # a different stored initial agent changes the label of that position only through its attack
    b2 = dict(b)
    b2[ATTACKER_ACTIONS] = b[Columns.ACTIONS].clone()  # attack action == intended: k = 0 costs nothing
    w2 = learner.attacker_windows(module, cfg, b2, fwd)
    learner._window_rng.manual_seed(0)
    chosen = fwd["q_values"][:, :6].gather(-1, b[Columns.ACTIONS].unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(w2["normal"][:, :6], sum(
        torch.nn.functional.pad(module.mix(chosen, b["state"][:, :6]), (0, 3))[:, k:k + 6] for k in range(4)).detach())
    assert w2["label_mask"].sum() == 16


def test_wall_config_validation():
    with pytest.raises(ValueError, match="init_attack_step_method"):
        WALLConfig().training(init_attack_step_method="sometimes").validate()
