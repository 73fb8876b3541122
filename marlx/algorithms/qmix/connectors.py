"""Lean env-to-module and module-to-env connectors for the team view (one piece each, no per-item loops).

RLlib's default pipelines (Ray 2.60) run ~6 generic pieces per step, each walking every episode and nested
leaf; on a fast env they cost more than the env itself. A team env already has a fixed Dict observation and
a joint action, so one piece can build the whole batch with one ``np.stack`` per leaf.

* :class:`TeamEnvToModule`: ``OBS`` = each leaf of the episodes' last observations ``[B, 1, ...]``;
  ``STATE_IN`` = the module's initial state for episodes that just started, else the last step's
  ``STATE_OUT`` (stored by the env runner in ``extra_model_outputs``), stacked ``[B, ...]``.
* :class:`TeamModuleToEnv`: tensors -> numpy, time axis of 1 dropped, ``ACTIONS`` ``[B, n]`` and
  ``STATE_OUT`` as one dict per env (the env runner indexes every output by env).

Selected by :class:`~marlx.algorithms.qmix.qmix.QMIXConfig` for its own module; a subclass that changes the
module's inputs or outputs (e.g. extra columns) can turn them off with
``config.env_runners(add_default_connectors_to_env_to_module_pipeline=True, env_to_module_connector=None, ...)``.
"""

from __future__ import annotations

import numpy as np
import torch
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core.columns import Columns


class TeamEnvToModule(ConnectorV2):
    """Batch the team observations and recurrent states of all envs of a runner."""

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None, metrics=None, **kwargs):
        last = [ep.get_observations(-1) for ep in episodes]
        obs = {k: torch.from_numpy(np.stack([o[k] for o in last])[:, None]) for k in last[0]}
        init = None
        states = []
        for ep in episodes:
            if len(ep) == 0:
                if init is None:
                    init = {k: v.numpy() for k, v in rl_module.get_initial_state().items()}
                states.append(init)
            else:
                states.append(ep.get_extra_model_outputs(Columns.STATE_OUT, -1))
        state_in = {k: torch.from_numpy(np.stack([s[k] for s in states])) for k in states[0]}
        batch[Columns.OBS] = obs
        batch[Columns.STATE_IN] = state_in
        return batch


class TeamModuleToEnv(ConnectorV2):
    """Joint actions and per-env states from the module's batched output."""

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None, metrics=None, **kwargs):
        actions = batch[Columns.ACTIONS]
        actions = actions.numpy() if isinstance(actions, torch.Tensor) else np.asarray(actions)
        if actions.ndim == 3:  # [B, 1, n]: drop the time axis
            actions = actions[:, 0]
        out = {Columns.ACTIONS: actions}  # [B, n]: the env runner unbatches it per env
        state = batch.get(Columns.STATE_OUT)
        if state is not None:
            arrays = {k: v.numpy() for k, v in state.items()}
            out[Columns.STATE_OUT] = [{k: v[i] for k, v in arrays.items()} for i in range(len(actions))]
        return out


def team_env_to_module(env=None, spaces=None, device=None):
    return TeamEnvToModule()


def team_module_to_env(env=None, spaces=None):
    return TeamModuleToEnv()
