"""QMIX learner and module without Ray actors: double-Q target, masking of padded steps and unavailable
actions, epsilon-greedy over available actions, and a TD update through RLlib's normal update path."""

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.policy.sample_batch import DEFAULT_POLICY_ID, MultiAgentBatch, SampleBatch

from marlx.algorithms.qmix import QMIXConfig
from marlx.runtime.columns import MASK
from marlx.envs.registry import make_env
from marlx.modules.qmix_module import HIDDEN, PREV_ACTIONS, Q_VALUES, TARGET_Q_VALUES

G = 0.5


def build_learner(mixer="vdn", **training):
    env = make_env("builtin/push_box", size=4, box_start_row=1, episode_limit=6)
    cfg = QMIXConfig().environment(observation_space=env.observation_space, action_space=env.action_space)
    cfg.training(mixer=mixer, gamma=G, rnn_hidden_dim=8, mixing_embed_dim=4, hypernet_embed=8, **training)
    return cfg, cfg.build_learner(env=env), env


def hand_batch(n_agents=2, n_actions=5):
    """B=1, T=2 (+1 padded step T=3): known Q values, avail and rewards."""
    B, T = 1, 3
    avail = np.ones((B, T + 1, n_agents, n_actions), np.float32)
    avail[0, 1, :, 4] = 0  # action 4 unavailable at step 1
    avail[0, 3] = 0  # step 3 is padding
    return {
        "obs": np.zeros((B, T + 1, n_agents, 7), np.float32),
        "state": np.zeros((B, T + 1, 7), np.float32),
        "avail": avail,
        "positions": np.zeros((B, T + 1, n_agents, 2), np.float32),
        Columns.ACTIONS: np.array([[[1, 2], [0, 0], [3, 3]]]),
        Columns.REWARDS: np.array([[1.0, 0.0, 99.0]], np.float32),  # the padded step's reward must not count
        Columns.TERMINATEDS: np.zeros((B, T), np.float32),
        MASK: np.array([[1.0, 1.0, 0.0]], np.float32),  # truncated after 2 steps
    }


def test_double_q_target_masks_unavailable_actions_and_padding():
    cfg, learner, _ = build_learner("vdn")
    batch = {k: torch.as_tensor(v) for k, v in hand_batch().items()}
    q = torch.zeros(1, 4, 2, 5)
    target_q = torch.zeros(1, 4, 2, 5)
    q[0, 0, 0, 1], q[0, 0, 1, 2] = 1.0, 2.0  # chosen at t=0 -> Q_tot = 3
    q[0, 1, :, 4] = 100.0  # best online action at t=1 is UNAVAILABLE: must be skipped
    q[0, 1, :, 3] = 5.0  # best available online action at t=1
    target_q[0, 1, :, 3] = 0.25  # what the target says about it
    target_q[0, 1, :, 1] = 7.0  # target's own max: used only without double Q
    q[0, 1, :, 0] = 0.5  # chosen at t=1 (actions 0, 0) -> Q_tot = 1
    q[0, 2, :, 2] = 9.0  # online best at t=2
    target_q[0, 2, :, 2] = 1.5
    fwd = {Q_VALUES: q, TARGET_Q_VALUES: target_q}
    loss = learner.compute_loss_for_module(module_id=DEFAULT_POLICY_ID, config=cfg, batch=batch, fwd_out=fwd)
    # double Q: y0 = 1 + G * (0.25 + 0.25); y1 = 0 + G * (1.5 + 1.5) (truncated: bootstrap)
    y0, y1 = 1 + G * 0.5, G * 3.0
    expected = ((3.0 - y0) ** 2 + (1.0 - y1) ** 2) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)

    cfg.double_q = False
    loss = learner.compute_loss_for_module(module_id=DEFAULT_POLICY_ID, config=cfg, batch=batch, fwd_out=fwd)
    y0 = 1 + G * 14.0  # max of the target over available actions
    assert loss.item() == pytest.approx(((3.0 - y0) ** 2 + (1.0 - y1) ** 2) / 2, rel=1e-5)


def test_termination_stops_bootstrap_in_loss():
    cfg, learner, _ = build_learner("vdn")
    data = hand_batch()
    data[Columns.TERMINATEDS][0, 1] = 1.0
    batch = {k: torch.as_tensor(v) for k, v in data.items()}
    q = torch.zeros(1, 4, 2, 5)
    target_q = torch.full((1, 4, 2, 5), 3.0)
    loss = learner.compute_loss_for_module(
        module_id=DEFAULT_POLICY_ID, config=cfg, batch=batch, fwd_out={Q_VALUES: q, TARGET_Q_VALUES: target_q}
    )
    # y0 = 1 + G * 6, y1 = 0 (terminated), Q_tot = 0
    assert loss.item() == pytest.approx(((1 + G * 6) ** 2 + 0.0) / 2, rel=1e-5)


