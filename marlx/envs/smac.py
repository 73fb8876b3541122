"""StarCraft Multi-Agent Challenge (``smac.env.StarCraft2Env``, oxwhirl/smac) as a team: ``smac/<map>``.

Used when StarCraft's SMAC package and the StarCraft II game are installed (``SC2PATH``); where they
are not, ``smax/<map>`` (JaxMARL's SMAX) plays the same maps on the CPU.

* obs, state, avail: ``get_obs()``, ``get_state()``, ``get_avail_actions()`` of StarCraft2Env
  (actions ``0`` no-op (dead agents only), ``1`` stop, ``2-5`` move N/S/E/W, ``6+j`` attack enemy j);
* positions: the allies' ``(x, y)`` on the map (``get_unit_by_id(i).pos``);
* reward: SMAC's (dense and scaled by default, ``reward_sparse=True`` for +1 win / -1 loss);
* a won or lost battle terminates; SMAC's episode limit truncates (the adapter creates the env with
  ``continuing_episode=True``, whose only effect in SMAC is to flag the limit in ``info``);
* ``info["success"]`` is ``battle_won``.

Seeding: StarCraft II takes its random seed when the game launches, so ``reset(seed=s)`` with a new
seed closes the game and launches a new one with ``seed=s``; unseeded resets continue the game.

PyPI's ``smac`` is SMAC3, a hyper-parameter optimiser, not StarCraft: :func:`import_starcraft2env`
says so and how to install StarCraft's package.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

import numpy as np

from marlx.envs.team import TeamEnv

#: Maps of SMAC 1.0 (``smac/env/starcraft2/maps/smac_maps.py``): (allies, enemies, episode limit).
SMAC_MAPS: dict[str, tuple[int, int, int]] = {
    "3m": (3, 3, 60),
    "8m": (8, 8, 120),
    "25m": (25, 25, 150),
    "5m_vs_6m": (5, 6, 70),
    "8m_vs_9m": (8, 9, 120),
    "10m_vs_11m": (10, 11, 150),
    "27m_vs_30m": (27, 30, 180),
    "MMM": (10, 10, 150),
    "MMM2": (10, 12, 180),
    "2s3z": (5, 5, 120),
    "3s5z": (8, 8, 150),
    "3s5z_vs_3s6z": (8, 9, 170),
    "3s_vs_3z": (3, 3, 150),
    "3s_vs_4z": (3, 4, 200),
    "3s_vs_5z": (3, 5, 250),
    "2m_vs_1z": (2, 1, 150),
    "corridor": (6, 24, 400),
    "6h_vs_8z": (6, 8, 150),
    "2s_vs_1sc": (2, 1, 300),
    "so_many_baneling": (7, 32, 100),
    "bane_vs_bane": (24, 24, 200),
    "2c_vs_64zg": (2, 64, 400),
}
INSTALL = (
    "pip install git+https://github.com/oxwhirl/smac.git, then install StarCraft II (Linux package "
    "4.10) with the SMAC maps in $SC2PATH/Maps/SMAC_Maps and set SC2PATH"
)


def import_starcraft2env():
    """Return ``smac.env.StarCraft2Env``, with a clear error when it is missing or is SMAC3."""
    from marlx.errors import MarlxError, MissingDependencyError

    if importlib.util.find_spec("smac") is None:
        raise MissingDependencyError("SMAC (StarCraft II)", "smac", INSTALL)
    if importlib.util.find_spec("smac.env") is None:
        if importlib.util.find_spec("smac.facade") is not None:
            what = "is SMAC3, the hyper-parameter optimiser that PyPI ships under that name"
        else:
            what = "has no smac.env (PyPI's 'smac' is SMAC3, a hyper-parameter optimiser)"
        raise MarlxError(
            f"the installed Python package 'smac' {what}, not StarCraft's Multi-Agent Challenge. "
            f"Remove it (pip uninstall smac) and install StarCraft's SMAC: {INSTALL}"
        )
    try:
        module = importlib.import_module("smac.env")
    except ImportError as e:  # e.g. pysc2 missing
        raise MissingDependencyError("SMAC (StarCraft II)", e.name or "smac.env", INSTALL) from None
    if not hasattr(module, "StarCraft2Env"):
        raise MarlxError(f"smac.env has no StarCraft2Env; reinstall StarCraft's SMAC: {INSTALL}")
    return module.StarCraft2Env


class SMACTeamEnv(TeamEnv):
    """A SMAC map as a team (see the module docstring).

    Args:
        map_name: a SMAC map (``SMAC_MAPS``; other maps installed in SC2PATH work too).
        difficulty: the built-in AI's difficulty, ``"1"``..``"A"`` (SMAC's default ``"7"``).
        reward_sparse: SMAC's sparse reward (+1 win / -1 loss).
        sc2_path: sets ``SC2PATH`` for the game (otherwise the environment's ``SC2PATH``).
        seed: the game's random seed.
        env_kwargs: more StarCraft2Env options (``step_mul``, ``obs_last_action``, ``reward_win``,
            ``state_last_action``, ``replay_dir``, ...).
    """

    position_dim = 2

    def __init__(
        self,
        map_name: str = "3m",
        difficulty: str = "7",
        reward_sparse: bool = False,
        sc2_path: str | None = None,
        seed: int | None = None,
        **env_kwargs: Any,
    ):
        self._cls = import_starcraft2env()
        if sc2_path:
            os.environ["SC2PATH"] = str(sc2_path)
        self._kwargs = dict(
            map_name=map_name, difficulty=str(difficulty), reward_sparse=bool(reward_sparse),
            continuing_episode=True, **env_kwargs,
        )
        self.map_name = map_name
        self._game_seed = seed
        self.env = self._cls(seed=seed, **self._kwargs)
        info = self.env.get_env_info()
        self.n_agents, self.n_actions = int(info["n_agents"]), int(info["n_actions"])
        self.obs_dim, self.state_dim = int(info["obs_shape"]), int(info["state_shape"])
        self.episode_limit = int(info["episode_limit"])
        self._seeded_reset = None
        super().__init__()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._seeded_reset = seed
        return super().reset(seed=seed, options=options)

    def _reset(self, rng, options):
        if self._seeded_reset is not None and self._seeded_reset != self._game_seed:
            # StarCraft II is seeded at launch only: a new seed needs a new game.
            self.env.close()
            self._game_seed = int(self._seeded_reset)
            self.env = self._cls(seed=self._game_seed, **self._kwargs)
        self.env.reset()
        return {"battle_won": False}

    def _step(self, actions):
        reward, terminated, info = self.env.step([int(a) for a in actions])
        info = dict(info)
        won = bool(info.get("battle_won", False))
        timed_out = bool(info.get("episode_limit", False))
        if terminated and "episode_limit" not in info and not won and self._t + 1 >= self.episode_limit:
            # A SMAC without the flag: the limit was reached while allies were still alive.
            timed_out = any(self.env.get_unit_by_id(i).health > 0 for i in range(self.n_agents))
        self._env_truncated = timed_out
        info["success"] = won
        return float(reward), bool(terminated and not timed_out), info

    def get_obs(self):
        return np.asarray(self.env.get_obs(), np.float32).reshape(self.n_agents, self.obs_dim)

    def get_state(self):
        return np.asarray(self.env.get_state(), np.float32).reshape(self.state_dim)

    def get_avail_actions(self):
        return np.asarray(self.env.get_avail_actions(), np.float32).reshape(self.n_agents, self.n_actions)

    def get_positions(self):
        units = [self.env.get_unit_by_id(i) for i in range(self.n_agents)]
        return np.array([[u.pos.x, u.pos.y] for u in units], np.float32)

    def close(self):
        self.env.close()


def make_smac(map_name: str = "3m", **kwargs: Any) -> SMACTeamEnv:
    """``smac/<map>``: see :class:`SMACTeamEnv` for the options."""
    return SMACTeamEnv(map_name, **kwargs)


def smac_specs() -> list:
    """One registry entry per SMAC map (nothing imported: listing stays cheap)."""
    from marlx.envs.spec import family_specs

    return family_specs(
        "smac", "marlx.envs.smac:make_smac",
        {name: f"StarCraft II SMAC {name}: {a} vs {e} units, limit {limit} (needs SC2PATH)"
         for name, (a, e, limit) in SMAC_MAPS.items()},
        key="map_name", requires=("smac",), install=INSTALL,
    )
