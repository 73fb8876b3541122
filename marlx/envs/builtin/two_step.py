"""The two-step cooperative matrix game of the QMIX paper (Rashid et al. 2018, §6.1, Figure 3).

Two agents, two actions each, two steps. In state 1 agent 0's action chooses the second state, no reward:
action 0 leads to state 2A, action 1 to state 2B (agent 1's action does not matter). In the second step the
joint action is paid by that state's matrix and the episode terminates:

    state 2A          state 2B
           a1=0 a1=1         a1=0 a1=1
    a0=0     7    7    a0=0    0    1
    a0=1     7    7    a0=1    1    8

The optimal return is 8 (branch 2B, both agents action 1); the safe branch 2A pays 7 whatever is played. Both
agents observe the state as a one-hot ``(1, 2A, 2B)`` (the paper's agents see the full state), and the state
given to the mixer is the same one-hot. ``info["success"]`` is True when the episode pays 8.

QMIX's monotonic mixing can represent state 2B's payoff, so trained on uniformly random joint actions it learns
``Q_tot(1, a0=1) ~ gamma * 8`` and plays the 8 branch; VDN's additive fit of state 2B values its best joint
action at about 6.5 < 7 and so prefers branch 2A (the paper's Table 2).
"""

from __future__ import annotations

import numpy as np

from marlx.envs.team import TeamEnv

STATE_1, STATE_2A, STATE_2B = 0, 1, 2
#: payoff matrices of the second step, indexed [agent 0's action, agent 1's action]
PAYOFF = {
    STATE_2A: np.array([[7.0, 7.0], [7.0, 7.0]]),
    STATE_2B: np.array([[0.0, 1.0], [1.0, 8.0]]),
}
OPTIMAL_RETURN = 8.0


class TwoStepGameEnv(TeamEnv):
    """The QMIX paper's two-step game as a team env (no options: the game is fixed)."""

    def __init__(self):
        self.n_agents = 2
        self.n_actions = 2
        self.obs_dim = 3
        self.state_dim = 3
        self.episode_limit = 2
        self.state_names = ["state_1", "state_2A", "state_2B"]
        self.state = STATE_1
        super().__init__()

    def _reset(self, rng, options):
        self.state = STATE_1
        return {}

    def _step(self, actions):
        if self.state == STATE_1:
            self.state = STATE_2A if int(actions[0]) == 0 else STATE_2B
            return 0.0, False, {"success": False}
        reward = float(PAYOFF[self.state][int(actions[0]), int(actions[1])])
        return reward, True, {"success": reward == OPTIMAL_RETURN}

    def _one_hot(self) -> np.ndarray:
        v = np.zeros(3, np.float32)
        v[self.state] = 1.0
        return v

    def get_obs(self):
        return np.tile(self._one_hot(), (self.n_agents, 1))

    def get_state(self):
        return self._one_hot()
