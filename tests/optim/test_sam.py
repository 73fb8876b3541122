"""SAM family: numerical checks of SAM, layer-wise light SAM, asynchronous SAM, AMP, BatchNorm, DDP and the RLlib hook."""

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from marlx.errors import ConfigKeyError, MarlxError, UnknownNameError
from marlx.optim.data import load_digits, mlp, small_cnn
from marlx.optim.sam import (
    SAM,
    AsyncSAM,
    LayerwiseSAM,
    PerturbationWorker,
    SAMConfig,
    SharpnessStep,
    StaleGradientPipeline,
    ThreadWorker,
)

LR, RHO = 0.1, 0.05


def _batch(seed=0, n=32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)


def _model(kind="mlp", seed=0):
    torch.manual_seed(seed)
    m = mlp(64, 10, hidden=16, depth=2) if kind == "mlp" else small_cnn(width=4)
    return m.double()


def _grads(model, x, y, params=None):
    params = list(model.parameters()) if params is None else params
    return torch.autograd.grad(F.cross_entropy(model(x), y), params)


def _sam_reference(model, x, y, chosen=None, alpha=1.0):
    """w - lr * g_mix with g_mix = grad at w + rho g_S/||g_S|| on the chosen parameters (all if None)."""
    ref = copy.deepcopy(model)
    params = list(ref.parameters())
    chosen = set(range(len(params))) if chosen is None else set(chosen)
    g = _grads(ref, x, y)
    norm = torch.sqrt(sum((g[i] ** 2).sum() for i in chosen))
    with torch.no_grad():
        for i in chosen:
            params[i] += RHO * g[i] / norm
    g2 = _grads(ref, x, y)
    with torch.no_grad():
        for i in chosen:
            params[i] -= RHO * g[i] / norm
    expected = []
    for i, p in enumerate(params):
        gi = (1 - alpha) * g[i] + alpha * g2[i] if i in chosen else g[i]
        expected.append(p.detach() - LR * gi)
    return expected


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=LR)


def _assert_params(model, expected, atol=1e-10):
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), e, atol=atol, rtol=0)


# ------------------------------------------------------------------------------------------- SAM
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_sam_update_is_w_minus_lr_grad_at_ascent_point(kind):
    model, (x, y) = _model(kind), _batch()
    expected = _sam_reference(model, x, y)
    SAM(model, _sgd(model), SAMConfig(rho=RHO)).step(x, y)
    _assert_params(model, expected)
    # and it is not the SGD update
    plain = _model(kind)
    SharpnessStep(plain, _sgd(plain)).step(x, y)
    assert any((p - q).abs().max() > 1e-6 for p, q in zip(model.parameters(), plain.parameters()))


# ------------------------------------------------------------------------------------- layer-wise
@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_layerwise_perturbs_only_the_critical_layer(alpha):
    model, (x, y) = _model(), _batch(1)
    g = _grads(model, x, y)
    # layers of the MLP: (weight, bias) pairs 0-1, 2-3, 4-5; the critical one has the largest gradient norm
    layer_norms = [torch.sqrt((g[2 * k] ** 2).sum() + (g[2 * k + 1] ** 2).sum()).item() for k in range(3)]
    k = max(range(3), key=layer_norms.__getitem__)
    expected = _sam_reference(model, x, y, chosen=[2 * k, 2 * k + 1], alpha=alpha)
    step = LayerwiseSAM(model, _sgd(model), SAMConfig(variant="layerwise", rho=RHO, layers=1, alpha=alpha))
    step.step(x, y)
    assert step.selected == [["1", "3", "5"][k]]
    _assert_params(model, expected)


def test_critical_layer_selection_modes():
    from marlx.optim.sam import critical_layers

    groups = {"in": [torch.zeros(100)], "mid": [torch.zeros(4)], "out": [torch.zeros(1)]}
    grads = {"in": [torch.full((100,), 0.3)], "mid": [torch.full((4,), 1.0)], "out": [torch.full((1,), 0.5)]}
    # norms 3.0, 2.0, 0.5; per-element (rms) 0.3, 1.0, 0.5
    assert critical_layers(groups, grads, 1) == ["in"]
    assert critical_layers(groups, grads, 2, "grad_norm") == ["in", "mid"]
    assert critical_layers(groups, grads, 2, "rms") == ["mid", "out"]
    assert critical_layers(groups, grads, 1, "output") == ["out"]
    grads["out"] = [torch.full((1,), float("nan"))]
    assert critical_layers(groups, grads, 1) == ["out"]  # a NaN gradient is never hidden


