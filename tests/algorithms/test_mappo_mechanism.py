"""MAPPO's estimators and losses against hand-computed values (spec shared/specs/mappo.md §4.4).

No Ray: the functions of marlx/algorithms/mappo/losses.py and the module's critic inputs on fixed tensors.
"""

import numpy as np
import pytest
import torch
from gymnasium import spaces
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from marlx.algorithms.mappo.losses import (
    gae, huber, joint_policy_loss, normalize_advantages, policy_loss, value_loss)
from marlx.modules.mappo_module import MAPPOTeamModule, ValueNorm, alive_mask

GAMMA, LAM = 0.9, 0.5


def one_fragment(terminated=False, truncated=False):
    """One 3-step fragment, 2 agents: team rewards [1, 0, 2], per-agent values V_i(s_0..s_3)."""
    rewards = torch.tensor([1.0, 0.0, 2.0]).view(1, 3, 1).expand(1, 3, 2)
    values = torch.tensor([[0.5, 0.0], [1.0, -1.0], [2.0, 1.0], [4.0, 3.0]]).unsqueeze(0)  # [1, 4, 2]
    term = torch.tensor([[0.0, 0.0, float(terminated)]])
    trunc = torch.tensor([[0.0, 0.0, float(truncated)]])
    return rewards, values, term, trunc, torch.ones(1, 3)


def test_gae_per_agent_with_a_truncation_bootstraps_the_final_value():
    # agent 0: d2 = 2 + .9*4 - 2 = 3.6, d1 = .9*2 - 1 = .8, d0 = 1 + .9*1 - .5 = 1.4
    #          A2 = 3.6, A1 = .8 + .45*3.6 = 2.42, A0 = 1.4 + .45*2.42 = 2.489
    # agent 1: d2 = 2 + .9*3 - 1 = 3.7, d1 = .9*1 + 1 = 1.9, d0 = 1 - .9 - 0 = .1
    #          A2 = 3.7, A1 = 1.9 + .45*3.7 = 3.565, A0 = .1 + .45*3.565 = 1.70425
    adv, ret = gae(*one_fragment(truncated=True), GAMMA, LAM, bootstrap_on_truncation=True)
    expected = torch.tensor([[2.489, 1.70425], [2.42, 3.565], [3.6, 3.7]])
    assert torch.allclose(adv[0], expected, atol=1e-5)
    values = one_fragment()[1]
    assert torch.allclose(ret, adv + values[:, :3])


def test_gae_time_limit_as_terminal_and_termination_drop_the_final_value():
    # agent 0 without the bootstrap: A2 = 2 - 2 = 0, A1 = .8, A0 = 1.4 + .45*.8 = 1.76
    # agent 1: A2 = 2 - 1 = 1, A1 = 1.9 + .45 = 2.35, A0 = .1 + .45*2.35 = 1.1575
    expected = torch.tensor([[1.76, 1.1575], [0.8, 2.35], [0.0, 1.0]])
    adv_t, _ = gae(*one_fragment(truncated=True), GAMMA, LAM, bootstrap_on_truncation=False)
    adv_d, _ = gae(*one_fragment(terminated=True), GAMMA, LAM, bootstrap_on_truncation=True)
    assert torch.allclose(adv_t[0], expected, atol=1e-5) and torch.allclose(adv_d[0], expected, atol=1e-5)


def test_gae_unfinished_fragment_bootstraps_and_padding_stays_out():
    # row 0: unfinished 3-step fragment (bootstrap V(s_3)) = the truncation case; row 1: a 2-step episode that
    # terminated, padded to 3 steps: its advantages equal a standalone 2-step computation, the padded step is 0
    r, v, term, trunc, mask = one_fragment()
    rewards = torch.cat([r, r])
    values = torch.cat([v, v])
    term2 = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    trunc2 = torch.zeros(2, 3)
    mask2 = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, _ = gae(rewards, values, term2, trunc2, mask2, GAMMA, LAM)
    assert torch.allclose(adv[0], torch.tensor([[2.489, 1.70425], [2.42, 3.565], [3.6, 3.7]]), atol=1e-5)
    # row 1, agent 0: A1 = 0 - 1 = -1 (terminal), A0 = 1.4 + .45*(-1) = .95; agent 1: A1 = 1, A0 = .1 + .45 = .55
    assert torch.allclose(adv[1], torch.tensor([[0.95, 0.55], [-1.0, 1.0], [0.0, 0.0]]), atol=1e-5)


