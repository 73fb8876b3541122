"""The Wolfpack state machine on a real QMIX module: flag 3->2->1->0->3, budget in attacked time steps, the window
rule's forced attack, the softmax draw, the argmin attack action, dead agents, options."""

import numpy as np
import pytest
import torch

from marlx.attacks.base import make_attack
from marlx.runtime.columns import ATTACKED
from marlx.attacks.planner import history_window, start_probabilities, window_cut
from marlx.attacks.wolfpack import (ATTACK_COUNT, ATTACK_FLAG, ATTACKER_ACTIONS, FOLLOWUP_AGENTS, INITIAL_AGENT,
                                    WolfpackAttack)

from attack_helpers import Driver, FixedPlanner, make_module

ALWAYS = lambda t: [50.0] + [0.0] * 19  # noqa: E731  (k = 0 dominates: start whenever ready)
NEVER = lambda t: [-1e6] + [0.0] * 19  # noqa: E731   (k = 0 never drawn unless forced)


def wolfpack(n=3, planner=ALWAYS, num_envs=1, **options):
    attack = WolfpackAttack(options, num_envs=num_envs, n_agents=n, n_actions=4, seed=0)
    attack.set_qdiff_transformer(FixedPlanner(n, planner))
    return attack


def test_flag_sequence_and_one_budget_unit_per_attacked_step():
    module = make_module(n=4)
    attack = wolfpack(n=4, budget=100)
    drv = Driver(module, attack)
    flags, hits, groups, initials = [], [], [], []
    for _ in range(12):
        intended, executed, ex, q = drv.step()
        flags.append(int(ex[ATTACK_FLAG][0]))
        hits.append(np.flatnonzero(ex[ATTACKED][0]).tolist())
        groups.append(ex[FOLLOWUP_AGENTS][0].tolist())
        initials.append(int(ex[INITIAL_AGENT][0]))
        # the attack action is the argmin of Q over available actions, for every agent
        assert np.array_equal(ex[ATTACKER_ACTIONS][0], q[0].argmin(-1))
        assert np.array_equal(executed[0][ex[ATTACKED][0]], ex[ATTACKER_ACTIONS][0][ex[ATTACKED][0]])
    assert flags == [2, 1, 0, 3] * 3
    assert ex[ATTACK_COUNT][0] == 12  # every step attacked once, whatever the number of agents hit
    for start in (0, 4, 8):
        assert hits[start] == [initials[start]]  # the initial step hits one agent
        group = groups[start]
        assert initials[start] not in group and len(set(group)) == 2
        for k in (1, 2, 3):  # the follow-ups hit the group computed at the initial step (when the action differs)
            assert set(hits[start + k]) <= set(group)


def test_budget_counts_time_steps_and_stops_executing_but_bookkeeping_goes_on():
    module = make_module(n=3)
    attack = wolfpack(n=3, budget=6)
    drv = Driver(module, attack)
    attacked_steps, flags = [], []
    for _ in range(12):
        _, executed, ex, _ = drv.step()
        attacked_steps.append(bool(ex[ATTACKED][0].any()))
        flags.append(int(ex[ATTACK_FLAG][0]))
    # 6 attacked steps (one initial + three follow-ups, then one initial + one follow-up), then none
    assert sum(attacked_steps) <= 6 and not any(attacked_steps[6:])
    assert attacked_steps[0] and attacked_steps[4]
    assert flags == [2, 1, 0, 3] * 3  # the flag keeps cycling after the budget is spent
    assert attack.count[0] == 12


def test_window_rule_forces_an_attack_19_steps_after_the_last_one():
    module = make_module(n=3)
    attack = wolfpack(n=3, planner=NEVER, budget=100)
    drv = Driver(module, attack)
    starts = []
    for t in range(45):
        _, _, ex, _ = drv.step()
        if ex[ATTACK_FLAG][0] == 2:
            starts.append(t)
    assert starts == [19, 38]


def test_window_cut_and_temperature():
    dq = np.arange(20, dtype=float)
    assert np.array_equal(window_cut(dq, 0, 0), dq)  # t == 0: all kept
    cut = window_cut(dq, 5, 2)  # 3 steps since the last initial attack: the last 3 entries dropped
    assert np.array_equal(cut[:17], dq[:17]) and (cut[17:] == -9999999).all()
    assert (window_cut(dq, 40, 10)[1:] == -9999999).all()  # >= 19 steps: only k = 0 left
    p = start_probabilities([1.0, 0.0, 0.0], 0.5)
    e2 = np.exp(2.0)
    assert p == pytest.approx([e2 / (e2 + 2), 1 / (e2 + 2), 1 / (e2 + 2)])
    rng = np.random.default_rng(0)
    from marlx.attacks.planner import draw_start

    freq = np.mean([draw_start([0.5, 0.0], 0, 0, 0.5, rng) for _ in range(4000)])
    assert freq == pytest.approx(np.e / (np.e + 1), abs=0.03)  # softmax([1, 0]) at T = 0.5


def test_history_window_time_indices():
    states = [np.full(2, float(t)) for t in range(30)]
    times, s = history_window(states[:4], 3, 20, faithful_time=False)
    assert times[-4:].tolist() == [0, 1, 2, 3] and (times[:16] == 0).all() and (s[:16] == 0).all()
    assert s[-1, 0] == 3
    times, s = history_window(states, 25, 20, faithful_time=False)
    assert times.tolist() == list(range(6, 26)) and s[0, 0] == 6 and s[-1, 0] == 25
    times, _ = history_window(states, 25, 20, faithful_time=True)  # the released runner's t..t+19
    assert times.tolist() == list(range(25, 45))