def test_update_through_rllib_path_ignores_padding():
    """Real forward passes: changing padded entries leaves the loss unchanged; an update lowers the loss."""
    torch.manual_seed(0)
    cfg, learner, _ = build_learner("qmix", lr=1e-2)
    rng = np.random.default_rng(0)
    data = hand_batch()
    data["obs"] = rng.normal(size=data["obs"].shape).astype(np.float32)
    data["state"] = rng.normal(size=data["state"].shape).astype(np.float32)
    module = learner.module[DEFAULT_POLICY_ID]

    def loss_of(d):
        b = {k: torch.as_tensor(v) for k, v in d.items()}
        with torch.no_grad():
            return learner.compute_loss_for_module(
                module_id=DEFAULT_POLICY_ID, config=cfg, batch=b, fwd_out=module.forward_train(b)
            ).item()

    base = loss_of(data)
    noisy = {k: v.copy() for k, v in data.items()}
    noisy["obs"][0, 3] = 50.0  # padded observation
    noisy["state"][0, 3] = -50.0
    noisy[Columns.ACTIONS][0, 2] = [4, 4]
    noisy[Columns.REWARDS][0, 2] = -1000.0
    assert loss_of(noisy) == pytest.approx(base, rel=1e-6)
    for _ in range(19):
        learner.update(batch=MultiAgentBatch({DEFAULT_POLICY_ID: SampleBatch(data)}, env_steps=2))
    before_last = loss_of(data)
    res = learner.update(batch=MultiAgentBatch({DEFAULT_POLICY_ID: SampleBatch(data)}, env_steps=2))
    assert loss_of(data) < base
    # the logged td_loss is the loss of the batch before that update's step
    assert res[DEFAULT_POLICY_ID]["td_loss"].peek() == pytest.approx(before_last, rel=1e-5)


def test_target_network_hard_update_interval():
    cfg, learner, _ = build_learner("qmix", target_update_interval_episodes=10)
    module = learner.module[DEFAULT_POLICY_ID]
    with torch.no_grad():
        for p in module.agent.parameters():
            p.add_(1.0)
    same = lambda: all(torch.equal(a, b) for a, b in zip(module.agent.parameters(), module.target_agent.parameters()))  # noqa: E731
    learner.after_gradient_based_update(timesteps={"num_episodes_sampled_lifetime": 5})
    assert not same()
    learner.after_gradient_based_update(timesteps={"num_episodes_sampled_lifetime": 12})
    assert same()


def test_soft_target_update():
    cfg, learner, _ = build_learner("vdn", target_update_tau=0.5)
    module = learner.module[DEFAULT_POLICY_ID]
    before = [p.clone() for p in module.target_agent.parameters()]
    with torch.no_grad():
        for p in module.agent.parameters():
            p.add_(2.0)
    learner.after_gradient_based_update(timesteps={})
    for b, t, m in zip(before, module.target_agent.parameters(), module.agent.parameters()):
        assert torch.allclose(t, 0.5 * b + 0.5 * m)


def sampling_batch(env, module, n_envs=64):
    obs = [env.reset(seed=i)[0] for i in range(n_envs)]
    batch_obs = {k: torch.as_tensor(np.stack([o[k] for o in obs])) for k in obs[0]}
    state = {k: v.expand(n_envs, *v.shape).clone() for k, v in module.get_initial_state().items()}
    return {Columns.OBS: batch_obs, Columns.STATE_IN: state}, np.stack([o["avail"] for o in obs])


