"""marlx.optim.fl: mechanisms checked numerically (partition, FedAvg, FedLUAR, EmbracingFL, KD, accounting)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from marlx.errors import MarlxError, UnknownNameError
from marlx.optim.data import ArrayDataset, load_digits, mlp, residual_mlp, small_cnn
from marlx.optim.fl import (
    FederatedTrainer, FLConfig, LayerRecycler, ScaledModel, assign_tiers, dirichlet_partition, kd_loss, kd_weight,
    layer_groups, make_strategy, masked_average, numel,
)
from marlx.optim.fl.client import ClientTask, LocalSGD, ModelJob, run_client


@pytest.fixture(scope="module")
def digits():
    train, test = load_digits(seed=0)
    return train.subset(range(400)), test.subset(range(200))


cnn = ScaledModel(small_cnn, "width", 8)
net = ScaledModel(mlp, "hidden", 32, (("depth", 2),))


def cfg(**kw):
    base = dict(num_clients=8, clients_per_round=4, rounds=2, local_steps=3, batch_size=16, lr=0.05,
                num_workers=0, eval_every=1, dirichlet_alpha=0.5)
    base.update(kw)
    return FLConfig(**base)


# ---------------------------------------------------------------- partition and tiers
def test_dirichlet_partition_is_a_partition_and_skew_follows_alpha():
    y = np.repeat(np.arange(10), 100)
    parts = dirichlet_partition(y, 20, alpha=0.1, seed=1, min_size=5)
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(len(y)))
    assert min(len(p) for p in parts) >= 5

    def classes_per_client(alpha):
        ps = dirichlet_partition(y, 20, alpha=alpha, seed=1, min_size=1)
        return np.mean([len(np.unique(y[p])) for p in ps])

    assert classes_per_client(0.1) < 5 < classes_per_client(100.0)
    with pytest.raises(MarlxError):
        dirichlet_partition(y, 2000, alpha=0.1)


def test_assign_tiers_counts_sum_exactly():
    tiers = assign_tiers(10, {"strong": 0.2, "moderate": 0.3, "weak": 0.5}, seed=3)
    assert [tiers.count(t) for t in ("strong", "moderate", "weak")] == [2, 3, 5]
    tiers = assign_tiers(7, {"a": 1, "b": 1}, seed=0)
    assert sorted([tiers.count("a"), tiers.count("b")]) == [3, 4]


# ---------------------------------------------------------------- aggregation arithmetic
def test_masked_average_weights_subsets_and_prefix_slices():
    g = {"w": torch.zeros(3, 2), "b": torch.full((3,), 7.0)}
    ups = [({"w": torch.ones(3, 2), "b": torch.ones(3)}, 1.0),
           ({"w": torch.full((1, 2), 4.0)}, 3.0)]  # a width-reduced client: leading row only, no bias
    out = masked_average(g, ups)
    assert torch.allclose(out["w"][0], torch.full((2,), (1 + 12) / 4))
    assert torch.allclose(out["w"][1:], torch.ones(2, 2))
    assert torch.allclose(out["b"], torch.ones(3))
    assert torch.equal(masked_average(g, [])["b"], g["b"])  # no upload: unchanged


def test_fedavg_with_one_client_equals_local_training(digits):
    """Full-batch local SGD with momentum (reset each round) for R rounds x K steps == FedAvg, 1 client."""
    train, _ = digits
    rounds, steps, lr, mom = 3, 4, 0.1, 0.9
    tr = FederatedTrainer(cnn, train, None, make_strategy("fedavg"),
                          cfg(num_clients=1, clients_per_round=1, rounds=rounds, local_steps=steps,
                              batch_size=len(train), lr=lr, momentum=mom, dirichlet_alpha=None))
    tr.fit()
    torch.manual_seed(0)
    ref = cnn(1.0)
    ref.train()
    for _ in range(rounds):
        opt = torch.optim.SGD(ref.parameters(), lr=lr, momentum=mom)
        for _ in range(steps):
            loss = F.cross_entropy(ref(train.x), train.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    for k, v in ref.state_dict().items():
        assert torch.allclose(tr.strategy.state[k].float(), v.float(), atol=1e-5), k
    start = cnn(1.0).state_dict()  # a different init: training did move the model
    assert not torch.allclose(start["0.weight"], tr.strategy.state["0.weight"])


def test_ray_actor_pool_matches_in_process_clients(ray_session, digits):
    train, test = digits
    states = []
    for workers in (0, 2):
        tr = FederatedTrainer(net, train, test, make_strategy("fedluar", delta=1),
                              cfg(num_workers=workers, worker_cpus=0.5, rounds=3))
        tr.fit()
        states.append(tr.strategy.state)
        tr.close()
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


# ---------------------------------------------------------------- FedLUAR
def test_fedluar_recycles_exactly_delta_layers_and_reapplies_previous_update(digits):
    train, test = digits
    strat = make_strategy("fedluar", delta=2)
    tr = FederatedTrainer(cnn, train, test, strat, cfg(rounds=4))
    full = tr.full_model_size()
    weights = [k for k, v in strat.state.items() if v.dim() >= 2]
    assert len(weights) == 4  # 2 convs + 2 linears
    rec = tr.step()  # round 0: no scores yet, everything uploaded
    assert rec["uploaded"] == len(rec["clients"]) * full
    for _ in range(3):
        start = {k: v.clone() for k, v in strat.state.items()}
        prev = {k: v.clone() for k, v in strat.recycler.prev_update.items()}
        scores = dict(strat.recycler.scores)
        rec = tr.step()
        recycled = strat.recycler.recycled
        assert len(recycled) == 2 and set(recycled) <= set(weights)
        # recycled layers: x <- x_prev + Delta_prev exactly; their scores not refreshed
        for k in recycled:
            assert torch.equal(strat.state[k], start[k] + prev[k])
            assert strat.recycler.scores[k] == scores[k]
        for k in set(weights) - set(recycled):
            assert strat.recycler.scores[k] != scores[k]
        # accounting: each client uploaded everything except the recycled tensors
        expected = len(rec["clients"]) * (full - numel(start, recycled))
        assert rec["uploaded"] == expected
        assert rec["downloaded"] == len(rec["clients"]) * full


def test_fedluar_samples_layers_with_probability_inverse_to_score():
    state = {f"l{i}": torch.ones(2, 2) for i in range(4)} | {"bias": torch.ones(2)}
    rec = LayerRecycler(state, delta=1, seed=0)
    assert rec.candidates == ["l0", "l1", "l2", "l3"]
    assert rec.choose() == []  # no scores yet
    rec.scores = {"l0": 1.0, "l1": 2.0, "l2": 4.0, "l3": 4.0}
    counts = {k: 0 for k in rec.candidates}
    n = 6000
    for _ in range(n):
        counts[rec.choose()[0]] += 1
    p = np.array([1, 0.5, 0.25, 0.25]) / 2.0
    freq = np.array([counts[k] for k in rec.candidates]) / n
    assert np.abs(freq - p).max() < 0.025
    with pytest.raises(MarlxError):
        LayerRecycler(state, delta=4)


def test_fedluar_score_is_update_norm_over_weight_norm():
    x0 = {"w": torch.tensor([[3.0, 4.0]]), "b": torch.zeros(1)}
    rec = LayerRecycler(x0, delta=0)
    new = rec.aggregate(x0, {"w": torch.tensor([[3.0, 4.5]]), "b": torch.ones(1)})
    assert rec.scores["w"] == pytest.approx(0.5 / 5.0)
    assert "b" not in rec.scores and torch.equal(new["b"], torch.ones(1))


def test_fedluar_consecutive_recycling_reapplies_the_same_update_and_keeps_the_score():
    # A layer recycled in consecutive rounds moves by the same Delta_prev each time (x0 + k * Delta) and keeps the
    # score of the last round it was uploaded; when uploaded again, both are refreshed from that round.
    x0 = {"a": torch.tensor([[3.0, 4.0]]), "b": torch.tensor([[1.0, 0.0]]), "bias": torch.zeros(2)}
    rec = LayerRecycler(x0, delta=1, seed=0)
    x1 = rec.aggregate(x0, {"a": torch.tensor([[3.0, 4.5]]), "b": torch.tensor([[2.0, 0.0]]), "bias": torch.ones(2)})
    assert rec.scores == pytest.approx({"a": 0.1, "b": 1.0})
    rec.scores["b"] = 1e9  # make "a" (almost) sure to be drawn
    state, bias = x1, torch.ones(2)
    for k in range(1, 4):
        assert rec.choose() == ["a"]
        bias = bias + 1
        state = rec.aggregate(state, {"b": state["b"] + 1, "bias": bias})  # clients do not send "a"
        assert torch.equal(state["a"], torch.tensor([[3.0, 4.5 + 0.5 * k]]))
        assert rec.scores["a"] == pytest.approx(0.1)
        assert torch.equal(state["bias"], bias)  # non-candidates are always averaged
    rec.recycled = []  # "a" uploaded again: fresh update and score from its current weights
    new_a = state["a"] + torch.tensor([[0.0, 1.0]])
    rec.aggregate(state, {"a": new_a, "b": state["b"], "bias": bias})
    assert torch.equal(rec.prev_update["a"], torch.tensor([[0.0, 1.0]]))
    assert rec.scores["a"] == pytest.approx(1.0 / float(state["a"].norm()))


def test_residual_mlp_fedluar_candidates_are_its_weight_matrices_only():
    model = residual_mlp(hidden=16, blocks=5)
    rec = LayerRecycler(model.state_dict(), delta=6)
    assert len(rec.candidates) == 7 and all(k.endswith("weight") and "norm" not in k for k in rec.candidates)
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    with pytest.raises(MarlxError):
        LayerRecycler(model.state_dict(), delta=7)
    # A wide stem: one more weight matrix, and the two stem matrices hold most of the parameters.
    wide = residual_mlp(hidden=16, blocks=5, stem=256)
    state = wide.state_dict()
    rec = LayerRecycler(state, delta=7)
    assert len(rec.candidates) == 8 and rec.candidates[:2] == ["inp.0.weight", "inp.2.weight"]
    stem_share = (state["inp.0.weight"].numel() + state["inp.2.weight"].numel()) / sum(v.numel() for v in state.values())
    assert stem_share == pytest.approx((64 * 256 + 256 * 16) / sum(v.numel() for v in state.values())) and stem_share > 0.7
    assert wide(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


# ---------------------------------------------------------------- EmbracingFL
def test_embracingfl_weak_client_never_updates_frozen_layers(digits):
    train, _ = digits
    model = cnn(1.0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    groups = layer_groups(model)
    assert [g[0] for g in groups] == ["0", "1", "3", "4", "8", "10"]
    strat = make_strategy("embracingfl")
    strat.setup(cnn, ["weak", "moderate", "strong"], local_steps=5, seed=0)
    weak_job = strat.job(0)
    assert weak_job.upload == {"10.weight", "10.bias"}  # 15 % of 6 layers -> the output layer
    assert strat.job(1).upload == set(groups[-2][1] + groups[-1][1])  # 40 % -> two layers
    assert strat.job(2).upload == set(state)
    # run the weak client's job but ask for everything back to inspect the frozen layers
    weak_job.upload = None
    weak_job.state = state
    idx = np.arange(len(train))
    res = run_client(ClientTask(0, 0, {"global": weak_job}), cnn, train.x, train.y, idx, idx[:0], LocalSGD(16, 0.1))
    out = res.uploads["global"]
    for k in state:
        if k in {"10.weight", "10.bias"}:
            assert not torch.equal(out[k], state[k]), k
        else:  # weights, BN affine parameters and BN running statistics all untouched
            assert torch.equal(out[k], state[k]), k


def test_embracingfl_server_averages_each_layer_over_clients_that_trained_it(digits):
    train, test = digits
    tr = FederatedTrainer(cnn, train, test, make_strategy("embracingfl"),
                          cfg(tiers={"weak": 0.5, "moderate": 0.5}, clients_per_round=8))
    start = {k: v.clone() for k, v in tr.strategy.state.items()}
    rec = tr.step()
    moderate = {"8.weight", "8.bias", "10.weight", "10.bias"}
    for k, v in tr.strategy.state.items():
        assert torch.equal(v, start[k]) == (k not in moderate), k
    sizes = {t: sum(start[k].numel() for k in keys) for t, keys in tr.strategy.trained_keys.items()}
    assert rec["uploaded"] == sum(sizes[tr.tiers[c]] for c in rec["clients"])


# ---------------------------------------------------------------- width reduction baseline
def test_width_reduction_nested_submodels_and_coverage(digits):
    train, test = digits
    tr = FederatedTrainer(cnn, train, test, make_strategy("width", widths={"strong": 1.0, "weak": 0.5}),
                          cfg(tiers={"strong": 0.5, "weak": 0.5}, clients_per_round=8, local_steps=2))
    start = {k: v.clone() for k, v in tr.strategy.state.items()}
    job = tr.strategy.job(tr.tiers.index("weak"))
    assert job.state["0.weight"].shape == (4, 1, 3, 3)
    assert torch.equal(job.state["0.weight"], start["0.weight"][:4])
    rec = tr.step()
    small = cnn(0.5).state_dict()
    n_strong = sum(tr.tiers[c] == "strong" for c in rec["clients"])
    assert rec["uploaded"] == n_strong * numel(start) + (8 - n_strong) * numel(small)
    assert tr.evaluate()["accuracy/global"] >= 0.0


# ---------------------------------------------------------------- on-device KD
def test_kd_weight_schedule_matches_formula():
    for t in (0, 1, 50, 150, 299):
        assert kd_weight(t) == pytest.approx(0.5 * math.exp(-5 * (1 - t / 300) ** 2), rel=1e-12)
    assert kd_weight(300) == kd_weight(1000) == 0.5
    assert kd_weight(0) == pytest.approx(0.5 * math.exp(-5))
    w = [kd_weight(t) for t in range(0, 320, 10)]
    assert all(a <= b for a, b in zip(w, w[1:]))
    assert kd_weight(5, max_weight=1.0, rampup_rounds=10) == pytest.approx(math.exp(-5 * 0.25))


def test_kd_loss_is_scaled_kl_from_teacher_to_student():
    torch.manual_seed(0)
    zs, zt = torch.randn(5, 4), torch.randn(5, 4)
    p = F.softmax(zt / 3, -1)
    manual = 9 * (p * (p.log() - F.log_softmax(zs / 3, -1))).sum(-1).mean()
    assert kd_loss(zs, zt, 3.0).item() == pytest.approx(manual.item(), rel=1e-5)
    assert kd_loss(zt, zt).item() == pytest.approx(0.0, abs=1e-6)


def test_on_device_kd_weak_clients_hold_only_aux_and_distillation_pulls_towards_teacher(digits):
    train, test = digits
    strat = make_strategy("kd", rampup_rounds=10)
    tr = FederatedTrainer(cnn, train, test, strat,
                          cfg(tiers={"strong": 0.5, "weak": 0.5}, clients_per_round=8, unlabelled_fraction=0.5))
    jobs = strat.tasks(12, list(range(8)))
    for c, j in jobs.items():
        assert set(j) == ({"aux"} if tr.tiers[c] == "weak" else {"aux", "global"})
        if "global" in j:
            assert j["global"].kd_weight == 0.5 and j["global"].teacher == "aux" and j["global"].temperature == 3.0
    assert numel(jobs[0]["aux"].state) < numel(strat.state) / 4  # 25 % width
    rec = tr.step()
    n_strong = sum(tr.tiers[c] == "strong" for c in rec["clients"])
    assert rec["uploaded"] == 8 * numel(strat.aux_state) + n_strong * numel(strat.state)
    # distillation only: the student's KL to the teacher goes down
    c = tr.tiers.index("strong")
    job = ModelJob(1.0, strat.state, ce_steps=0, kd_steps=20, teacher="aux", kd_weight=1.0)
    aux = ModelJob(0.25, strat.aux_state, upload=set())
    unl = tr.unlabelled[c]
    assert len(unl) > 0
    res = run_client(ClientTask(c, 0, {"aux": aux, "global": job}), cnn, train.x, train.y, tr.labelled[c], unl,
                     LocalSGD(16, 0.05))
    teacher, before, after = cnn(0.25), cnn(1.0), cnn(1.0)
    teacher.load_state_dict(strat.aux_state)
    before.load_state_dict(strat.state)
    after.load_state_dict(res.uploads["global"])
    with torch.no_grad():
        x = train.x[unl]
        for m in (teacher, before, after):
            m.eval()
        kl0, kl1 = kd_loss(before(x), teacher(x)), kd_loss(after(x), teacher(x))
    assert kl1 < 0.8 * kl0


def test_kd_fresh_momentum_stops_the_cross_entropy_velocity_from_coasting_into_distillation(digits):
    """With a negligible KD weight the distillation steps' gradients are ~0: a shared optimizer keeps moving the
    weights on the cross-entropy phase's momentum, a fresh one leaves them where the cross-entropy phase ended."""
    train, _ = digits
    torch.manual_seed(0)
    teacher_state = net(0.25).state_dict()
    student_state = net(1.0).state_dict()
    idx = np.arange(64)

    def train_with(kd_steps, fresh):
        job = ModelJob(1.0, student_state, ce_steps=5, kd_steps=kd_steps, teacher="aux", kd_weight=1e-12,
                       kd_fresh_momentum=fresh)
        res = run_client(ClientTask(0, 0, {"aux": ModelJob(0.25, teacher_state, upload=set()), "global": job}),
                         net, train.x, train.y, idx, idx, LocalSGD(16, 0.05, momentum=0.9))
        return res.uploads["global"]

    ce_only = train_with(0, False)
    fresh, shared = train_with(10, True), train_with(10, False)
    drift = lambda s: sum(float((s[k] - ce_only[k]).norm()) for k in s)  # noqa: E731
    assert drift(fresh) < 1e-6 < 1e-3 < drift(shared)
    strat = make_strategy("kd", kd_fresh_momentum=True)
    FederatedTrainer(net, train, None, strat, cfg(tiers={"strong": 1.0}))
    assert all(j["global"].kd_fresh_momentum for j in strat.tasks(0, [0, 1]).values())


def test_unknown_strategy_and_option_give_clear_errors():
    with pytest.raises(UnknownNameError, match="fedluar"):
        make_strategy("fedlaur")
    with pytest.raises(UnknownNameError, match="delta"):
        make_strategy("fedluar", delt=3)
    with pytest.raises(MarlxError):
        FederatedTrainer(net, ArrayDataset(torch.zeros(20, 64), torch.zeros(20, dtype=torch.long), 10), None,
                         make_strategy("fedavg"), cfg(clients_per_round=9))
