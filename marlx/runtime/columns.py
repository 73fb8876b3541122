"""Column names of the team runtime, in one place (episodes, replay batches, module outputs, learners).

The team observation's leaves keep the names the envs give them (:mod:`marlx.envs.team`); module outputs that
RLlib names (``action_logp``, ``vf_preds``, ``action_dist_inputs``) keep RLlib's names.
"""

from __future__ import annotations

from ray.rllib.core.columns import Columns

from marlx.envs.team import AVAIL, OBS, POSITIONS, STATE

#: Team observation leaves: per-agent observations ``[n, d]``, global state ``[S]``, action masks ``[n, A]``,
#: positions ``[n, 2|3]`` (optional).
OBS, STATE, AVAIL, POSITIONS = OBS, STATE, AVAIL, POSITIONS
#: The module's intended joint action ``[n]`` (TD loss, last-action input).
ACTIONS = Columns.ACTIONS
#: The joint action the env executed ``[n]`` (differs from ACTIONS under an attack).
EXECUTED_ACTIONS = "executed_actions"
#: Which agents an attack changed at a step ``[n]`` (bool).
ATTACKED = "attacked"
REWARDS = Columns.REWARDS
TERMINATEDS = Columns.TERMINATEDS
#: Valid (non-padded) steps of a padded batch ``[B, T]``.
MASK = "mask"
#: Per-agent Q values ``[n, A]`` (value-decomposition modules).
Q_VALUES = "q_values"
TARGET_Q_VALUES = "target_q_values"
#: Recurrent state keys of the QMIX module: GRU state ``[n, H]`` and previous joint action ``[n]``.
HIDDEN, PREV_ACTIONS = "h", "prev_actions"
ACTION_LOGP = Columns.ACTION_LOGP
VF_PREDS = Columns.VF_PREDS
ACTION_DIST_INPUTS = Columns.ACTION_DIST_INPUTS
#: Prefix of stored recurrent-state outputs in ``TeamEpisode.extras`` (with ``keep_state_out``).
STATE_OUT_PREFIX = "state_out/"