def test_layerwise_with_all_layers_equals_sam():
    a, b, (x, y) = _model("cnn"), _model("cnn"), _batch(2)
    sa = SAM(a, _sgd(a), SAMConfig(rho=RHO))
    sb = LayerwiseSAM(b, _sgd(b), SAMConfig(variant="layerwise", rho=RHO, layers=100))
    for s in range(3):
        x, y = _batch(10 + s)
        sa.step(x, y), sb.step(x, y)
    _assert_params(b, [p.detach() for p in a.parameters()])


def test_layerwise_perturb_every_reuses_the_orthogonal_component():
    """perturb_every=2: step 0 is the paper's layer-wise SAM step; step 1 runs no perturbed pass and adds
    alpha * reuse_alpha * ||g_S|| / ||g_v|| * g_v (g_v: step 0's perturbed gradient orthogonal to its g_S)."""
    model, (x0, y0) = _model(), _batch(3)
    cfg = SAMConfig(variant="layerwise", rho=RHO, layers=1, perturb_every=2, reuse_alpha=0.7)
    step = LayerwiseSAM(model, _sgd(model), cfg)
    ref = copy.deepcopy(model)
    expected = _sam_reference(ref, x0, y0, chosen=_chosen(ref, x0, y0))
    # the orthogonal component, by hand, at step 0's weights
    idx = _chosen(ref, x0, y0)
    params = list(ref.parameters())
    g = _grads(ref, x0, y0)
    norm = torch.sqrt(sum((g[i] ** 2).sum() for i in idx))
    with torch.no_grad():
        for i in idx:
            params[i] += RHO * g[i] / norm
    g2 = _grads(ref, x0, y0)
    coef = sum((g2[i] * g[i]).sum() for i in idx) / sum((g[i] ** 2).sum() for i in idx)
    gv = {i: g2[i] - coef * g[i] for i in idx}
    step.step(x0, y0)
    _assert_params(model, expected)
    # step 1: one clean pass, plain gradient elsewhere, the reuse term on the chosen layer
    x1, y1 = _batch(4)
    before = [p.detach().clone() for p in model.parameters()]
    h = _grads(model, x1, y1)
    scale = 0.7 * torch.sqrt(sum((h[i] ** 2).sum() for i in idx)) / torch.sqrt(sum((gv[i] ** 2).sum() for i in idx))
    want = [b - LR * (h[i] + scale * gv[i] if i in idx else h[i]) for i, b in enumerate(before)]
    assert max((LR * scale * gv[i]).abs().max().item() for i in idx) > 1e-4  # the reuse term is visible
    step.step(x1, y1)
    _assert_params(model, want, atol=1e-8)  # ascent_step's float32 norm at step 0 moves g_v by ~1e-9
    # step 2 runs the perturbed pass again: the reference SAM step at step 2's weights
    x2, y2 = _batch(5)
    expected = _sam_reference(model, x2, y2, chosen=idx)
    step.step(x2, y2)
    _assert_params(model, expected)


def _chosen(model, x, y):
    """Parameter indices of the MLP layer with the largest gradient norm (layers = (weight, bias) pairs)."""
    g = _grads(model, x, y)
    norms = [torch.sqrt((g[2 * k] ** 2).sum() + (g[2 * k + 1] ** 2).sum()).item() for k in range(3)]
    k = max(range(3), key=norms.__getitem__)
    return [2 * k, 2 * k + 1]