def test_advantages_are_normalised_over_alive_rows_only():
    adv = torch.tensor([[[1.0, 100.0], [2.0, -50.0], [3.0, 7.0]]])  # agent 1 is dead throughout
    alive = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]])
    out = normalize_advantages(adv, alive)
    std = np.sqrt(2 / 3)  # population std of 1, 2, 3
    assert torch.allclose(out[0, :, 0], torch.tensor([-1.0, 0.0, 1.0]) / (std + 1e-5), atol=1e-5)
    assert torch.all(out[0, :, 1] == 0)
    # the dead agent's rows do not shift the statistics: dropping them gives the same values
    assert torch.allclose(normalize_advantages(adv[..., :1], alive[..., :1])[..., 0], out[..., 0])


def test_per_agent_clipping_differs_from_joint_clipping():
    # each agent's ratio is 1.1 (inside 1 +- 0.2), the joint ratio 1.21 is clipped to 1.2; advantage 1
    logp_old = torch.log(torch.tensor([[0.5, 0.5]]))
    logp = logp_old + np.log(1.1)
    adv = torch.ones(1, 2)
    per_agent, clip_frac = policy_loss(logp, logp_old, adv, torch.ones(1, 2), clip=0.2)
    joint = joint_policy_loss(logp, logp_old, adv[:, 0], torch.ones(1), clip=0.2)
    assert per_agent.item() == pytest.approx(-1.1) and clip_frac.item() == 0.0
    assert joint.item() == pytest.approx(-1.2)
    # and the gradients differ: the joint surrogate is flat (clipped), the per-agent one is not
    lp = logp.clone().requires_grad_(True)
    policy_loss(lp, logp_old, adv, torch.ones(1, 2), 0.2)[0].backward()
    assert torch.all(lp.grad != 0)
    lp2 = logp.clone().requires_grad_(True)
    joint_policy_loss(lp2, logp_old, adv[:, 0], torch.ones(1), 0.2).backward()
    assert torch.all(lp2.grad == 0)


def test_policy_loss_ignores_dead_agents():
    logp_old = torch.zeros(1, 2)
    logp = torch.tensor([[0.0, 5.0]])
    adv = torch.tensor([[2.0, -3.0]])
    loss, _ = policy_loss(logp, logp_old, adv, torch.tensor([[1.0, 0.0]]), clip=0.2)
    assert loss.item() == pytest.approx(-2.0)


def test_huber_values():
    e = torch.tensor([0.0, 3.0, -3.0, 10.0, 15.0, -15.0])
    assert torch.allclose(huber(e, 10.0), torch.tensor([0.0, 4.5, 4.5, 50.0, 100.0, 100.0]))


def test_value_clip_loss_is_the_max_of_the_two_huber_terms():
    # element 0: V = 5, V_old = 0 -> V_clip = 0.2; ret 20: H(15) = 100, H(19.8) = 148 -> 148
    # element 1: V = 1, V_old = 0.9 -> V_clip = 1.0; ret 1.5: both 0.125
    # element 2: V = -1, V_old = 0 -> V_clip = -0.2; ret -1.1: H(-0.1) = .005, H(-0.9) = .405 -> .405
    values = torch.tensor([5.0, 1.0, -1.0])
    old = torch.tensor([0.0, 0.9, 0.0])
    ret = torch.tensor([20.0, 1.5, -1.1])
    loss = value_loss(values, old, ret, torch.ones(3), clip=0.2, huber_delta=10.0)
    assert loss.item() == pytest.approx((148.0 + 0.125 + 0.405) / 3, rel=1e-5)
    terms = torch.max(huber(ret - values, 10.0), huber(ret - (old + (values - old).clamp(-0.2, 0.2)), 10.0))
    assert loss.item() == pytest.approx(terms.mean().item())
    unclipped = value_loss(values, old, ret, torch.ones(3), clip=None, huber_delta=10.0)
    assert unclipped.item() == pytest.approx((100.0 + 0.125 + 0.005) / 3, rel=1e-5)


