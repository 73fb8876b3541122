"""optim: {federated: ...}: the learners of one Algorithm as FL clients (2 CPU learners), on PPO and QMIX.

Checked with values: between aggregations the clients' models differ, right after one they are equal; an
aggregation of hand-set client models gives the sample-weighted average (FedAvg), the previous update
on exactly the recycled layers (FedLUAR) and, for EmbracingFL's weak client, the strong client's value on the
layers the weak one does not train; upload counts; hook state through a checkpoint.
"""

import numpy as np
import pytest
import torch

from marlx.errors import MarlxError
from marlx.optim.rllib_hooks import apply_optim, get_hook


class _Cfg:
    def __init__(self, n):
        self.num_learners = n


def test_options_are_checked_before_ray():
    from marlx.optim.fl.hook import FederatedHook

    assert get_hook("federated") is FederatedHook
    for opts, match in (
        ({"strategy": "fedprox"}, "fedavg"),
        ({"rounds_evry": 2}, "unknown option"),
        ({"rounds_every": 0}, "rounds_every"),
        ({"delta": -1}, "delta"),
        ({"weighting": "steps"}, "samples"),
        ({"clients": ["strong", "weeak"]}, "weak"),
        ({"clients": [1.5]}, r"\(0, 1\]"),
        ({"budgets": {"weak": 0}}, "budgets"),
    ):
        with pytest.raises(MarlxError, match=match):
            FederatedHook.check_options(**opts)
    FederatedHook.check_options(strategy="fedluar", delta=2, clients=["strong", 0.5], rounds_every=3)
    with pytest.raises(MarlxError, match="num_learners >= 2"):
        FederatedHook.check_config(_Cfg(0))
    FederatedHook.check_config(_Cfg(2))