def test_layerwise_prefix_reuse_gives_the_same_update():
    a, b = _model("cnn"), _model("cnn")
    cfg = dict(variant="layerwise", rho=RHO, layers=2, refresh_every=1)
    sa = LayerwiseSAM(a, _sgd(a), SAMConfig(**cfg, reuse_prefix=True))
    sb = LayerwiseSAM(b, _sgd(b), SAMConfig(**cfg, reuse_prefix=False))
    for s in range(3):
        x, y = _batch(20 + s)
        sa.step(x, y), sb.step(x, y)
    assert sa._children is not None and sb._children is None
    _assert_params(b, [p.detach() for p in a.parameters()])


# ------------------------------------------------------------------------------------------ async
@pytest.mark.parametrize("backend", ["inline", "thread"])
def test_async_sam_with_staleness_zero_equals_sam(backend):
    a, b = _model("cnn"), _model("cnn")
    worker = PerturbationWorker(lambda: _model("cnn", seed=99))
    if backend == "thread":
        worker = ThreadWorker(worker)
    sa = SAM(a, _sgd(a), SAMConfig(rho=RHO))
    sb = AsyncSAM(b, _sgd(b), SAMConfig(variant="async", rho=RHO, staleness=0), source=StaleGradientPipeline(worker, 0))
    for s in range(3):
        x, y = _batch(30 + s)
        sa.step(x, y), sb.step(x, y, perturb_batch=(x, y))
    _assert_params(b, [p.detach() for p in a.parameters()])


def test_async_sam_uses_the_gradient_of_stale_weights_on_another_batch():
    model = _model()
    worker = PerturbationWorker(lambda: _model(seed=5))
    step = AsyncSAM(model, _sgd(model), SAMConfig(variant="async", rho=RHO, staleness=1),
                    source=StaleGradientPipeline(worker, 1))
    (x0, y0), (p0x, p0y), (x1, y1) = _batch(40), _batch(41), _batch(42)
    w0 = copy.deepcopy(model)
    step.step(x0, y0, perturb_batch=(p0x, p0y))  # no perturbation yet: plain step
    _assert_params(model, [p.detach() - LR * g for p, g in zip(w0.parameters(), _grads(w0, x0, y0))])
    w1 = copy.deepcopy(model)
    g_stale = _grads(w0, p0x, p0y)  # at w_0, on the perturbation batch
    norm = torch.sqrt(sum((g ** 2).sum() for g in g_stale))
    probe = copy.deepcopy(w1)
    with torch.no_grad():
        for p, g in zip(probe.parameters(), g_stale):
            p += RHO * g / norm
    expected = [p.detach() - LR * g for p, g in zip(w1.parameters(), _grads(probe, x1, y1))]
    step.step(x1, y1, perturb_batch=_batch(43))
    _assert_params(model, expected)


def test_system_aware_perturbation_batch_follows_the_time_budget():
    class FakeWorker:
        def gradient(self, state, batch_size, batch=None):
            return torch.zeros(2).numpy(), 0.001 * batch_size, batch_size  # 1 ms per sample

    pipe = StaleGradientPipeline(FakeWorker(), staleness=0, initial_batch=64, min_batch=8, max_batch=1024,
                                 time_fraction=1.0)
    model = nn.Linear(1, 1)
    pipe.observe_step_seconds(0.032)  # main step 32 ms -> budget 32 samples
    for _ in range(12):
        pipe.next(model)
    assert pipe.batch_size == 32
    fixed = StaleGradientPipeline(FakeWorker(), staleness=0, batch_size=64)
    fixed.observe_step_seconds(0.001)
    fixed.next(model)
    assert fixed.batch_size == 64


def test_async_trainer_runs_the_worker_as_a_ray_actor(ray_session):
    from marlx.optim.sam.trainer import SAMTrainer

    train, test = load_digits()
    trainer = SAMTrainer(lambda: mlp(64, 10, hidden=32), train, test, method="async", epochs=2, batch_size=64)
    try:
        assert trainer.actor is not None and trainer.source.remote
        result = trainer.fit()
    finally:
        trainer.close()
    sgd = SAMTrainer(lambda: mlp(64, 10, hidden=32), train, test, method="sgd", epochs=2, batch_size=64).fit()
    assert result["test_accuracy"] > max(0.2, sgd["test_accuracy"] - 0.1)  # it learns (chance is 0.1) like SGD
    hist = trainer.source.history
    assert len(hist) == result["steps"] - 1  # staleness 1: every step but the first got a stale gradient
    assert all(h["worker_s"] > 0 for h in hist)


