"""marlx.optim.lowrank: exact form switches, counts, effective rank, schedule, trainers and the RLlib hook."""

import math
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from marlx.errors import MarlxError
from marlx.optim.data import load_digits, mlp
from marlx.optim.lowrank import (
    DynamicRankController,
    DynamicRankConv2d,
    DynamicRankLinear,
    LowRankConfig,
    RankSchedule,
    TrainerConfig,
    convert_to_lowrank,
    dynamic_rank_layers,
    effective_rank,
    switch_form,
    train,
    train_data_parallel,
)

torch.set_num_threads(1)


def _layers(rank_lin=6, rank_conv=5):
    torch.manual_seed(0)
    return [
        (DynamicRankLinear(12, 10, rank_lin), torch.randn(7, 12)),
        (DynamicRankConv2d(4, 9, 3, rank_conv, stride=2, padding=1), torch.randn(3, 4, 9, 9)),
    ]


def _perturb(layer):
    """Give every tensor of the layer random values, so no form is trivially equal to another."""
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()


@pytest.mark.parametrize("start", ["lowrank", "adapter"])
def test_inflate_keeps_the_function(start):
    for layer, x in _layers():
        _perturb(layer)
        layer.form_id.fill_({"lowrank": 0, "adapter": 2}[start])
        y = layer(x)
        ref = nn.functional.linear(x, layer.effective_weight(), layer.bias) if x.dim() == 2 else None
        layer.inflate()
        assert layer.form == "full"
        torch.testing.assert_close(layer(x), y, atol=1e-4, rtol=1e-5)
        if ref is not None:
            torch.testing.assert_close(ref, y, atol=1e-4, rtol=1e-5)


def test_inflate_then_deflate_at_full_rank_is_identity():
    for layer, x in _layers():
        full_rank = min(layer.dense_weight.shape[0], layer.dense_weight[0].numel())
        layer = type(layer).from_dense(nn.Linear(12, 10) if x.dim() == 2 else nn.Conv2d(4, 9, 3, 2, 1), full_rank)
        with torch.no_grad():
            layer.dense_weight.normal_()
        layer.form_id.fill_(1)
        y_full = layer(x)
        layer.deflate("svd")
        assert layer.form == "lowrank"
        torch.testing.assert_close(layer(x), y_full, atol=1e-4, rtol=1e-4)
        layer.inflate()
        torch.testing.assert_close(layer(x), y_full, atol=1e-4, rtol=1e-4)
        # the adapter deflation is exact at any rank (its up-projection starts at zero)
        layer.deflate("adapter")
        assert layer.form == "adapter"
        torch.testing.assert_close(layer(x), y_full, atol=1e-5, rtol=1e-5)


def test_svd_deflate_keeps_top_r_singular_values():
    torch.manual_seed(1)
    q1, _ = torch.linalg.qr(torch.randn(10, 10))
    q2, _ = torch.linalg.qr(torch.randn(12, 10))
    s = torch.tensor([9.0, 7.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.25, 0.1])
    w = q1 @ torch.diag(s) @ q2.T
    layer = DynamicRankLinear(12, 10, rank=4)
    with torch.no_grad():
        layer.dense_weight.copy_(w)
    layer.form_id.fill_(1)
    layer.deflate("svd")
    sv = torch.linalg.svdvals(layer.u @ layer.v)
    torch.testing.assert_close(sv[:4], s[:4], atol=1e-4, rtol=1e-4)
    assert sv[4:].abs().max() < 1e-4
    # the truncation is the best rank-4 approximation: its error is the tail's Frobenius norm
    err = torch.linalg.norm(w - (layer.u @ layer.v).detach())
    assert math.isclose(float(err), float(s[4:].norm()), rel_tol=1e-4)