def test_planner_argmax_agent_and_dead_agent_is_never_attacked():
    module = make_module(n=3)
    # init_agent_random False: the planner's argmax agent (agent 2 has the largest ΔQ) starts the attack
    attack = wolfpack(n=3, budget=100, init_agent_random=False)
    attack.set_qdiff_transformer(FixedPlanner(3, ALWAYS, agent_bonus=[0, 0, 1]))
    avail = np.ones((1, 3, 4), np.float32)
    drv = Driver(module, attack, avail=avail)
    _, _, ex, _ = drv.step()
    assert ex[INITIAL_AGENT][0] == 2 and np.flatnonzero(ex[ATTACKED][0]).tolist() == [2]
    # a dead agent (only action 0 available) cannot be hit: no attack counted, the planner tries again
    avail = np.ones((1, 3, 4), np.float32)
    avail[0, 2, 1:] = 0
    attack = wolfpack(n=3, budget=100, init_agent_random=False)
    attack.set_qdiff_transformer(FixedPlanner(3, ALWAYS, agent_bonus=[0, 0, 1]))
    drv = Driver(module, attack, avail=avail)
    for _ in range(3):
        _, _, ex, _ = drv.step()
        assert not ex[ATTACKED].any() and ex[ATTACK_FLAG][0] == 3 and ex[ATTACK_COUNT][0] == 0


def test_random_schedule_has_no_initial_agent_before_its_first_start():
    module = make_module(n=3)
    attack = WolfpackAttack({"schedule": "random", "random_start_prob": 0.3, "budget": 100}, 1, 3, 4, seed=3)
    drv = Driver(module, attack)
    seen_start = False
    for _ in range(40):
        _, _, ex, _ = drv.step()
        if not seen_start:
            assert ex[INITIAL_AGENT][0] in (3, *range(3))
        if ex[ATTACK_FLAG][0] == 2:
            seen_start = True
    assert seen_start


def test_per_env_state_is_independent():
    module = make_module(n=3)
    attack = wolfpack(n=3, num_envs=2, budget=100)
    drv = Driver(module, attack, num_envs=2)
    drv.step()
    drv.step()
    attack.begin_episode(1)
    assert attack.flag.tolist() == [1, 3] and attack.count.tolist() == [2, 0]


def test_planner_schedule_needs_a_qdiff_transformer():
    from marlx.errors import MarlxError

    module = make_module(n=3)
    attack = WolfpackAttack({}, 1, 3, 4, seed=0)
    with pytest.raises(MarlxError, match="Q-difference transformer"):
        Driver(module, attack).step()


def test_episode_prob_attacks_that_fraction_of_episodes_and_spares_the_rest():
    """[marlx option] ``episode_prob`` p: an episode is attacked (within its budget) with probability p, drawn at
    its start; the others execute every intended action while the bookkeeping runs on."""
    module = make_module(n=3)
    attack = wolfpack(n=3, budget=4, episode_prob=0.5)
    drv = Driver(module, attack)
    attacked_episodes = 0
    for episode in range(120):
        attack.begin_episode(0)
        drv.t[:] = 0
        steps = []
        for _ in range(8):
            intended, executed, ex, _ = drv.step()
            steps.append(bool(ex[ATTACKED][0].any()))
            if not attack.episode_budget[0]:
                assert np.array_equal(executed, intended)
        assert sum(steps) <= 4
        if attack.episode_budget[0]:
            assert steps[0] and sum(steps) == 4  # ALWAYS starts at once: the whole budget is spent
            attacked_episodes += 1
        else:
            assert not any(steps) and attack.count[0] > 0  # counted, never executed
    assert 45 <= attacked_episodes <= 75  # Binomial(120, 0.5): mean 60, sd 5.5
    never = wolfpack(n=3, budget=4, episode_prob=0.0)
    drv = Driver(module, never)
    assert not any(drv.step()[2][ATTACKED].any() for _ in range(8))
    # the default draws nothing at the episode start: the attack's random stream is the released one's
    a, b = wolfpack(n=3, budget=4), wolfpack(n=3, budget=4)
    a.begin_episode(0)
    assert a.rng.bit_generator.state == b.rng.bit_generator.state and a.episode_budget[0] == 4


@pytest.mark.parametrize("options, word", [({"budget": -2}, "budget"), ({"schedule": "sometimes"}, "schedule"),
                                           ({"temperature": 0}, "temperature"), ({"duration": 3}, "duration"),
                                           ({"episode_prob": 1.5}, "episode_prob")])
def test_bad_options(options, word):
    with pytest.raises(ValueError, match=word):
        make_attack({"name": "wolfpack", **options}, 1, 3, 4)


def test_paper_defaults():
    from marlx.attacks.wolfpack import DEFAULTS

    assert (DEFAULTS["budget"], DEFAULTS["attack_duration"], DEFAULTS["temperature"], DEFAULTS["attack_period"],
            DEFAULTS["num_followup_agents"], DEFAULTS["followup_lr"]) == (8, 3, 0.5, 20, 2, 5e-4)
    assert DEFAULTS["init_agent_random"] and not DEFAULTS["followup_l2"] and DEFAULTS["schedule"] == "planner"
    assert WolfpackAttack({"num_followup_agents": 5}, 1, 3, 4).m == 2  # clamped to n - 1
    assert torch.is_tensor(torch.zeros(1))