def test_valuenorm_round_trip_and_debiased_statistics():
    norm = ValueNorm(beta=0.99999)
    x = torch.tensor([1.0, 2.0, 3.0, 10.0])
    norm.update(x)
    mean, var = norm.mean_var()
    # one update: the debiased mean and variance are the batch's own (population variance 12.5)
    assert mean.item() == pytest.approx(4.0, rel=1e-4) and var.item() == pytest.approx(12.5, rel=1e-3)
    y = torch.tensor([-7.0, 0.0, 4.0, 123.0])
    assert torch.allclose(norm.denormalize(norm.normalize(y)), y, atol=1e-4)
    assert torch.allclose(norm.normalize(torch.tensor(4.0)), torch.tensor(0.0), atol=1e-4)
    # masked update: rows outside the mask do not count
    m = ValueNorm()
    m.update(torch.tensor([1.0, 3.0, 1000.0]), torch.tensor([1.0, 1.0, 0.0]))
    assert m.mean_var()[0].item() == pytest.approx(2.0, rel=1e-4)
    # variance floor 1e-2
    c = ValueNorm()
    c.update(torch.full((4,), 5.0))
    assert c.mean_var()[1].item() == pytest.approx(1e-2)


def make_module(critic_input="state_id", death_mask=True, n=3, d=4, s=5, a=4, extra=None):
    obs_space = spaces.Dict({
        "obs": spaces.Box(-1, 1, (n, d), np.float32), "state": spaces.Box(-1, 1, (s,), np.float32),
        "avail": spaces.Box(0, 1, (n, a), np.float32), **(extra or {})})
    spec = RLModuleSpec(module_class=MAPPOTeamModule, observation_space=obs_space,
                        action_space=spaces.MultiDiscrete([a] * n),
                        model_config={"critic_input": critic_input, "death_mask": death_mask, "hidden_size": 8})
    return spec.build()


def team_obs(n=3, d=4, s=5, a=4, dead=(1,)):
    torch.manual_seed(0)
    avail = torch.ones(2, n, a)
    for i in dead:
        avail[:, i] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # only the no-op: dead (SMAC/SMAX convention)
    return {"obs": torch.rand(2, n, d) + 0.5, "state": torch.rand(2, s) + 0.5, "avail": avail}


def test_death_masking_zeroes_the_critic_input_but_keeps_the_id():
    obs = team_obs()
    assert alive_mask(obs)[0].tolist() == [1.0, 0.0, 1.0]
    for critic_input, width in (("state_id", 5), ("state_obs_id", 9), ("obs_id", 4)):
        x = make_module(critic_input).critic_inputs(obs)  # [2, n, width + n]
        assert x.shape == (2, 3, width + 3)
        assert torch.all(x[:, 1, :width] == 0), critic_input
        assert torch.equal(x[:, 1, width:], torch.tensor([0.0, 1.0, 0.0]).expand(2, 3))
        assert torch.all(x[:, 0, :width] > 0) and torch.equal(x[:, 0, width:], torch.tensor([1.0, 0, 0]).expand(2, 3))
    no_mask = make_module("state_id", death_mask=False).critic_inputs(obs)
    assert torch.all(no_mask[:, 1, :5] > 0)
    # an explicit alive key wins over the avail rule
    obs_alive = dict(obs, alive=torch.ones(2, 3))
    assert torch.all(make_module("state_id").critic_inputs(obs_alive)[:, 1, :5] > 0)


def test_state_critic_gives_one_team_value_and_agent_state_needs_the_key():
    m = make_module("state")
    v = m.values(team_obs())
    assert v.shape == (2, 3) and torch.all(v == v[:, :1])
    with pytest.raises(ValueError, match="agent_state"):
        make_module("agent_state")
    m = make_module("agent_state", extra={"agent_state": spaces.Box(-1, 1, (3, 6), np.float32)})
    obs = dict(team_obs(), agent_state=torch.ones(2, 3, 6))
    x = m.critic_inputs(obs)
    assert x.shape == (2, 3, 9) and torch.all(x[:, 1, :6] == 0) and torch.all(x[:, 0, :6] == 1)


def test_actor_masks_unavailable_actions_and_greedy_is_per_agent_argmax():
    m = make_module()
    m.eval()
    obs = team_obs(dead=(1,))
    from ray.rllib.core.columns import Columns
    state = {"h_pi": torch.zeros(2, 3, 8)}
    out = m._forward_exploration({Columns.OBS: obs, Columns.STATE_IN: state})
    assert torch.all(out[Columns.ACTIONS][:, 1] == 0) and out["action_logp"].shape == (2, 3)
    assert torch.allclose(out["action_logp"][:, 1], torch.zeros(2), atol=1e-6)  # one available action
    greedy = m._forward_inference({Columns.OBS: obs, Columns.STATE_IN: state})
    logits, _ = m.actor_step(obs, state["h_pi"])
    assert torch.equal(greedy[Columns.ACTIONS], logits.argmax(-1))
