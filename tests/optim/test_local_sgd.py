"""Biased local SGD: the pure pieces numerically, the Ray trainer's mechanisms, and the RLlib hook on 2 learners."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from marlx.errors import MarlxError  # noqa: E402
from marlx.optim.data import load_digits, mlp, small_cnn  # noqa: E402
from marlx.optim.local_sgd import (  # noqa: E402
    LocalSGDConfig,
    LocalSGDTrainer,
    WorkerSpec,
    average_states,
    biased_sample,
    merge_loss_tables,
    steps_from_throughput,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    train, test = load_digits(seed=0)
    return train.subset(range(512)), test


def _workers(*slowdowns):
    return [WorkerSpec(num_cpus=0.25, slowdown=s) for s in slowdowns]


def _vec(state):
    return torch.cat([v.reshape(-1).float() for v in state.values()])


# ---------------------------------------------------------------------------------------- pure pieces


def test_steps_follow_throughput_ratio():
    assert steps_from_throughput([100.0, 25.0, 12.5], max_steps=32) == [32, 8, 4]
    assert steps_from_throughput([100.0, 1.0], max_steps=32, min_steps=1) == [32, 1]  # clamped at min
    assert steps_from_throughput([3.0, 3.0], max_steps=5) == [5, 5]
    with pytest.raises(MarlxError):
        steps_from_throughput([1.0, 0.0], max_steps=4)


def test_biased_sample_keeps_highest_loss_of_pool():
    rng = np.random.default_rng(0)
    table = rng.random(1000).astype(np.float32)
    table[rng.choice(1000, 30, replace=False)] = np.inf  # never trained: must come first
    selected, pool = biased_sample(table, budget=50, pool_factor=4.0, rng=np.random.default_rng(1))
    assert len(pool) == 200 and len(np.unique(pool)) == 200
    assert len(selected) == 50 and set(selected) <= set(pool)
    rest = np.setdiff1d(pool, selected)
    assert table[selected].min() >= table[rest].max()
    np.testing.assert_array_equal(np.sort(table[selected]), np.sort(table[pool])[-50:])
    # the pool is capped at the data set size
    sel, pool = biased_sample(table[:60], budget=50, pool_factor=4.0, rng=np.random.default_rng(2))
    assert len(pool) == 60 and len(sel) == 50


def test_loss_tables_merge_by_minimum():
    table = np.array([np.inf, 5.0, 2.0, 7.0], np.float32)
    a = (np.array([0, 1]), np.array([3.0, 6.0], np.float32))  # worker a overwrote 0 and 1 (1 went up)
    b = (np.array([0, 3]), np.array([4.0, 1.0], np.float32))
    merged = merge_loss_tables(table, [a, b])
    # 0: min(3, 4); 1: min(6, b's copy 5); 2: untouched; 3: min(a's copy 7, 1)
    np.testing.assert_array_equal(merged, [3.0, 5.0, 2.0, 1.0])
    np.testing.assert_array_equal(merge_loss_tables(table, []), table)


def test_average_states_is_unweighted_and_covers_buffers():
    s1 = {"w": torch.tensor([1.0, 3.0]), "bn.running_mean": torch.tensor([0.0]), "bn.num_batches_tracked": torch.tensor(4)}
    s2 = {"w": torch.tensor([3.0, 5.0]), "bn.running_mean": torch.tensor([2.0]), "bn.num_batches_tracked": torch.tensor(1)}
    avg = average_states([s1, s2])
    assert torch.equal(avg["w"], torch.tensor([2.0, 4.0]))
    assert torch.equal(avg["bn.running_mean"], torch.tensor([1.0]))
    assert avg["bn.num_batches_tracked"].item() == 2 and avg["bn.num_batches_tracked"].dtype == torch.long


def test_config_errors_are_clear():
    with pytest.raises(MarlxError, match="mode"):
        LocalSGDConfig(mode="async")
    with pytest.raises(MarlxError, match="momentum_policy"):
        LocalSGDConfig(momentum_policy="nesterov")
    with pytest.raises(MarlxError, match="pool_factor"):
        LocalSGDConfig(pool_factor=0.5)


# ---------------------------------------------------------------------------------------- the Ray trainer


@pytest.mark.slow
def test_equal_speeds_H1_equals_synchronous_sgd(ray_session, digits):
    train, _ = digits
    model_fn = lambda: mlp(64, 10, hidden=16, depth=1)  # noqa: E731
    base = dict(batch_size=16, lr=0.1, momentum=0.9, weight_decay=1e-4, seed=3)
    local = LocalSGDTrainer(model_fn, train, _workers(1, 1), LocalSGDConfig(mode="local", local_steps=(1, 1), momentum_policy="average", **base))
    sync = LocalSGDTrainer(model_fn, train, _workers(1, 1), LocalSGDConfig(mode="sync", **base))
    try:
        # plain single-process SGD on the union of the workers' batches (mean loss over 2B = mean of the means)
        torch.manual_seed(3)
        ref = model_fn()
        opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        assert torch.equal(_vec(ref.state_dict()), _vec(sync.model.state_dict()))
        for _ in range(4):
            local.run_round()
            sync.run_round()
            for a, b in zip(local.last_round_indices, sync.last_round_indices):
                np.testing.assert_array_equal(a, b)  # same data plan
            idx = torch.as_tensor(np.concatenate(sync.last_round_indices))
            opt.zero_grad()
            torch.nn.functional.cross_entropy(ref(train.x[idx]), train.y[idx]).backward()
            opt.step()
        ref_v, sync_v, local_v = _vec(ref.state_dict()), _vec(sync.model.state_dict()), _vec(local.model.state_dict())
        assert torch.allclose(sync_v, ref_v, atol=1e-5)
        assert torch.allclose(local_v, sync_v, atol=1e-5)
        assert (local_v - _vec({k: v for k, v in model_fn().state_dict().items()})).abs().max() > 1e-3  # it trained
    finally:
        local.shutdown()
        sync.shutdown()


@pytest.fixture(scope="module")
def biased_trainer(ray_session, digits):
    """A fast (4 steps) and a slow (1 step) worker with a BatchNorm CNN, after exactly one round."""
    train, _ = digits
    cfg = LocalSGDConfig(mode="biased", local_steps=(4, 1), batch_size=16, lr=0.05, seed=1)
    tr = LocalSGDTrainer(lambda: small_cnn(width=4), train, _workers(1, 1), cfg)
    tr.run_round()
    first = {"workers": tr.worker_states(), "average": {k: v.clone() for k, v in tr.model.state_dict().items()}}
    first["trained"] = [np.concatenate(tr.last_round_indices)]
    yield tr, first
    tr.shutdown()


@pytest.mark.slow
def test_average_is_unweighted_with_batchnorm_buffers(biased_trainer):
    _, first = biased_trainer
    (s_fast, s_slow), avg = first["workers"], first["average"]  # local models after 4 and 1 steps
    for k in avg:
        if avg[k].is_floating_point():
            torch.testing.assert_close(avg[k], (s_fast[k] + s_slow[k]) / 2)
    assert s_fast["1.num_batches_tracked"].item() == 4 and avg["1.num_batches_tracked"].item() == 2
    weighted = (4 * s_fast["1.running_mean"] + s_slow["1.running_mean"]) / 5
    assert not torch.allclose(avg["1.running_mean"], weighted)  # not sample-weighted
    assert not torch.allclose(s_fast["0.weight"], s_slow["0.weight"])  # the workers did diverge


def test_slow_worker_trains_the_highest_loss_samples_of_its_pool(biased_trainer, digits):
    tr, first = biased_trainer
    train, _ = digits
    assert tr.slow_workers() == [1]
    rounds_per_pass = len(train) // (16 * 5)
    trained = list(first["trained"])
    while tr.rounds < rounds_per_pass:  # finish the first pass
        tr.run_round()
        trained.append(np.concatenate(tr.last_round_indices))
    tr.run_round()  # the first round of the next pass merges the loss table and plans by it
    assert tr.passes == 1
    table, plan, pool = tr.loss_table, tr._plan[1], tr.last_pool[1]
    assert np.isfinite(table).sum() == len(np.unique(np.concatenate(trained)))  # each trained sample recorded
    assert np.isinf(table).sum() > 0  # samples nobody trained yet keep +inf
    assert len(pool) == 4 * len(plan) and set(plan) <= set(pool)
    assert table[plan].min() >= table[np.setdiff1d(pool, plan)].max()
    assert 0 not in tr.last_pool  # the fast worker samples uniformly
    np.testing.assert_array_equal(tr.last_round_indices[1], plan[:16])  # the slow worker trains its plan


@pytest.mark.slow
def test_step_counts_follow_measured_speed(ray_session, digits):
    train, _ = digits
    cfg = LocalSGDConfig(mode="local", max_local_steps=16, batch_size=64, probe_steps=10, seed=0)
    tr = LocalSGDTrainer(lambda: small_cnn(width=8), train, _workers(1, 6), cfg)
    try:
        thr = tr.throughput
        assert tr.steps == steps_from_throughput(thr, 16, 1)
        assert thr[0] / thr[1] > 2.0  # slowed down 6x (the shared machine adds noise either way)
        assert tr.steps[0] == 16 and tr.steps[1] < 8
        assert tr.slow_workers() == [1]
        # the pass is split in proportion to the steps: S = N // (B * sum steps) rounds
        tr.run_round()
        s = len(train) // (64 * sum(tr.steps))
        assert [len(p) for p in tr._plan] == [max(1, s) * st * 64 for st in tr.steps]
        # re-measuring at a pass boundary uses the rounds' own step times (throttling included)
        tr.cfg.remeasure_every = 1
        while tr._round_in_pass < tr._rounds_per_pass:
            tr.run_round()
        times = [list(tr._step_times[i]) for i in range(2)]
        tr.run_round()  # starts the next pass
        assert tr.throughput == [1.0 / float(np.median(t)) for t in times]
        assert tr.steps == steps_from_throughput(tr.throughput, 16, 1) and tr.steps[1] < tr.steps[0]
    finally:
        tr.shutdown()


@pytest.mark.slow
def test_killed_worker_does_not_end_the_run(ray_session, digits):
    import ray

    train, test = digits
    cfg = LocalSGDConfig(mode="biased", local_steps=(2, 1, 1), batch_size=16, lr=0.1, seed=4)
    tr = LocalSGDTrainer(lambda: mlp(64, 10, hidden=16, depth=1), train, _workers(1, 1, 1), cfg, test=test)
    try:
        assert tr.run_round()["workers"] == 3
        ray.kill(tr.actors[2])
        assert tr.run_round()["workers"] == 2  # averaged over the survivors
        assert tr.failures[-1]["worker"] == "w2"
        assert tr.run_round()["workers"] == 3  # replaced by a fresh actor with the same spec
        tr.cfg.on_worker_failure = "drop"
        ray.kill(tr.actors[1])
        assert tr.run_round()["workers"] == 2
        assert [s.name for s in tr.specs] == ["w0", "w2"] and tr.steps == [2, 1]
        history = tr.fit(passes=1.5, eval_every=5)
        assert len(tr.actors) == 2 and ray.get([a.ping.remote() for a in tr.actors]) == [True, True]
        assert history[-1]["accuracy"] > 0.3  # it kept learning (chance: 0.1)
    finally:
        tr.shutdown()


# ---------------------------------------------------------------------------------------- the RLlib hook


def test_hook_options_are_checked():
    from marlx.optim.local_sgd import LocalSGDHook
    from marlx.optim.rllib_hooks import get_hook

    assert get_hook("local_sgd") is LocalSGDHook
    with pytest.raises(MarlxError, match="unknown option"):
        LocalSGDHook(None, evry=3)
    with pytest.raises(MarlxError, match="momentum"):
        LocalSGDHook(None, momentum="sum")


@pytest.mark.slow
def test_rllib_learners_average_every_H_updates(ray_session):
    from ray.rllib.algorithms.ppo import PPOConfig

    from marlx.optim.rllib_hooks import apply_optim

    # defined here so that Ray pickles them by value (the test module is not importable on the learners)
    def _learner_probe(learner):
        hook = learner._optim_hooks[0]
        vec = torch.cat([p.detach().reshape(-1) for p in learner.module["default_policy"].parameters()])
        return hook.num_updates, hook.num_averages, hook.world_size(), vec.numpy().copy()

    def _fill_by_rank(learner):
        """Set every parameter to rank + 1 (momentum buffers to 10 * (rank + 1)) and average once."""
        import torch.distributed as dist

        rank = dist.get_rank()
        hook = learner._optim_hooks[0]
        with torch.no_grad():
            for p in learner.module["default_policy"].parameters():
                p.fill_(rank + 1.0)
        hook.momentum = "average"
        for _, opt in learner.get_optimizers_for_module("default_policy"):
            for st in opt.state.values():
                if "exp_avg" in st:
                    st["exp_avg"].fill_(10.0 * (rank + 1))
        hook.average()
        moments = [st["exp_avg"].reshape(-1) for _, o in learner.get_optimizers_for_module("default_policy") for st in o.state.values()]
        return _learner_probe(learner)[3], torch.cat(moments).numpy()

    config = (
        PPOConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0)
        .learners(num_learners=2, num_cpus_per_learner=0.5)
        .training(train_batch_size_per_learner=64, minibatch_size=64, num_epochs=1)  # 1 update per iteration
        .rl_module(model_config={"fcnet_hiddens": [16]})
        # seeded: one unseeded full-suite run found the two learners' weights equal (max diff 3e-8) after a local
        # step, which then passed twice alone; the cause is not pinned down, a seed makes the data deterministic
        .debugging(seed=0)
    )
    apply_optim(config, {"local_sgd": {"every": 2}})
    algo = config.build_algo()
    try:
        for it in range(1, 5):
            algo.train()
            (u0, a0, world, v0), (u1, a1, _, v1) = [r.get() for r in algo.learner_group.foreach_learner(_learner_probe)]
            assert world == 2 and u0 == u1 == it and a0 == a1 == it // 2
            if it % 2:  # between averagings the learners trained on their own shards, no all-reduce
                assert np.abs(v0 - v1).max() > 1e-7
            else:  # right after averaging they agree
                np.testing.assert_array_equal(v0, v1)
        # averaging is the mean over learners (ranks 0 and 1 hold 1 and 2), optimiser moments too when asked
        (p0, m0), (p1, m1) = [r.get() for r in algo.learner_group.foreach_learner(_fill_by_rank)]
        np.testing.assert_allclose(p0, 1.5)
        np.testing.assert_allclose(p1, 1.5)
        np.testing.assert_allclose(m0, 15.0)
        np.testing.assert_allclose(m1, 15.0)
    finally:
        algo.stop()