def test_yaml_without_two_learners_exits_2_before_ray(tmp_path, capsys):
    import yaml

    from marlx.cli import marlx_cmd

    f = tmp_path / "exp.yaml"
    f.write_text(yaml.safe_dump({"e": {"run": "PPO", "env": "builtin/push_box", "stop": {"training_iteration": 1},
                                       "config": {"optim": {"federated": {"strategy": "fedluar"}}}}}))
    assert marlx_cmd.main(["train", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "num_learners >= 2" in err and "Traceback" not in err


# --- probes run on the learners: local functions, so that Ray pickles them by value (the test module is not
# importable on the learners)
def _probes():
    def _probe(learner):
        hook = next(h for h in learner._optim_hooks if h.name == "federated")
        return {"updates": hook.num_updates, "rounds": hook.rounds, "state": hook.state(), "trained": sorted(hook.trained),
                "recycled": list(hook.recycled), "last_recycled": list(getattr(hook, "last_recycled", [])),
                "global": hook.global_state, "totals": dict(hook.totals),
                "frozen": sorted(k for k, t in hook.tensors.items() if not t.requires_grad),
                "scores": dict(hook.recycler.scores) if hook.recycler else {}}

    def _hand_round(learner):
        """Client r holds global + (r + 1) everywhere and trained 10 (r + 1) rows; aggregate once."""
        import torch.distributed as dist

        hook = next(h for h in learner._optim_hooks if h.name == "federated")
        rank = dist.get_rank()
        g = hook.global_state
        prev = {k: v.clone() for k, v in hook.recycler.prev_update.items()} if hook.recycler else {}
        recycled = list(hook.recycled)
        with torch.no_grad():
            for k, t in hook.tensors.items():
                t.copy_(g[k] + (rank + 1.0))
        hook.samples = 10 * (rank + 1)
        before = dict(hook.totals)
        hook.aggregate()
        return {"global": g, "prev": prev, "recycled": recycled, "state": hook.state(), "before": before,
                "after": dict(hook.totals), "trained": sorted(hook.trained)}

    return _probe, _hand_round


def _numel(state, keys):
    return sum(state[k].numel() for k in keys)


@pytest.mark.slow
def test_ppo_fedluar_rounds_recycling_counts_and_checkpoint(ray_session, tmp_path):
    from ray.rllib.algorithms.ppo import PPO, PPOConfig

    _probe, _hand_round = _probes()
    config = (
        PPOConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0)
        .learners(num_learners=2, num_cpus_per_learner=0.5)
        .training(train_batch_size_per_learner=64, minibatch_size=64, num_epochs=1)  # 1 update per iteration
        .rl_module(model_config={"fcnet_hiddens": [16]})
    )
    apply_optim(config, {"federated": {"strategy": "fedluar", "rounds_every": 2, "delta": 1}})
    algo = config.build_algo()
    try:
        uploaded = 0
        for it in range(1, 5):
            result = algo.train()
            p0, p1 = [r.get() for r in algo.learner_group.foreach_learner(_probe)]
            full = sum(v.numel() for v in p0["global"].values())
            assert p0["updates"] == p1["updates"] == it and p0["rounds"] == p1["rounds"] == it // 2
            diff = max((p0["state"][k] - p1["state"][k]).abs().max().item() for k in p0["state"])
            if it % 2:
                assert diff > 1e-7  # each client trained on its own shard, no gradient all-reduce
            else:
                assert diff == 0.0  # right after a round every client holds the new global model
                for k in p0["state"]:
                    assert torch.equal(p0["state"][k], p0["global"][k]) and torch.equal(p1["global"][k], p0["global"][k])
                recycled = p0["last_recycled"]
                # round 0 uploads everything (no scores yet); from round 1 on exactly delta=1 weight layer is recycled
                assert len(recycled) == (0 if it == 2 else 1) and all(p0["global"][k].dim() >= 2 for k in recycled)
                uploaded += 2 * (full - _numel(p0["global"], recycled))
                assert p0["totals"]["uploaded"] == uploaded and p0["totals"]["upload_bytes"] == 4 * uploaded
                assert p0["totals"]["downloaded"] == 2 * full * (it // 2)
                m = result["learners"]["__all_modules__"]
                assert m["federated_rounds"] == it // 2 and m["federated_uploaded"] == uploaded
                assert m["federated_upload_fraction"] == pytest.approx(uploaded / (2 * full * (it // 2)))
        # A hand-set round: clients at global + 1 (10 rows) and global + 2 (20 rows).
        h0, h1 = [r.get() for r in algo.learner_group.foreach_learner(_hand_round)]
        assert len(h0["recycled"]) == 1 and h0["recycled"] == h1["recycled"]
        (rk,) = h0["recycled"]
        for k, g in h0["global"].items():
            want = g + h0["prev"][k] if k == rk else g + (1 * 10 + 2 * 20) / 30
            torch.testing.assert_close(h0["state"][k], want, rtol=0, atol=1e-6)
            assert torch.equal(h0["state"][k], h1["state"][k])
        assert h0["after"]["uploaded"] - h0["before"]["uploaded"] == 2 * (full - h0["global"][rk].numel())
        saved = [r.get() for r in algo.learner_group.foreach_learner(_probe)][0]
        path = algo.save_to_path(tmp_path / "ckpt")
    finally:
        algo.stop()
    restored = PPO.from_checkpoint(path)
    try:
        for p in [r.get() for r in restored.learner_group.foreach_learner(_probe)]:
            assert (p["updates"], p["rounds"], p["totals"], p["recycled"]) == (
                saved["updates"], saved["rounds"], saved["totals"], saved["recycled"])
            assert p["scores"] == saved["scores"]
            for k in saved["global"]:
                assert torch.equal(p["global"][k], saved["global"][k]) and torch.equal(p["state"][k], saved["state"][k])
        restored.train()
        p = [r.get() for r in restored.learner_group.foreach_learner(_probe)][0]
        assert p["updates"] == saved["updates"] + 1
    finally:
        restored.stop()


@pytest.mark.slow
def test_qmix_fedavg_with_embracingfl_weak_client(ray_session):
    from marlx.algorithms.qmix import QMIXConfig

    _probe, _hand_round = _probes()
    config = (
        QMIXConfig()
        .environment("builtin/push_box", env_config={"size": 4, "box_start_row": 1, "episode_limit": 12})
        .env_runners(num_envs_per_env_runner=4)
        .training(batch_size_episodes=8, learning_starts_episodes=8, rnn_hidden_dim=16, mixing_embed_dim=8,
                  hypernet_embed=16, epsilon_anneal_time=500)
        .learners(num_learners=2, num_cpus_per_learner=0.5)
        .debugging(seed=3)
    )
    apply_optim(config, {"federated": {"strategy": "fedavg", "rounds_every": 2, "clients": ["strong", "weak"],
                                       "weighting": "uniform"}})
    algo = config.build_algo()
    try:
        while [r.get() for r in algo.learner_group.foreach_learner(_probe)][0]["updates"] < 1:
            algo.train()
        p0, p1 = [r.get() for r in algo.learner_group.foreach_learner(_probe)]
        assert p0["updates"] == p1["updates"] == 1 and p0["rounds"] == 0
        keys = set(p0["global"])
        assert not any("target" in k for k in keys)  # target networks are each client's own
        assert set(p0["trained"]) == keys and not p0["frozen"]
        weak = set(p1["trained"])
        assert 0 < len(weak) < len(keys) and set(p1["frozen"]) == keys - weak
        # the weak client trained only its output-side layers; the others are still the global model
        assert all(torch.equal(p1["state"][k], p1["global"][k]) for k in keys - weak)
        assert any(not torch.equal(p1["state"][k], p1["global"][k]) for k in weak)
        assert any(not torch.equal(p0["state"][k], p0["global"][k]) for k in keys - weak)
        algo.train()
        p0, p1 = [r.get() for r in algo.learner_group.foreach_learner(_probe)]
        assert p0["rounds"] == 1 and all(torch.equal(p0["state"][k], p1["state"][k]) for k in keys)
        full = sum(v.numel() for v in p0["global"].values())
        assert p0["totals"]["uploaded"] == full + _numel(p0["global"], weak)
        # hand-set round, uniform weights: weak's layers average (g+1, g+2); the rest come from the strong client
        h0, h1 = [r.get() for r in algo.learner_group.foreach_learner(_hand_round)]
        for k, g in h0["global"].items():
            want = g + 1.5 if k in weak else g + 1.0
            torch.testing.assert_close(h0["state"][k], want, rtol=0, atol=1e-6)
            assert torch.equal(h0["state"][k], h1["state"][k])
        assert np.isfinite(algo.train()["learners"]["__all_modules__"]["federated_upload_fraction"])
    finally:
        algo.stop()