# ------------------------------------------------------------------------------ BatchNorm and AMP
@pytest.mark.parametrize("mode, expected_updates", [("once", 1), ("every_pass", 2)])
def test_batchnorm_statistics_are_updated_once_per_step(mode, expected_updates):
    model, (x, y) = _model("cnn"), _batch(50)
    probe = copy.deepcopy(model)
    probe(x)  # one clean training-mode forward at w
    for cls, cfg in [(SAM, {}), (LayerwiseSAM, {"variant": "layerwise", "layers": 4})]:
        m = copy.deepcopy(model)
        cls(m, _sgd(m), SAMConfig(rho=RHO, bn_update=mode, **cfg)).step(x, y)
        bn, ref = m[1], probe[1]
        assert bn.num_batches_tracked.item() == expected_updates
        if mode == "once":
            torch.testing.assert_close(bn.running_mean, ref.running_mean)
            torch.testing.assert_close(bn.running_var, ref.running_var)


def test_grad_scaler_gives_the_fp32_update_and_skips_overflowing_steps():
    x, y = _batch(60)
    x = x.float()
    a, b = _model().float(), _model().float()
    SAM(a, _sgd(a), SAMConfig(rho=RHO)).step(x, y)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    SAM(b, _sgd(b), SAMConfig(rho=RHO), scaler=scaler).step(x, y)
    _assert_params(b, [p.detach() for p in a.parameters()], atol=1e-5)
    assert scaler.get_scale() == 2.0**12  # no overflow: scale kept (growth only after 2000 good steps)

    c = _model().float()
    before = [p.detach().clone() for p in c.parameters()]
    for cls, cfg in [(SAM, {}), (LayerwiseSAM, {"variant": "layerwise"})]:
        huge = torch.amp.GradScaler("cpu", init_scale=2.0**127)  # the scaled gradients overflow float32
        big_loss = lambda out, t: 1e6 * F.cross_entropy(out, t)  # noqa: E731
        cls(c, _sgd(c), SAMConfig(rho=RHO, **cfg), scaler=huge, criterion=big_loss).step(x, y)
        assert huge.get_scale() == 2.0**126  # one skipped step: one back-off, not two
    _assert_params(c, before, atol=0)  # overflowed steps were skipped, weights untouched


def test_bfloat16_autocast_trains():
    train, _ = load_digits()
    torch.manual_seed(0)
    model = mlp(64, 10, hidden=32)
    step = LayerwiseSAM(model, torch.optim.SGD(model.parameters(), lr=0.1), SAMConfig(variant="layerwise"),
                        scaler=torch.amp.GradScaler("cpu"), autocast_dtype=torch.bfloat16)
    losses = [step.step(train.x[i : i + 64], train.y[i : i + 64]) for i in range(0, 1280, 64)]
    assert all(l == l for l in losses) and sum(losses[-5:]) < sum(losses[:5])


# -------------------------------------------------------------------------------------------- DDP
def _ddp_worker(rank, world, port, queue):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for method in ("sgd", "sam", "layerwise"):
            model = DDP(_model())
            calls = []

            def counting_allreduce(state, bucket):
                calls.append(1)
                t = bucket.buffer().div_(world)
                return dist.all_reduce(t, async_op=True).get_future().then(lambda f: f.value()[0])

            model.register_comm_hook(None, counting_allreduce)
            x, y = _batch(70 + rank)
            cls = {"sgd": SharpnessStep, "sam": SAM, "layerwise": LayerwiseSAM}[method]
            cls(model, _sgd(model), SAMConfig(rho=RHO, variant="sam" if method == "sgd" else method)).step(x, y)
            # numpy, not tensors: a tensor would travel as a shared-memory handle that dies with this process
            queue.put((method, rank, len(calls), [p.detach().numpy().copy() for p in model.module.parameters()]))
    finally:
        dist.destroy_process_group()


