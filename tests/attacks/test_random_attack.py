"""ROMANCE's random attack: probability, available actions only, budget in attacked steps (>=, or ROMANCE's ==)."""

import numpy as np
import pytest

from marlx.attacks.base import AttackContext, make_attack
from marlx.runtime.columns import ATTACKED
from marlx.attacks.random import ATTACK_COUNT, RandomAttack


def ctx(intended, avail, env_indices):
    return AttackContext(module=None, obs={}, state_in={}, outputs={}, actions=intended, avail=avail,
                         t=np.zeros(len(intended), np.int64), env_indices=env_indices, explore=False)


def run(attack, steps, b=2, n=3, a=5, avail=None):
    intended = np.zeros((b, n), np.int64)
    avail = np.ones((b, n, a), np.float32) if avail is None else avail
    rows = []
    for _ in range(steps):
        executed, extras = attack(ctx(intended, avail, np.arange(b)))
        rows.append((executed, extras))
    return intended, rows


def test_never_more_than_budget_attacked_steps_and_only_available_actions():
    b, n, a = 4, 3, 5
    avail = np.ones((b, n, a), np.float32)
    avail[:, :, 3:] = 0  # actions 3 and 4 unavailable
    attack = RandomAttack({"budget": 5, "prob": 0.5}, num_envs=b, n_agents=n, n_actions=a, seed=0)
    intended, rows = run(attack, 60, b, n, a, avail)
    executed = np.stack([r[0] for r in rows])  # [T, B, n]
    attacked = np.stack([r[1][ATTACKED] for r in rows])
    steps_attacked = attacked.any(-1).sum(0)
    assert (steps_attacked == 5).all()  # p=0.5 over 60 steps: the budget is spent exactly, never exceeded
    assert (executed < 3).all()
    assert np.array_equal(attacked, executed != intended[None])
    assert (rows[-1][1][ATTACK_COUNT] == 5).all()
    # the attacked steps are the first steps where a change was drawn: once spent, nothing more
    last = np.array([np.flatnonzero(attacked[:, e].any(-1)).max() for e in range(b)])
    assert all(not attacked[last[e] + 1:, e].any() for e in range(b))


def test_probability_per_agent_and_step():
    attack = RandomAttack({"budget": 10**6, "prob": 0.1}, num_envs=1, n_agents=4, n_actions=2, seed=1)
    intended, rows = run(attack, 5000, b=1, n=4, a=2)
    changed = np.stack([r[1][ATTACKED] for r in rows]).mean()
    # a hit changes the action with probability 1/2 (two actions): 0.1 * 0.5
    assert changed == pytest.approx(0.05, abs=0.006)


def test_romance_budget_bug_blocks_one_step_then_attacks_again():
    attack = RandomAttack({"budget": 3, "prob": 1.0, "romance_budget_bug": True}, num_envs=1, n_agents=1,
                          n_actions=2, seed=0)
    avail = np.array([[[0.0, 1.0]]], np.float32)  # the random action is always 1, the intended one 0
    intended, rows = run(attack, 6, b=1, n=1, a=2, avail=avail)
    attacked = [bool(r[1][ATTACKED].any()) for r in rows]
    counts = [int(r[1][ATTACK_COUNT][0]) for r in rows]
    changed_so_far = np.array(counts)
    # ROMANCE counts every changed step and blocks only the one where the count equals the budget
    for k, (att, c) in enumerate(zip(attacked, counts)):
        step_changed = c > (counts[k - 1] if k else 0)
        assert att == (step_changed and c != 3)
    assert counts == [1, 2, 3, 4, 5, 6] and attacked == [True, True, False, True, True, True]


def test_budget_zero_and_reset_per_episode():
    attack = RandomAttack({"budget": 0, "prob": 1.0}, num_envs=1, n_agents=2, n_actions=3, seed=0)
    _, rows = run(attack, 5, b=1, n=2, a=3)
    assert not any(r[1][ATTACKED].any() for r in rows)
    attack = RandomAttack({"budget": 2, "prob": 1.0}, num_envs=1, n_agents=2, n_actions=3, seed=0)
    run(attack, 10, b=1, n=2, a=3)
    assert attack.count[0] == 2
    attack.begin_episode(0)
    assert attack.count[0] == 0


@pytest.mark.parametrize("options, word", [({"budget": -1}, "budget"), ({"prob": 2}, "prob"),
                                           ({"probb": 0.1}, "probb"), ({"budget": 1.5}, "budget")])
def test_bad_options_name_the_key(options, word):
    with pytest.raises(ValueError, match=word):
        make_attack({"name": "random", **options}, 1, 2, 3)


def test_unknown_attack_name():
    from marlx.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="wolfpack"):
        make_attack({"name": "wolfpak"}, 1, 2, 3)