def test_parameter_counts_and_flops_match_formulas():
    lin = DynamicRankLinear(64, 32, rank=8)
    o, i, r = 32, 64, 8
    assert lin.parameter_count("full") == o * i + o
    assert lin.parameter_count("lowrank") == r * (i + o) + o
    assert lin.parameter_count("adapter") == r * (i + o) + o
    assert lin.parameter_count("adapter", trainable_only=False) == r * (i + o) + o * i + o
    conv = DynamicRankConv2d(16, 24, 3, rank=6, padding=1)
    kk = 16 * 9
    assert conv.parameter_count("lowrank") == 6 * kk + 24 * 6 + 24
    for layer, x, hw in [(lin, torch.randn(5, 64), None), (conv, torch.randn(2, 16, 7, 7), (7, 7))]:
        for form in ("lowrank", "full", "adapter"):
            layer.set_form(form)
            assert sum(p.numel() for p in layer.active_parameters()) == layer.parameter_count()
            with FlopCounterMode(display=False) as counter:
                layer(x)
            macs = layer.macs(batch=x.shape[0]) if hw is None else layer.macs(batch=x.shape[0], out_hw=hw)
            assert counter.get_total_flops() == 2 * macs, form


def test_effective_rank_of_known_matrices():
    assert effective_rank(torch.eye(5)) == pytest.approx(5.0)
    assert effective_rank(torch.diag(torch.tensor([2.0, 2.0, 0.0, 0.0]))) == pytest.approx(2.0)
    assert effective_rank(torch.outer(torch.randn(6), torch.randn(4))) == pytest.approx(1.0, abs=1e-6)
    p = np.array([0.75, 0.25])
    assert effective_rank(torch.diag(torch.tensor([3.0, 1.0]))) == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert effective_rank(torch.zeros(3, 3)) == 0.0


def test_schedule_switches_at_configured_points():
    sched = RankSchedule()
    assert sched.boundaries == (55, 120)
    forms = [sched.form_at(t) for t in range(150)]
    assert forms.index("full") == 55 and forms[54] == "lowrank"
    assert forms[119] == "full" and forms[120:] == ["lowrank"] * 30
    assert RankSchedule(()).form_at(1000) == "lowrank"
    assert RankSchedule.scaled(30).boundaries == (11, 24)
    assert RankSchedule.short_full_phase(100, start=0.5, length=0.1).boundaries == (50, 60)
    with pytest.raises(MarlxError):
        RankSchedule((5, 3))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32))
    ctl = DynamicRankController(LowRankConfig(boundaries=(2, 4, 5), rank_ratio=0.25, deflation="svd"))
    assert ctl.prepare(model) == ["0", "2"]
    seen = []
    for _ in range(7):
        out = ctl.end_of_unit({"m": model})
        seen.append((ctl.units_done, model[0].form, bool(out["switched"])))
    assert seen == [(1, "lowrank", False), (2, "full", True), (3, "full", False), (4, "lowrank", True),
                    (5, "full", True), (6, "full", False), (7, "full", False)]
    assert len(ctl.monitor.history["m/0"]) == 7


