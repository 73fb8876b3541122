"""ROMANCE's random attack (Yuan et al., AAAI 2023; ``zzq-bot/ROMANCE``), the paper's "Random" baseline.

At every step each agent independently, with probability ``prob``, executes a uniformly random *available*
action instead of its intended one (``src/components/action_selectors.py:122-137`` there). A time step counts
against the per-episode budget when at least one agent's executed action differs from its intended one.

Budget rule: a step is attacked only while fewer than ``budget`` steps have been attacked in this episode, so an
episode never has more than ``budget`` attacked steps. ROMANCE itself counts first and blocks only when the
count *equals* the budget (``episode_runner_robust.py:255-261``): the budget-th changed step is blocked and every
later one attacks again. ``romance_budget_bug: True`` (or ``wall_faithful: True``) reproduces that.
"""

from __future__ import annotations

import numpy as np

from marlx.attacks.base import Attack, AttackContext, register_attack
from marlx.runtime.columns import ATTACKED
from marlx.attacks.options import check_budget, check_prob, merge_options, require

ATTACK_COUNT = "attack_count"

DEFAULTS = {
    #: attacked time steps per episode; ROMANCE's ``attack_num`` default (``src/config/default.yaml:89-90``)
    "budget": 6,
    #: per-agent, per-step probability of a random action (ROMANCE ``action_selectors.py:122-137``: 0.1)
    "prob": 0.1,
    #: reproduce ROMANCE's ``attack_cnt == attack_num`` budget check (blocks one step, then attacks again)
    "romance_budget_bug": False,
    #: reproduce every released quirk (here: ``romance_budget_bug``)
    "wall_faithful": False,
}


@register_attack("random")
class RandomAttack(Attack):
    """Each agent with probability ``prob`` per step executes a uniform random available action."""

    @classmethod
    def check_options(cls, options: dict) -> None:
        opts = merge_options("random", options, DEFAULTS)
        check_budget("random", opts["budget"])
        check_prob("random", "prob", opts["prob"])
        for key in ("romance_budget_bug", "wall_faithful"):
            require(isinstance(opts[key], bool), "random", key, "true or false", opts[key])

    def __init__(self, options: dict, num_envs: int, n_agents: int, n_actions: int, seed=None):
        super().__init__(options, num_envs, n_agents, n_actions, seed)
        self.check_options(self.options)
        self.opts = merge_options("random", self.options, DEFAULTS)
        self.budget = int(self.opts["budget"])
        self.prob = float(self.opts["prob"])
        self.faithful_budget = bool(self.opts["romance_budget_bug"] or self.opts["wall_faithful"])
        self.count = np.zeros(self.num_envs, dtype=np.int64)  # changed steps so far, per sub-env

    def begin_episode(self, env_index: int) -> None:
        self.count[env_index] = 0

    def __call__(self, ctx: AttackContext) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        intended = np.asarray(ctx.actions, dtype=np.int64)
        avail = np.asarray(ctx.avail) > 0
        b, n = intended.shape
        # a uniform available action per agent: argmax of uniform noise over the available ones
        noise = self.rng.random(avail.shape) * avail
        random_actions = noise.argmax(axis=-1)
        hit = self.rng.random((b, n)) < self.prob
        perturbed = np.where(hit, random_actions, intended)
        changed = (perturbed != intended).any(axis=1)
        executed = intended.copy()
        attacked = np.zeros((b, n), dtype=bool)
        for row, env in enumerate(np.asarray(ctx.env_indices, dtype=np.int64)):
            if self.faithful_budget:  # ROMANCE: count first, block only when the count equals the budget
                if changed[row]:
                    self.count[env] += 1
                allowed = self.count[env] != self.budget
            else:
                allowed = self.count[env] < self.budget
                if allowed and changed[row]:
                    self.count[env] += 1
            if allowed and changed[row]:
                executed[row] = perturbed[row]
                attacked[row] = perturbed[row] != intended[row]
        counts = self.count[np.asarray(ctx.env_indices, dtype=np.int64)].copy()
        return executed, {ATTACKED: attacked, ATTACK_COUNT: counts}

    def get_state(self) -> dict:
        return {**super().get_state(), "count": self.count.copy()}

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        if state and "count" in state:
            self.count = np.asarray(state["count"]).copy()
