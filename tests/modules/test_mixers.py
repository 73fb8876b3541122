"""Mixers and the recurrent agent: monotonicity of QMIX, VDN's sum, agent inputs."""

import torch

from marlx.modules.agent import RNNAgent, agent_inputs
from marlx.modules.mixers import QMixer, VDNMixer, make_mixer


def test_qmix_is_monotonic_in_every_agent_q():
    torch.manual_seed(0)
    mixer = QMixer(n_agents=3, state_dim=7, embed_dim=8, hypernet_layers=2, hypernet_embed=16)
    # make the hypernetworks produce weights of both signs before the abs()
    for p in mixer.parameters():
        torch.nn.init.normal_(p, std=1.0)
    qs = torch.randn(256, 3, requires_grad=True)
    states = torch.randn(256, 7)
    q_tot = mixer(qs, states)
    assert q_tot.shape == (256,)
    (grad,) = torch.autograd.grad(q_tot.sum(), qs)
    assert (grad >= 0).all()
    assert (grad > 0).any()
    # raising one agent's Q never lowers Q_tot
    bumped = qs.detach().clone()
    bumped[:, 1] += 1.0
    assert (mixer(bumped, states) >= q_tot.detach() - 1e-6).all()


def test_qmix_depends_on_state_and_keeps_leading_axes():
    torch.manual_seed(1)
    mixer = QMixer(2, 4)
    qs = torch.randn(5, 6, 2)
    s1, s2 = torch.randn(5, 6, 4), torch.randn(5, 6, 4)
    out = mixer(qs, s1)
    assert out.shape == (5, 6)
    assert not torch.allclose(out, mixer(qs, s2))


def test_vdn_is_the_sum():
    qs = torch.randn(4, 3)
    assert torch.allclose(VDNMixer()(qs, None), qs.sum(-1))
    assert isinstance(make_mixer("vdn", 3, 5), VDNMixer)


def test_one_layer_hypernet_and_unknown_mixer():
    assert QMixer(2, 4, hypernet_layers=1)(torch.zeros(3, 2), torch.zeros(3, 4)).shape == (3,)
    try:
        make_mixer("qplexx", 2, 4)
    except ValueError as e:
        assert "qplexx" in str(e)
    else:
        raise AssertionError("unknown mixer accepted")


def test_agent_inputs_one_hots_and_first_step():
    obs = torch.ones(2, 3, 4)
    x0 = agent_inputs(obs, None, n_actions=5, last_action=True, agent_id=True)
    assert x0.shape == (2, 3, 4 + 5 + 3)
    assert (x0[..., 4:9] == 0).all()  # no previous action at the first step
    assert torch.equal(x0[0, :, 9:], torch.eye(3))
    prev = torch.tensor([[-1.0, 0.0, 4.0], [2.0, 2.0, 1.0]])
    x = agent_inputs(obs, prev, 5, True, False)
    assert x.shape == (2, 3, 9)
    assert (x[0, 0, 4:] == 0).all()  # -1 = none
    assert x[0, 1, 4] == 1 and x[0, 2, 8] == 1 and x[1, 2, 5] == 1
    assert x[..., 4:].sum() == 5


def test_rnn_agent_carries_hidden_state():
    agent = RNNAgent(6, 4, hidden_dim=8)
    x = torch.randn(3, 6)
    h0 = torch.zeros(3, 8)
    q1, h1 = agent(x, h0)
    q2, _ = agent(x, h1)
    assert q1.shape == (3, 4) and h1.shape == (3, 8)
    assert not torch.allclose(q1, q2)