def test_switch_drops_optimizer_state_of_switched_weights_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    convert_to_lowrank(model, rank=4, min_rank=1, include=["0"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(32, 16), torch.randint(0, 3, (32,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    low = model[0]
    assert low.u in opt.state and low.v in opt.state and low.dense_weight not in opt.state  # idle: no grad, no state
    switch_form(model, "full", optimizers=[opt])
    assert low.u not in opt.state and low.v not in opt.state
    assert low.bias in opt.state and model[2].weight in opt.state and opt.state[model[2].weight]["step"] == 3


def test_only_the_active_form_trains():
    torch.manual_seed(0)
    layer = DynamicRankLinear(8, 8, rank=2)
    x = torch.randn(4, 8)
    expected = {"lowrank": {"u", "v", "bias"}, "full": {"dense_weight", "bias"},
                "adapter": {"adapter_down", "adapter_up", "bias"}}  # the frozen dense W gets no gradient
    for form, trained in expected.items():
        layer.set_form(form)
        layer.zero_grad(set_to_none=True)
        layer(x).pow(2).sum().backward()
        assert {n for n, p in layer.named_parameters() if p.grad is not None} == trained, form
        assert {n for n, p in layer.named_parameters() if p in set(layer.active_parameters())} == trained


def test_state_dict_restores_form_and_plain_copies_load_effective_weight():
    torch.manual_seed(0)
    make = lambda: nn.Sequential(nn.Linear(10, 24), nn.ReLU(), nn.Linear(24, 24))  # noqa: E731
    model, plain = make(), make()
    assert convert_to_lowrank(model, rank=6, min_rank=1) == ["0", "2"]
    x = torch.randn(5, 10)
    for form in ("full", "adapter", "lowrank"):
        for layer in dynamic_rank_layers(model).values():
            layer.set_form(form)
            _perturb(layer)  # every tensor random (a trained adapter is non-zero)
        state = model.state_dict()
        fresh = make()
        convert_to_lowrank(fresh, rank=6, min_rank=1)
        fresh.load_state_dict(state)  # strict: the plain 'weight' export is consumed, nothing unexpected
        assert fresh[2].form == form
        torch.testing.assert_close(fresh(x), model(x))
        missing, _ = plain.load_state_dict(state, strict=False)
        assert not missing
        torch.testing.assert_close(plain(x), model(x), atol=1e-4, rtol=1e-5)
    # and a plain dense state loads into a converted model, which keeps its form
    dense = make()
    switch_form(model, "full")
    model.load_state_dict(dense.state_dict())
    assert model[2].form == "full"
    torch.testing.assert_close(model(x), dense(x))


def test_layer_selection_and_clear_errors():
    net = nn.Sequential(nn.Conv2d(1, 32, 3), nn.Conv2d(32, 64, 3), nn.Flatten(), nn.Linear(256, 128), nn.Linear(128, 10))
    # conv 1->32: r (9 + 32) >= 9 * 32, not cheaper; the 10-way head: rank 5 < min_rank 8
    assert convert_to_lowrank(net) == ["1", "3"]
    net = nn.Sequential(nn.Linear(256, 128), nn.Linear(128, 128))
    assert convert_to_lowrank(net, rank_ratio=0.25, exclude=["1"]) == ["0"]
    net = nn.Sequential(nn.Linear(64, 64))
    assert convert_to_lowrank(net) == []  # r = 32: 32 * 128 = 64 * 64, no saving
    with pytest.raises(MarlxError, match="no layer"):
        DynamicRankController(LowRankConfig()).prepare(nn.Sequential(nn.Linear(4, 2)))
    with pytest.raises(MarlxError, match="unknown lowrank option"):
        LowRankConfig.from_dict({"rank_ration": 0.5})
    with pytest.raises(MarlxError):
        LowRankConfig(deflation="qr")
    with pytest.raises(MarlxError):
        DynamicRankLinear(4, 4, rank=5)


def test_tensorboard_gets_effective_ranks(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32))
    ctl = DynamicRankController(LowRankConfig(rank=4, min_rank=1, boundaries=(1,), logdir=str(tmp_path)))
    ctl.prepare(model)
    out = ctl.end_of_unit({"m": model})
    assert out["erank"]["m/0"] <= 4.0 + 1e-6  # measured right after inflation: the dense W is still rank 4
    ctl.monitor.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert "erank/m/0" in acc.Tags()["scalars"]
    assert acc.Scalars("lowrank/full_phase")[0].value == 1.0


@pytest.fixture(scope="module")
def digits():
    return load_digits(image=False)


def test_standalone_dynamic_rank_training(digits):
    tr, te = digits
    model_fn = lambda: mlp(64, 10, hidden=64)  # noqa: E731
    cfg = TrainerConfig(epochs=6, batch_size=64, lr=0.1, weight_decay=0.0)
    res = train(model_fn, tr, te, cfg, LowRankConfig(rank_ratio=0.25, boundaries=(2, 4)))
    assert res.forms == ["lowrank", "lowrank", "full", "full", "lowrank", "lowrank"]
    assert dynamic_rank_layers(res.model)["3"].form == "adapter"
    assert res.final_accuracy > 0.85
    assert [t for t, _ in res.erank["model/3"]] == list(range(1, 7))
    # the low-rank phases cap the effective rank at r = 16; the full phase can exceed it
    assert max(v for t, v in res.erank["model/3"] if t in (1, 2)) <= 16 + 1e-6


@pytest.mark.slow
def test_data_parallel_equals_single_process(ray_session, digits):
    tr, te = digits
    model_fn = lambda: mlp(64, 10, hidden=64)  # noqa: E731
    cfg = TrainerConfig(epochs=3, batch_size=128, lr=0.05, weight_decay=1e-4)
    low = LowRankConfig(rank_ratio=0.25, boundaries=(1, 2))  # switches twice: full, then adapter
    single = train(model_fn, tr, te, cfg, low)
    dp = train_data_parallel(model_fn, tr, te, cfg, low, num_workers=2)
    assert dp.forms == single.forms == ["lowrank", "full", "lowrank"]
    a, b = single.model.state_dict(), dp.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4)
    assert dp.final_accuracy == pytest.approx(single.final_accuracy, abs=0.01)


@pytest.mark.slow
def test_rllib_ppo_trains_across_switches_and_checkpoint_restores_form(ray_session, tmp_path):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from ray.rllib.algorithms.algorithm import Algorithm
    from ray.rllib.algorithms.ppo import PPOConfig

    from marlx.optim.rllib_hooks import apply_optim

    cfg = (
        PPOConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=1)
        .training(train_batch_size=128, minibatch_size=64, num_epochs=1, lr=3e-4)
        .rl_module(model_config={"fcnet_hiddens": [64, 64]})
        .debugging(seed=0)
    )
    # iterations 1-2 low rank, 3 full rank, 4.. low rank again through the adapter (the reference deflation)
    apply_optim(cfg, {"lowrank": {"rank_ratio": 0.25, "min_rank": 4, "boundaries": [2, 3]}})
    algo = cfg.build_algo()
    learner = algo.learner_group._learner
    module = learner.module["default_policy"]
    layers = dynamic_rank_layers(module)
    assert set(layers) == {"encoder.actor_encoder.net.mlp.2", "encoder.critic_encoder.net.mlp.2"}
    actor = layers["encoder.actor_encoder.net.mlp.2"]
    obs = torch.randn(6, 4)

    def remote_logits(runner):
        with torch.no_grad():
            return runner.module.forward_inference({"obs": obs})["action_dist_inputs"].numpy()

    expected = ["lowrank", "full", "adapter", "adapter"]  # the form after iterations 1..4
    ckpt = None
    for it, form in enumerate(expected, start=1):
        before = {n: p.detach().clone() for n, p in actor.named_parameters()}
        trained_form = actor.form
        result = algo.train()
        assert actor.form == form, it
        changed = {n for n, p in actor.named_parameters() if not torch.equal(p, before[n])}
        if trained_form == form == "lowrank":
            assert {"u", "v"} <= changed and "dense_weight" not in changed
        if trained_form == form == "full":
            assert "dense_weight" in changed and not {"u", "v"} & changed
        if trained_form == form == "adapter":
            assert {"adapter_down", "adapter_up"} <= changed and "dense_weight" not in changed
        # the remote env runner samples with exactly the learner's function after every sync
        with torch.no_grad():
            ref = module.forward_inference({"obs": obs})["action_dist_inputs"].numpy()
        (remote,) = algo.env_runner_group.foreach_env_runner(remote_logits, local_env_runner=False)
        np.testing.assert_allclose(remote, ref, atol=1e-5)
        erank = result["learners"]["default_policy"]["lowrank_erank"]
        assert 1.0 <= erank["encoder.actor_encoder.net.mlp.2"] <= 64.0
        assert np.isfinite(result["learners"]["default_policy"]["total_loss"])
        assert result["env_runners"]["num_env_steps_sampled"] >= 128
        if form == "full" and ckpt is None:
            ckpt = str(tmp_path / "ckpt")
            algo.save_to_path(ckpt)
            saved_ref = ref
    algo.stop()

    restored = Algorithm.from_checkpoint(ckpt)
    r_learner = restored.learner_group._learner
    r_actor = dynamic_rank_layers(r_learner.module["default_policy"])["encoder.actor_encoder.net.mlp.2"]
    assert r_actor.form == "full"  # a fresh build would be low rank: the checkpoint restored the form
    assert r_learner._optim_hooks[0].controller.units_done == 2
    with torch.no_grad():
        out = r_learner.module["default_policy"].forward_inference({"obs": obs})["action_dist_inputs"].numpy()
    np.testing.assert_allclose(out, saved_ref, atol=1e-6)
    dense_before = r_actor.dense_weight.detach().clone()
    restored.train()  # iteration 3 trains the restored dense form, then the schedule deflates
    assert not torch.equal(r_actor.dense_weight, dense_before)
    assert r_actor.form == "adapter" and r_learner._optim_hooks[0].controller.units_done == 3
    restored.stop()