def test_exploration_only_picks_available_actions_and_inference_is_greedy():
    cfg, learner, env = build_learner("qmix", epsilon_start=1.0, epsilon_finish=0.0, epsilon_anneal_time=100)
    module = learner.module[DEFAULT_POLICY_ID]
    batch, avail = sampling_batch(env, module)
    assert (avail == 0).any()  # agents on the grid edge have unavailable moves
    out = module.forward_exploration(batch, t=0)  # epsilon 1: all random
    acts = out[Columns.ACTIONS].numpy()
    assert np.take_along_axis(avail, acts[..., None], axis=2).all()
    assert len(np.unique(acts)) == 5
    assert out[Columns.STATE_OUT][HIDDEN].shape == (64, 2, 8)
    assert torch.equal(out[Columns.STATE_OUT][PREV_ACTIONS], out[Columns.ACTIONS].float())
    greedy = module.forward_inference(batch)[Columns.ACTIONS]
    late = module.forward_exploration(batch, t=10_000)[Columns.ACTIONS]  # epsilon 0
    assert torch.equal(greedy, late)
    with torch.no_grad():
        q, _ = module.agent_q_values(batch[Columns.OBS],
                                     batch[Columns.STATE_IN][PREV_ACTIONS], batch[Columns.STATE_IN][HIDDEN])
    q[torch.as_tensor(avail) == 0] = -float("inf")
    assert torch.equal(greedy, q.argmax(-1))
    assert module.epsilon(50) == pytest.approx(0.5)


def test_config_validation_and_update_from_dict():
    cfg = QMIXConfig().update_from_dict({"mixer": "vdn", "td_lambda": 0.6, "epsilon_anneal_time": 1000,
                                         "batch_size_episodes": 8})
    assert (cfg.mixer, cfg.td_lambda, cfg.epsilon_anneal_time, cfg.batch_size_episodes) == ("vdn", 0.6, 1000, 8)
    assert cfg.model_config["epsilon_anneal_time"] == 1000
    cfg.environment("builtin/push_box")
    cfg.validate()
    bad = QMIXConfig().environment("builtin/push_box").training(td_lambda=0.5, n_step=3)
    with pytest.raises(ValueError, match="exclude"):
        bad.validate()
    with pytest.raises(ValueError, match="mixer"):
        QMIXConfig().environment("builtin/push_box").training(mixer="sum").validate()


def test_intrinsic_reward_seam_adds_bonus_before_the_target():
    cfg, learner, _ = build_learner("vdn")
    batch = {k: torch.as_tensor(v) for k, v in hand_batch().items()}
    zeros = {Q_VALUES: torch.zeros(1, 4, 2, 5), TARGET_Q_VALUES: torch.zeros(1, 4, 2, 5)}
    seen = {}

    def bonus(module_id, b, fwd_out):
        seen["keys"] = set(b) | set(fwd_out)
        return torch.full_like(b[Columns.REWARDS], 0.5)

    learner.intrinsic_reward = bonus
    loss = learner.compute_loss_for_module(module_id=DEFAULT_POLICY_ID, config=cfg, batch=batch, fwd_out=zeros)
    # Q = 0 everywhere: targets are the rewards plus the bonus on the two real steps (1.5, 0.5)
    assert loss.item() == pytest.approx((1.5**2 + 0.5**2) / 2)
    assert {"obs", "state", Columns.ACTIONS, Q_VALUES} <= seen["keys"]


@pytest.mark.parametrize("b", [0.0, 0.75, -2.0])
def test_constant_intrinsic_bonus_raises_every_one_step_target_by_b(b):
    """``intrinsic: {constant: {value: b}}`` adds exactly b to every one-step TD target (QMIX's seam).

    Hand-made batch (as above): VDN, gamma 0.5, double Q; without a bonus the
    targets are y0 = 1 + 0.5 * 0.5 and y1 = 0.5 * 3 (truncated, bootstrapped) and Q_tot = 3 and 1.
    """
    cfg, learner, _ = build_learner("vdn", intrinsic={"constant": {"value": b}})
    batch = {k: torch.as_tensor(v) for k, v in hand_batch().items()}
    q, target_q = torch.zeros(1, 4, 2, 5), torch.zeros(1, 4, 2, 5)
    q[0, 0, 0, 1], q[0, 0, 1, 2] = 1.0, 2.0
    q[0, 1, :, 3], q[0, 1, :, 0] = 5.0, 0.5
    target_q[0, 1, :, 3] = 0.25
    q[0, 2, :, 2], target_q[0, 2, :, 2] = 9.0, 1.5
    loss = learner.compute_loss_for_module(module_id=DEFAULT_POLICY_ID, config=cfg, batch=batch,
                                           fwd_out={Q_VALUES: q, TARGET_Q_VALUES: target_q})
    y0, y1 = 1 + 0.5 * 0.5 + b, 0.5 * 3.0 + b
    assert loss.item() == pytest.approx(((3.0 - y0) ** 2 + (1.0 - y1) ** 2) / 2, abs=1e-6)