def _run_ddp(port):
    """Both ranks' (all-reduce count, parameters) after one step of each method, from 2 gloo processes."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # not fork: a fork of a process running Ray's threads can deadlock
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    out: dict = {}
    try:
        for _ in range(6):
            method, rank, calls, w = queue.get(timeout=180)
            out.setdefault(method, {})[rank] = (calls, [torch.from_numpy(a) for a in w])
    finally:
        for p in procs:
            p.join(30)
            if p.exitcode is None:
                p.kill()
    assert all(p.exitcode == 0 for p in procs)
    return out


@pytest.mark.slow
def test_ddp_sam_all_reduces_only_the_descent_pass():
    runs = _run_ddp(29500 + os.getpid() % 1000)
    plain, sam, lw = runs["sgd"], runs["sam"], runs["layerwise"]
    assert sam[0][0] == plain[0][0] > 0  # as many all-reduce buckets as one plain backward: none on the ascent
    for a, b in zip(sam[0][1], sam[1][1]):
        torch.testing.assert_close(a, b)  # ranks agree
    # expected: w - lr * mean_r grad L_r(w + rho g_r/||g_r||), each rank perturbing with its own gradient
    model = _model()
    refs = [_sam_reference(model, *_batch(70 + r)) for r in range(2)]
    w = [p.detach() for p in model.parameters()]
    expected = [wi - ((wi - r0) + (wi - r1)) / 2 for wi, r0, r1 in zip(w, *refs)]
    for got, exp in zip(sam[0][1], expected):
        torch.testing.assert_close(got, exp, atol=1e-10, rtol=0)
    assert lw[0][0] == plain[0][0]  # the chosen layers' second-pass gradients go in one explicit all-reduce
    for a, b in zip(lw[0][1], lw[1][1]):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------------------- config
def test_config_errors_are_clear():
    with pytest.raises(UnknownNameError, match="did you mean 'layerwise'"):
        SAMConfig(variant="layerwize")
    with pytest.raises(ConfigKeyError, match="close matches: rho"):
        SAMConfig.from_dict({"rh": 0.1})
    with pytest.raises(UnknownNameError, match="layer selection"):
        SAMConfig(selection="largest")
    with pytest.raises(MarlxError):
        SAMConfig(alpha=1.5)


# ------------------------------------------------------------------------------------------ RLlib
def _ppo_weights(optim):
    from ray.rllib.algorithms.ppo import PPOConfig

    from marlx.optim.rllib_hooks import apply_optim

    cfg = (
        PPOConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0)
        .learners(num_learners=0)
        .training(train_batch_size_per_learner=128, minibatch_size=64, num_epochs=1, lr=1e-3)
        .debugging(seed=0)
    )
    apply_optim(cfg, optim)
    algo = cfg.build_algo()
    try:
        algo.train()
        module = algo.learner_group._learner.module["default_policy"]
        hooks = getattr(algo.learner_group._learner, "_optim_hooks", [])
        return {k: v.detach().clone() for k, v in module.state_dict().items()}, hooks
    finally:
        algo.stop()


@pytest.mark.slow
def test_rllib_ppo_hook_changes_the_update_only_when_configured(ray_session):
    base, _ = _ppo_weights(None)
    again, _ = _ppo_weights(None)
    zero, _ = _ppo_weights({"sam": {"rho": 0.0}})
    diff = lambda a, b: max((a[k] - b[k]).abs().max().item() for k in a)  # noqa: E731
    assert diff(base, again) == 0.0  # the run is deterministic, so a difference below means something
    assert diff(base, zero) < 1e-6  # hook installed but a zero perturbation: the default update
    for opts in ({"rho": 0.05}, {"rho": 0.05, "variant": "layerwise", "layers": 2}, {"rho": 0.05, "variant": "async"}):
        w, hooks = _ppo_weights({"sam": opts})
        assert [h.name for h in hooks] == ["sam"] and hooks[0].updates >= 2  # one per minibatch
        assert diff(base, w) > 1e-6, opts
        assert all(torch.isfinite(v).all() for v in w.values())
        if opts.get("variant") == "layerwise":
            assert len(hooks[0].selected) == 2
