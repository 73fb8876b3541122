"""FIM's mechanism with values: CoG detection on synthetic data and on push_box, counterfactual influence with an
exact forward model, AFI traces as a scan, the component's bonus on a hand-built batch, anneal, checkpoints."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from marlx.envs.builtin.push_box import DOWN, RIGHT, STAY, UP, PushBoxEnv
from marlx.intrinsic import build_intrinsic, check_intrinsic_config
from marlx.intrinsic.fim import (
    FIM_ANNEAL, FIM_COG, FIM_SCALE, CogDetector, CogForwardModel, FIMOptions, FIMReward, afi_reward,
    anneal_factor, constant_runs, counterfactual_candidates, counterfactual_influence, eligibility_traces,
    focus_weights, histogram_entropy, normalised_changes, random_policy_states,
)
from marlx.errors import MarlxError


# -- CoG detection --------------------------------------------------------------------------------------
def test_normalised_change_and_histogram_entropy_by_hand():
    ep = np.array([[0.0, 5.0], [2.0, 5.0], [1.0, 5.0]])
    delta, rng = normalised_changes([ep, np.array([[4.0, 5.0], [4.0, 5.0]])])
    np.testing.assert_allclose(rng, [4.0, 0.0])
    np.testing.assert_allclose(delta[:, 0], [0.5, -0.25, 0.0], atol=1e-6)
    assert np.all(delta[:, 1] == 0)
    # |delta| = 0, 0, 0.5, 1.0 -> zero bin 2/4, bin of 0.5: 1/4, top bin: 1/4
    h = histogram_entropy(np.array([0.0, 0.0, 0.5, 1.0]), bins=20)
    assert h[0] == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(4))
    # signed: -0.5 and 0.5 land in different bins
    hs = histogram_entropy(np.array([-0.5, 0.5]), bins=20, signed=True)
    assert hs[0] == pytest.approx(math.log(2))
    assert histogram_entropy(np.array([0.5, 0.5]), bins=20, signed=False)[0] == pytest.approx(0.0)


def synthetic_episodes(seed=0, n_eps=20, length=100):
    """dims: 0 constant, 1 noisy (uniform), 2 rare large jumps (p=0.1, |jump| = range), 3 frequent tiny changes
    (|change| uniform up to 15% of the range), 4 a rarely changing dimension (p=0.02 small steps)."""
    rng = np.random.default_rng(seed)
    eps = []
    for _ in range(n_eps):
        s = np.zeros((length + 1, 5))
        s[:, 0] = 3.0
        s[:, 1] = rng.random(length + 1)
        s[:, 2] = np.cumsum(rng.random(length + 1) < 0.1) % 2
        steps = rng.uniform(0, 0.15, length) * rng.choice([-1, 1], length)
        s[1:, 3] = np.cumsum(steps)
        s[:, 3] = np.clip(s[:, 3], -0.5, 0.5) + 0.5  # bounded (reflected at the clip)
        s[1:, 4] = np.cumsum((rng.random(length) < 0.02) * 0.3)
        eps.append(s)
    return eps


def test_constant_dimension_is_excluded_and_rare_change_has_lower_entropy_than_noise():
    eps = synthetic_episodes()
    det = CogDetector("entropy_k", k=5).fit(eps)
    assert det.entropy[0] == 0.0 and 0 not in det.selected and len(det.selected) == 4
    assert det.entropy[4] < det.entropy[1] and det.entropy[2] < det.entropy[1]
    assert CogDetector("entropy_k", k=1).fit(eps).selected == [4]
    assert 0 not in CogDetector("least_change", k=4).fit(eps).selected
    assert CogDetector("all").fit(eps).selected == [0, 1, 2, 3, 4]
    # threshold mode: every eligible dim with H below delta
    det = CogDetector("entropy", threshold=float(np.sort(det.entropy)[3]) + 1e-9).fit(eps)
    assert 0 not in det.selected and 1 not in det.selected


def test_least_change_and_entropy_differ_on_rare_jumps_versus_frequent_tiny_changes():
    eps = [e[:, [2, 3]] for e in synthetic_episodes()]  # rare large jumps vs frequent tiny changes
    ent = CogDetector("entropy_k", k=1).fit(eps)
    lfi = CogDetector("least_change", k=1).fit(eps)
    assert ent.entropy[0] < ent.entropy[1]  # jumps: mostly zero change -> low entropy
    assert lfi.mean_abs_change[1] < lfi.mean_abs_change[0]  # tiny changes: small mean |change|
    assert ent.selected == [0] and lfi.selected == [1]


def test_manual_selection_by_state_names_and_indices_and_its_errors():
    eps = synthetic_episodes(n_eps=2)
    names = ["const", "noise", "jump", "tiny", "rare"]
    det = CogDetector("manual", dims=["rare", 1], state_names=names).fit(eps)
    assert det.selected == [1, 4] and det.names == ["noise", "rare"] and det.summary() == "CoG: noise, rare"
    table = det.table()
    assert [r["selected"] for r in table] == [False, True, False, False, True] and table[0]["entropy"] == 0.0
    with pytest.raises(ValueError, match="'nope' is not a state dimension; valid: const, noise"):
        CogDetector("manual", dims=["nope"], state_names=names).fit(eps)


def test_options_are_checked_with_one_clear_line():
    FIMReward.check_options({"cog_samples": 2000, "cog_select": "least_change"})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['cog_sample'\]"):
        FIMReward.check_options({"cog_sample": 5})
    with pytest.raises(ValueError, match="cog_select must be one of"):
        FIMReward.check_options({"cog_select": "lowest"})
    with pytest.raises(ValueError, match="needs cog_dims"):
        FIMReward.check_options({"cog_select": "manual"})
    with pytest.raises(MarlxError, match="intrinsic.fim: fim_eta must be in"):
        check_intrinsic_config({"fim": {"fim_eta": 2.0}})
    assert FIMOptions.from_dict({"cog_samples": 1e5}).cog_samples == 100_000  # YAML 1e5 style


@pytest.mark.slow
def test_entropy_k_picks_the_box_coordinates_of_push_box_from_100k_random_steps():
    for env in (PushBoxEnv(size=6, mode="paper_like"), PushBoxEnv(size=6)):
        states = random_policy_states(env, 100_000, seed=0)
        assert sum(len(s) - 1 for s in states) == 100_000
        det = CogDetector("entropy_k", k=2 * env.n_boxes, state_names=env.state_names).fit(states)
        expected = [f"box{j}_{c}" for j in range(env.n_boxes) for c in "xy"]
        assert det.names == expected, det.table()


# -- counterfactual influence ---------------------------------------------------------------------------
def exact_push_box_model(env):
    """The true next state of a deterministic push_box, as a ``predict(states, actions, candidates)``."""
    k = 1.0 / env._scale

    def predict(states, actions, cand):
        b, t, kk, _ = cand.shape
        out = torch.zeros(b, t, kk, env.state_dim)
        for i in range(b):
            for j in range(t):
                for c in range(kk):
                    s = states[i, j].numpy()
                    env.agents[:] = np.rint(s[: 2 * env.n_agents] * k).reshape(-1, 2)
                    env.boxes[:] = np.rint(s[2 * env.n_agents: 2 * env.n_agents + 2] * k)
                    env.delivered[:] = s[2 * env.n_agents + 2] > 0.5
                    env._step(cand[i, j, c].numpy())
                    out[i, j, c] = torch.as_tensor(env.get_state())
        return out

    return predict


def push_box_situation():
    """size 5, one pusher suffices. t=0: agent 0 below the box pushes it up, agent 1 walks in a corner;
    t=1: both stay (agent 0 could push again); t=2 is padding."""
    env = PushBoxEnv(size=5, n_agents=2, n_boxes=1, pushers_needed=1)
    env.reset(seed=0)
    states, avails = [], []
    env.agents[:] = [[2, 3], [0, 4]]
    env.boxes[:] = [[2, 2]]
    for a in ([UP, RIGHT], [STAY, STAY], [STAY, STAY]):
        states.append(env.get_state())
        avails.append(env.get_avail_actions())
        env._step(np.array(a))
    states.append(env.get_state())
    avails.append(env.get_avail_actions())
    batch = {
        "state": torch.as_tensor(np.stack(states))[None],
        "avail": torch.as_tensor(np.stack(avails))[None],
        "actions": torch.tensor([[[UP, RIGHT], [STAY, STAY], [STAY, STAY]]]),
        "mask": torch.tensor([[1.0, 1.0, 0.0]]),
    }
    return env, batch


def test_candidates_replace_one_agents_action_at_a_time():
    cand = counterfactual_candidates(torch.tensor([[[1, 2]]]), 3)
    assert cand[0, 0].tolist() == [[1, 2], [0, 2], [1, 2], [2, 2], [1, 0], [1, 1], [1, 2]]


@pytest.mark.parametrize("mode, expected", [("norm_change", 0.25), ("sq_diff", 0.0625)])
def test_with_an_exact_model_only_the_pushing_agent_has_influence_on_the_box(mode, expected):
    env, batch = push_box_situation()
    states, actions = batch["state"][:, :-1], batch["actions"]
    predict = exact_push_box_model(PushBoxEnv(size=5, n_agents=2, n_boxes=1, pushers_needed=1))
    infl = counterfactual_influence(lambda c: predict(states, actions, c), states, actions,
                                    batch["avail"][:, :-1], torch.ones(env.state_dim), mode)
    box_x, box_y = env.state_names.index("box0_x"), env.state_names.index("box0_y")
    # t=0: agent 0 moved the box one cell (0.25 in state units); none of its other actions would have
    assert infl[0, 0, 0, box_y].item() == pytest.approx(expected)
    assert infl[0, 0, 0, box_x].item() == 0.0
    assert infl[0, 0, 1, [box_x, box_y]].abs().sum().item() == 0.0  # agent 1: no influence on the box
    if mode == "norm_change":
        # t=1: staying next to the box changes nothing, although UP would have moved it: no positive influence
        assert infl[0, 1, :, [box_x, box_y]].abs().sum().item() == 0.0
    else:  # sq_diff is symmetric: agent 0's stay differs from the mean of its alternatives (1 of 4 pushes)
        assert infl[0, 1, 0, box_y].item() == pytest.approx((0.25 / 4) ** 2)


def test_an_agent_without_alternative_actions_has_zero_influence():
    states = torch.zeros(1, 1, 2)
    actions = torch.tensor([[[0, 1]]])
    avail = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])  # agent 0 is dead: only no-op available
    predict = lambda c: c.float().sum(-1, keepdim=True).expand(*c.shape[:3], 2)  # noqa: E731 (any change)
    infl = counterfactual_influence(predict, states, actions, avail, torch.ones(2), "sq_diff")
    assert infl[0, 0, 0].abs().sum() == 0 and infl[0, 0, 1].sum() > 0


def test_forward_model_candidates_use_the_factual_recurrent_state():
    torch.manual_seed(0)
    model = CogForwardModel(state_dim=3, n_agents=2, n_actions=4, hidden=8, kind="gru")
    states, actions = torch.randn(2, 5, 3), torch.randint(0, 4, (2, 5, 2))
    pred, _ = model(states, actions)
    cand = counterfactual_candidates(actions, 4)
    out = model.predict_candidates(states, actions, cand)
    torch.testing.assert_close(out[:, :, 0], pred)  # candidate 0 = factual pass
    # a counterfactual at t=3 equals the factual pass of the sequence with that action swapped at t=3
    alt = actions.clone()
    alt[:, 3, 1] = 2
    pred_alt, _ = model(states, alt)
    torch.testing.assert_close(out[:, 3, 1 + 1 * 4 + 2], pred_alt[:, 3])


# -- AFI --------------------------------------------------------------------------------------------------
def test_eligibility_traces_scan_by_hand_and_decay_of_a_constant_dimension():
    infl = torch.tensor([1.0, 0.0, 2.0, 0.0, 0.0]).view(1, 5, 1, 1)
    e = eligibility_traces(infl, eta=0.5)
    assert e.flatten().tolist() == [1.0, 0.5, 2.25, 1.125, 0.5625]
    # influence once, then the dimension stays constant: the trace decays as eta^t
    infl = torch.zeros(1, 6, 1, 1)
    infl[0, 0] = 1.0
    assert eligibility_traces(infl, eta=0.9).flatten().tolist() == pytest.approx([0.9**t for t in range(6)])
    # padded steps add nothing; reset zeroes the trace before the step's own influence
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0, 0.0]])
    infl = torch.ones(1, 6, 1, 1)
    assert eligibility_traces(infl, 0.5, mask).flatten().tolist() == [1.0, 1.5, 1.75, 0.875, 0.4375, 0.21875]
    reset = torch.tensor([False, False, True, False, False, False]).view(1, 6, 1)
    assert eligibility_traces(infl, 0.5, reset=reset).flatten().tolist()[:4] == [1.0, 1.5, 1.0, 1.5]


def test_constant_runs_mark_dimensions_unchanged_for_k_steps():
    s = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]]).view(1, 6, 1)
    assert constant_runs(s, 2).flatten().tolist() == [False, True, False, False, True]


def test_eta_zero_and_no_focus_give_plain_influence():
    torch.manual_seed(0)
    infl = torch.rand(2, 4, 3, 5)
    mask = torch.ones(2, 4)
    team, per_agent = afi_reward(infl, mask, eta=0.0, alpha=0.7, focus="none")
    torch.testing.assert_close(per_agent, 0.7 * infl.sum(-1))
    torch.testing.assert_close(team, 0.7 * infl.sum((-1, -2)))
    torch.testing.assert_close(eligibility_traces(infl, 0.0), infl)


def test_softmax_and_argmax_focus_weights_by_hand():
    # one agent, two dims; traces E = [1, 0] then [0.5, 2]
    infl = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).view(1, 2, 1, 2)
    traces = eligibility_traces(infl, 0.5)
    w = focus_weights(traces, "softmax", tau=1.0)
    s = math.exp(1) / (math.exp(1) + 1)
    assert w[0, 0].tolist() == pytest.approx([s, 1 - s])
    s2 = math.exp(0.5) / (math.exp(0.5) + math.exp(2))
    assert w[0, 1].tolist() == pytest.approx([s2, 1 - s2])
    assert focus_weights(traces, "argmax")[0].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    team, _ = afi_reward(infl, torch.ones(1, 2), eta=0.5, alpha=2.0, focus="softmax")
    assert team[0].tolist() == pytest.approx([2.0 * s * 1.0, 2.0 * (1 - s2) * 2.0])
    # dims outside the mask get no weight
    wm = focus_weights(traces, "softmax", dim_mask=torch.tensor([0.0, 1.0]))
    assert wm[0, :, 0].tolist() == [0.0, 0.0] and wm[0, :, 1].tolist() == [1.0, 1.0]


def test_anneal_factor_reaches_zero_on_schedule():
    assert anneal_factor(500, None, 1000, "after_success") == 1.0  # no success yet
    assert anneal_factor(500, 100, 1000, "after_success") == pytest.approx(0.6)
    assert anneal_factor(1100, 100, 1000, "after_success") == 0.0
    assert anneal_factor(5000, 100, 1000, "after_success") == 0.0
    assert anneal_factor(5000, 100, 1000, "none") == 1.0


# -- the component --------------------------------------------------------------------------------------
def make_component(where, env, **options):
    (comp,) = build_intrinsic({"fim": options}, env.observation_space, env.action_space,
                              {"state_names": env.state_names}, where)
    assert isinstance(comp, FIMReward)
    return comp


def fake_episode(states, rewards):
    return SimpleNamespace(obs={"state": states}, rewards=np.asarray(rewards, np.float32))


def test_driver_detects_once_after_cog_samples_prints_the_set_and_annotates(capsys):
    env = PushBoxEnv(size=5, mode="paper_like", n_boxes=1)
    comp = make_component("driver", env, cog_samples=3000, fim_anneal_steps=1000)
    eps = random_policy_states(env, 4000, seed=1)
    for s in eps:
        if comp.detector.fitted:
            break
        comp.observe([fake_episode(s, np.zeros(len(s) - 1))])
    assert comp.detector.fitted and 3000 <= comp.detector.num_transitions < 3000 + env.episode_limit
    assert comp.detector.names == ["box0_x", "box0_y"]
    assert capsys.readouterr().out.strip().endswith("CoG: box0_x, box0_y")
    batch = {"mask": np.ones((3, 7), np.float32)}
    comp.annotate(batch)
    assert batch[FIM_COG].shape == (3, env.state_dim) and batch[FIM_COG][0].tolist() == [0, 0, 0, 0, 1, 1]
    np.testing.assert_allclose(batch[FIM_SCALE][0], 1.0 / comp.detector.range, rtol=1e-6)
    assert np.all(batch[FIM_ANNEAL] == 1.0)
    # the first positive reward starts the anneal; 500 more steps -> factor 0.5
    steps = comp.env_steps
    comp.observe([fake_episode(np.zeros((11, env.state_dim)), [0.0] * 9 + [1.0])])
    comp.observe([fake_episode(np.zeros((501, env.state_dim)), np.zeros(500))])
    assert comp.first_success_step == steps + 10
    comp.annotate(batch)
    assert batch[FIM_ANNEAL][0, 0] == pytest.approx(0.5)
    metrics = comp.metrics()
    assert metrics["fim/selected/box0_y"] == 1.0 and metrics["fim/selected/agent0_x"] == 0.0
    # the checkpoint keeps the CoG set and the anneal state
    other = make_component("driver", env, cog_samples=3000, fim_anneal_steps=1000)
    other.set_state(comp.get_state())
    assert other.detector.names == ["box0_x", "box0_y"] and other.first_success_step == comp.first_success_step
    batch2 = {"mask": np.ones((3, 7), np.float32)}
    other.annotate(batch2)
    for key in (FIM_COG, FIM_SCALE, FIM_ANNEAL):
        np.testing.assert_array_equal(batch2[key], batch[key])


def test_no_bonus_and_no_model_training_before_detection():
    env, batch = push_box_situation()
    comp = make_component("learner", env)
    driver = make_component("driver", env)
    np_batch = {"mask": batch["mask"].numpy()}
    driver.annotate(np_batch)
    batch.update({k: torch.as_tensor(v) for k, v in np_batch.items()})
    assert comp.bonus(batch, {}, None).abs().sum() == 0 and comp.update(batch, {}, None) == {}


def test_learner_bonus_equals_the_hand_computed_value_on_a_tiny_batch():
    env, batch = push_box_situation()
    comp = make_component("learner", env, cog_select="manual", cog_dims=["box0_x", "box0_y"], fim_alpha=0.5)
    exact = exact_push_box_model(PushBoxEnv(size=5, n_agents=2, n_boxes=1, pushers_needed=1))
    comp.model.predict_candidates = exact
    cog = torch.zeros(1, env.state_dim)
    cog[0, [4, 5]] = 1.0
    batch.update({FIM_COG: cog, FIM_SCALE: torch.full((1, env.state_dim), 2.0), FIM_ANNEAL: torch.full((1, 3), 0.8)})
    bonus = comp.bonus(batch, {}, None)
    # t=0: agent 0's influence on box_y is 0.25 * scale 2 = 0.5; E over (box_x, box_y) = (0, 0.5)
    w_y = math.exp(0.5) / (1 + math.exp(0.5))
    assert bonus[0].tolist() == pytest.approx([0.5 * w_y * 0.5 * 0.8, 0.0, 0.0])
    comp.opts.fim_clip = 0.05  # the clip applies before the anneal
    assert comp.bonus(batch, {}, None)[0, 0].item() == pytest.approx(0.05 * 0.8)


def test_forward_model_learns_from_batches_and_the_checkpoint_keeps_it():
    torch.manual_seed(0)
    env = PushBoxEnv(size=5, mode="paper_like", n_boxes=1)
    comp = make_component("learner", env, fim_hidden=32, fim_lr=3e-3, fim_model_epochs=25,
                          cog_select="manual", cog_dims=["agent0_x", "agent0_y"])
    eps = random_policy_states(env, 4, unit="episodes", seed=0)
    T = min(len(s) for s in eps) - 1
    rng = np.random.default_rng(0)
    states = torch.as_tensor(np.stack([s[: T + 1] for s in eps]))
    # the agents' moves are what a model can learn from the joint action
    actions = torch.as_tensor(rng.integers(0, 5, (4, T, 2)))
    sim = PushBoxEnv(size=5, mode="paper_like", n_boxes=1)
    sim.reset(seed=0)
    for b in range(4):
        sim.agents[:] = np.rint(states[b, 0, :4].numpy() * 4).reshape(2, 2)
        sim.boxes[:] = np.rint(states[b, 0, 4:6].numpy() * 4).reshape(1, 2)
        for t in range(T):
            sim._step(actions[b, t].numpy())
            states[b, t + 1] = torch.as_tensor(sim.get_state())
    cog = torch.zeros(4, env.state_dim)
    cog[:, :2] = 1.0
    batch = {"state": states, "actions": actions, "avail": torch.ones(4, T + 1, 2, 5), "mask": torch.ones(4, T),
             FIM_COG: cog, FIM_SCALE: torch.ones(4, env.state_dim), FIM_ANNEAL: torch.ones(4, T)}
    before = comp.model_loss(batch).item()
    for _ in range(4):
        metrics = comp.update(batch, {}, None)
    assert metrics["fim_model_updates"] == 4 and metrics["fim_model_loss"] < 0.2 * before
    assert comp.bonus(batch, {}, None).sum() > 0  # agent 0 moves itself: positive influence on its coordinates
    other = make_component("learner", env, fim_hidden=32, cog_select="manual", cog_dims=["agent0_x", "agent0_y"])
    other.set_state(comp.get_state())
    torch.testing.assert_close(other.bonus(batch, {}, None), comp.bonus(batch, {}, None))
    assert other.model_updates == 4 and other.optimizer.state_dict()["state"]


def test_qmix_one_step_target_rises_by_exactly_r_int():
    from ray.rllib.policy.sample_batch import DEFAULT_POLICY_ID

    from marlx.algorithms.qmix import QMIXConfig
    from marlx.modules.qmix_module import Q_VALUES, TARGET_Q_VALUES

    env, batch = push_box_situation()
    cfg = QMIXConfig().environment(observation_space=env.observation_space, action_space=env.action_space)
    cfg.training(mixer="vdn", gamma=0.5, rnn_hidden_dim=8)
    cfg.team_runtime(intrinsic={"fim": {"cog_select": "manual", "cog_dims": [4, 5], "fim_alpha": 0.5}})
    learner = cfg.build_learner(env=env)
    (fim,) = learner.intrinsic[DEFAULT_POLICY_ID]
    fim.model.predict_candidates = exact_push_box_model(PushBoxEnv(size=5, n_agents=2, n_boxes=1, pushers_needed=1))
    cog = torch.zeros(1, env.state_dim)
    cog[0, [4, 5]] = 1.0
    batch.update({
        FIM_COG: cog, FIM_SCALE: torch.full((1, env.state_dim), 2.0), FIM_ANNEAL: torch.ones(1, 3),
        "obs": torch.zeros(1, 4, 2, env.obs_dim), "rewards": torch.tensor([[0.0, 1.0, 0.0]]),
        "terminateds": torch.zeros(1, 3),
    })
    zeros = {Q_VALUES: torch.zeros(1, 4, 2, 5), TARGET_Q_VALUES: torch.zeros(1, 4, 2, 5)}
    loss = learner.compute_loss_for_module(module_id=DEFAULT_POLICY_ID, config=cfg, batch=batch, fwd_out=zeros)
    # Q = 0: the one-step targets are r + r_int on the two real steps; r_int = (alpha w_y 0.5, 0)
    r_int = 0.5 * (math.exp(0.5) / (1 + math.exp(0.5))) * 0.5
    assert loss.item() == pytest.approx(((0.0 + r_int) ** 2 + 1.0**2) / 2, rel=1e-5)
