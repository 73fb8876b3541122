"""SMAX (JaxMARL's StarCraft-like micromanagement benchmark) as a team, unbatched and batched.

``smax/<map>`` plays the allies of a JaxMARL SMAX map against its heuristic enemy
(``HeuristicEnemySMAX``), on CPU:

* obs ``(n_allies, obs_dim)``: SMAX's ``unit_list`` observation;
* state: SMAX's ``world_state`` (every unit's health, x, y, weapon cooldown, unit-type one-hot, then
  all teams, then all unit types), named in ``state_names``. With ``state_normalise`` (default) it is
  scaled as SMAC's ``get_state`` scales it: a live unit's position relative to the map centre and
  divided by the map's width/height (``(x - w/2) / w``, in ``[-0.5, 0.5]``), its remaining weapon cooldown
  divided by its unit type's cooldown (JaxMARL's cooldown keeps falling below zero while a unit does not
  fire, to -50 in a replay of 40k env steps; clipped at 0 as SMAC's remaining cooldown is); dead units stay
  all zero. JaxMARL's raw ``world_state`` has positions in
  map units (``0..32``): fed to QMIX's hypernetworks they make the mixer's weights and ``V(s)`` tens of
  times larger than the returns (measured: TD targets ~40 on returns below 2), and QMIX does not learn.
  ``state_normalise=False`` gives the raw ``world_state``;
* avail: SMAX's mask; actions are ``0-3`` move (N, E, S, W), ``4`` stop, ``5+j`` attack enemy ``j``.
  A dead ally can only take ``4`` (stop);
* positions: the allies' ``(x, y)`` on the map (SMAX units, map is 32 x 32);
* reward ``"dense"``: SMAX's default (enemy health lost, normalised, plus ``won_battle_bonus`` on a
  win); ``"sparse"``: SMAX's self-play reward, +1 win / -1 loss / 0 otherwise;
* terminated when a team is wiped out; the map's time limit (``max_steps``) truncates;
  ``info["success"]`` is a won battle (all enemies dead, an ally alive).

Each env step is ONE jitted call: the step, the observation, the mask and, when the episode ended,
the reset of the next episode (kept until :meth:`reset`; a seeded ``reset`` starts from the seed
instead). :class:`SMAXVectorTeamEnv` steps ``num_envs`` episodes in one ``vmap``-ed call with
gymnasium's NEXT_STEP auto-reset, the convention of RLlib's ``SingleAgentEnvRunner``; RLlib builds it
when ``config.env_runners(gym_env_vectorize_mode="vector_entry_point")`` passes ``num_envs`` to the
env creator (:func:`make_smax` returns the vector env then).

JAX is configured before its first import to stay on the CPU and not to spread one env over every
core (``XLA_FLAGS`` single-threaded Eigen, ``JAX_PLATFORMS=cpu``): set your own ``XLA_FLAGS`` before
importing marlx to override. Compiling a map's step takes 10-60 s on 2 busy cores and every Ray
env-runner process would pay it again, so compiled code is kept in JAX's persistent cache
(``$MARLX_JAX_CACHE``, default ``~/.cache/marlx/jax``; ``MARLX_JAX_CACHE=0`` turns it off, a
``JAX_COMPILATION_CACHE_DIR`` of your own wins).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import gymnasium as gym
import numpy as np

from marlx.envs.team import AVAIL, OBS, POSITIONS, STATE, TeamEnv

#: Every map JaxMARL 0.2 ships (``jaxmarl.environments.smax.MAP_NAME_TO_SCENARIO``), with (allies, enemies).
SMAX_MAPS: dict[str, tuple[int, int]] = {
    "3m": (3, 3),
    "2s3z": (5, 5),
    "25m": (25, 25),
    "3s5z": (8, 8),
    "8m": (8, 8),
    "5m_vs_6m": (5, 6),
    "10m_vs_11m": (10, 11),
    "27m_vs_30m": (27, 30),
    "3s5z_vs_3s6z": (8, 9),
    "3s_vs_5z": (3, 5),
    "6h_vs_8z": (6, 8),
    "smacv2_5_units": (5, 5),
    "smacv2_10_units": (10, 10),
    "smacv2_20_units": (20, 20),
}
REWARDS = ("dense", "sparse")
INSTALL = "pip install 'marlx[smax]'  (or: pip install jaxmarl==0.2.0)"
STOP_ACTION = 4  # SMAX: 0-3 move, 4 stop, 5+ attack


def configure_jax_for_cpu() -> None:
    """Keep JAX on the CPU and single-threaded per op; only effective before jax is imported."""
    if "jax" in sys.modules:
        return
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
        flags += " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    os.environ["XLA_FLAGS"] = flags.strip()
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def _enable_compilation_cache(jax) -> None:
    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
        return
    path = os.environ.get("MARLX_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "marlx", "jax"))
    if path in ("", "0"):
        return
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)


def _import_jax():
    configure_jax_for_cpu()
    try:
        import jax
        from jaxmarl.environments.smax import HeuristicEnemySMAX, map_name_to_scenario
    except ImportError as e:
        from marlx.errors import MissingDependencyError

        raise MissingDependencyError("SMAX", e.name or "jaxmarl", INSTALL) from None
    _enable_compilation_cache(jax)
    return jax, HeuristicEnemySMAX, map_name_to_scenario


class _SMAXCore:
    """The one jitted function behind both team envs of a map, compiled once per process.

    ``step(key, state, actions, restart) -> (key, next_state, view, next_view, dense_reward,
    sparse_reward, terminated, truncated, won)`` with ``view = (obs, world_state, avail, positions)``.
    It plays one step and, when that step ends the episode or ``restart`` is set, resets from the key
    within the same call: ``next_state``/``next_view`` are then the new episode's start. With
    ``restart`` the step is discarded and ``view`` is the new episode's first view, so a seeded reset
    needs no jitted function of its own (each compile costs 10-40 s on a busy 2-core machine).
    ``step_batched(keys, states, views, actions, restart, pending)`` is the same step ``vmap``-ed over
    envs, where a ``pending`` env (its episode ended in the last call) only shows its new episode.
    """

    def __init__(self, map_name: str, env_kwargs: dict, state_normalise: bool = True):
        jax, HeuristicEnemySMAX, map_name_to_scenario = _import_jax()
        jnp = jax.numpy
        self.jax = jax
        self.env = env = HeuristicEnemySMAX(scenario=map_name_to_scenario(map_name), **env_kwargs)
        inner = env._env  # the two-team SMAX under the heuristic-enemy wrapper
        self.n_allies, self.n_enemies = env.num_allies, env.num_enemies
        self.n_units = self.n_allies + self.n_enemies
        self.n_actions = int(env.action_spaces[env.agents[0]].n)
        self.obs_dim = int(inner.obs_size)
        self.state_dim = int(inner.state_size)
        self.max_steps = int(inner.max_steps)
        self.won_battle_bonus = float(inner.won_battle_bonus)
        self.state_names = (
            [f"unit{u}_{f}" for u in range(self.n_units) for f in inner.own_features]
            + [f"unit{u}_team" for u in range(self.n_units)]
            + [f"unit{u}_type" for u in range(self.n_units)]
        )
        agents = list(env.agents)
        n = self.n_allies
        bonus = self.won_battle_bonus
        n_feat = len(inner.own_features)
        feature = {name: i for i, name in enumerate(inner.own_features)}
        ix, iy, icd = feature["position_x"], feature["position_y"], feature["weapon_cooldown"]
        width, height = float(inner.map_width), float(inner.map_height)
        type_cooldowns = jnp.asarray(inner.unit_type_weapon_cooldowns, jnp.float32)

        def world_state(state, raw):
            raw = raw.astype(jnp.float32)
            if not state_normalise:
                return raw
            # SMAC get_state: (x - centre) / width, cooldown / the unit type's cooldown; dead units all zero.
            # JaxMARL counts a cooldown on below zero while the unit does not fire (-0.5 per env step): clip at 0.
            units = raw[: self.n_units * n_feat].reshape(self.n_units, n_feat)
            alive = state.state.unit_alive
            scaled = units.at[:, ix].set((units[:, ix] - width / 2) / width)
            scaled = scaled.at[:, iy].set((units[:, iy] - height / 2) / height)
            scaled = scaled.at[:, icd].set(jnp.maximum(units[:, icd], 0.0) / type_cooldowns[state.state.unit_types])
            scaled = jnp.where(alive[:, None], scaled, 0.0)
            return jnp.concatenate([scaled.reshape(-1), raw[self.n_units * n_feat:]])

        def strong(state):
            # Reset states carry weak-typed scalars, stepped states don't: one signature for jit.
            return jax.tree.map(lambda x: jnp.asarray(x, dtype=x.dtype), state)

        def view(state, obs_dict):
            obs = jnp.stack([obs_dict[a] for a in agents]).astype(jnp.float32)
            avail_dict = env.get_avail_actions(state)
            avail = jnp.stack([avail_dict[a] for a in agents]).astype(jnp.float32)
            positions = state.state.unit_positions[:n].astype(jnp.float32)
            return obs, world_state(state, obs_dict["world_state"]), avail, positions

        def reset(key):
            obs, state = env.reset(key)
            state = strong(state)
            return state, view(state, obs)

        def step(key, state, actions, restart):
            key, step_key, reset_key = jax.random.split(key, 3)
            action_dict = {a: actions[i] for i, a in enumerate(agents)}
            obs, stepped, rewards, dones, _ = env.step_env(step_key, state, action_dict)
            stepped = strong(stepped)
            alive = stepped.state.unit_alive
            allies_dead = ~jnp.any(alive[:n])
            enemies_dead = ~jnp.any(alive[n:])
            keep = ~restart
            terminated = (allies_dead | enemies_dead) & keep
            truncated = dones["__all__"] & ~terminated & keep
            won = enemies_dead & ~allies_dead & keep
            lost = allies_dead & ~enemies_dead & keep
            stepped_view = view(stepped, obs)
            next_state, next_view = jax.lax.cond(
                restart | terminated | truncated,
                lambda: reset(reset_key),
                lambda: (stepped, stepped_view),
            )
            out_view = jax.tree.map(lambda a, b: jnp.where(restart, a, b), next_view, stepped_view)
            # The allies share one team reward. The sparse one is SMAX's use_self_play_reward rule.
            dense = jnp.where(restart, 0.0, rewards[agents[0]]).astype(jnp.float32)
            sparse = (bonus * (won.astype(jnp.float32) - lost.astype(jnp.float32))).astype(jnp.float32)
            return key, next_state, out_view, next_view, dense, sparse, terminated, truncated, won

        def step_or_wait(key, state, view, actions, restart, pending):
            # Batched NEXT_STEP auto-reset: an env whose episode ended in the last call already
            # holds its new episode (state, view); this call only shows it, with reward 0.
            out = step(key, state, actions, restart)
            zero_f, zero_b = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.bool_)
            waiting = (key, state, view, view, zero_f, zero_f, zero_b, zero_b, zero_b)
            return jax.tree.map(lambda w, o: jnp.where(pending, w, o), waiting, out)

        # A state and view of the right structure for `restart` calls (their values are never used).
        shapes = jax.eval_shape(reset, jax.random.PRNGKey(0))
        self.blank_state, self.blank_view = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        self.step = jax.jit(step)
        self.step_batched = jax.jit(jax.vmap(step_or_wait))


_CORES: dict = {}


def _core(map_name: str, env_kwargs: dict, state_normalise: bool = True) -> _SMAXCore:
    """Share the compiled core between envs of the same map and options."""
    try:
        cache_key = (map_name, bool(state_normalise), tuple(sorted(env_kwargs.items())))
        hash(cache_key)
    except TypeError:  # unhashable option values (arrays): no sharing
        return _SMAXCore(map_name, env_kwargs, state_normalise)
    if cache_key not in _CORES:
        _CORES[cache_key] = _SMAXCore(map_name, env_kwargs, state_normalise)
    return _CORES[cache_key]


def _check_args(map_name: str, reward: str) -> None:
    if map_name not in SMAX_MAPS:
        from marlx.errors import UnknownNameError

        raise UnknownNameError("SMAX map", map_name, SMAX_MAPS)
    if reward not in REWARDS:
        raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")


class SMAXTeamEnv(TeamEnv):
    """One SMAX map as a team (see the module docstring).

    Args:
        map_name: a JaxMARL SMAX map (``SMAX_MAPS``).
        reward: ``"dense"`` or ``"sparse"`` (+1 win / -1 loss, 0 for a draw or the time limit).
        state_normalise: scale the state as SMAC does (module docstring); False: JaxMARL's raw ``world_state``.
        env_kwargs: more keyword arguments for ``HeuristicEnemySMAX`` (e.g. ``max_steps``,
            ``attack_mode``, ``won_battle_bonus``, ``see_enemy_actions``).
    """

    position_dim = 2

    def __init__(self, map_name: str = "3m", reward: str = "dense", state_normalise: bool = True,
                 **env_kwargs: Any):
        _check_args(map_name, reward)
        self.map_name, self.reward_mode = map_name, reward
        self.core = core = _core(map_name, env_kwargs, state_normalise)
        self.n_agents, self.n_actions = core.n_allies, core.n_actions
        # SMAX's discrete moves: a diagonal unit vector rotated 45 degrees anticlockwise (0 -> +y, 1 -> +x, ...)
        self.action_names = ["north", "east", "south", "west", "stop"] + [f"attack{j}" for j in range(core.n_enemies)]
        self.obs_dim, self.state_dim = core.obs_dim, core.state_dim
        self.episode_limit = core.max_steps
        self.state_names = core.state_names
        self._key = self._state = self._next = self._view = None
        self._seeded = False
        self._noop = np.zeros(self.n_agents, np.int32)
        super().__init__()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._seeded = seed is not None
        return super().reset(seed=seed, options=options)

    def _reset(self, rng, options):
        jax = self.core.jax
        if self._seeded or self._next is None:
            key = jax.random.PRNGKey(int(rng.integers(2**31 - 1)))
            out = self.core.step(key, self.core.blank_state, self._noop, True)
            self._key, self._state, view = out[0], out[1], out[2]
        else:  # the step that ended the last episode has started this one already
            self._state, view = self._next
        self._next = None
        self._view = tuple(np.asarray(x) for x in jax.device_get(view))
        return {"won": False}

    def _step(self, actions):
        jax = self.core.jax
        out = self.core.step(self._key, self._state, np.asarray(actions, np.int32), False)
        self._key, next_state, view, next_view = out[:4]
        dense, sparse, terminated, truncated, won, view = jax.device_get((*out[4:], view))
        self._view = tuple(np.asarray(x) for x in view)
        if terminated or truncated:
            self._next = (next_state, next_view)
        else:
            self._state = next_state
        self._env_truncated = bool(truncated)
        reward = sparse if self.reward_mode == "sparse" else dense
        return float(reward), bool(terminated), {"won": bool(won), "success": bool(won)}

    def get_obs(self):
        return self._view[0]

    def get_state(self):
        return self._view[1]

    def get_avail_actions(self):
        return self._view[2]

    def get_positions(self):
        return self._view[3]


class SMAXVectorTeamEnv(gym.vector.VectorEnv):
    """``num_envs`` SMAX episodes of one map stepped together by one ``vmap``-ed jitted call.

    Observations are the team dicts of :class:`SMAXTeamEnv` with a leading ``num_envs`` axis.
    Auto-reset follows gymnasium's NEXT_STEP mode (the one RLlib's ``SingleAgentEnvRunner`` expects):
    the step after an episode ended returns that env's new first observation, with reward 0 and its
    action ignored (the new episode was computed by the call that ended the old one). Seeding as in
    gymnasium's vector envs: ``seed=s`` seeds env ``i`` with ``s + i``; env ``i`` then plays exactly
    the episodes of ``SMAXTeamEnv.reset(seed=s + i)`` for the same actions.
    """

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, num_envs: int, map_name: str = "3m", reward: str = "dense", state_normalise: bool = True,
                 **env_kwargs: Any):
        _check_args(map_name, reward)
        self.core = core = _core(map_name, env_kwargs, state_normalise)
        self.map_name, self.reward_mode = map_name, reward
        self.num_envs = int(num_envs)
        self.n_agents = core.n_allies
        self.state_names = core.state_names
        spaces = {
            OBS: gym.spaces.Box(-np.inf, np.inf, (core.n_allies, core.obs_dim), np.float32),
            STATE: gym.spaces.Box(-np.inf, np.inf, (core.state_dim,), np.float32),
            AVAIL: gym.spaces.Box(0.0, 1.0, (core.n_allies, core.n_actions), np.float32),
            POSITIONS: gym.spaces.Box(-np.inf, np.inf, (core.n_allies, 2), np.float32),
        }
        self.single_observation_space = gym.spaces.Dict(spaces)
        self.single_action_space = gym.spaces.MultiDiscrete([core.n_actions] * core.n_allies)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        jnp = core.jax.numpy
        self._blank_state, self._blank_view = core.jax.tree.map(
            lambda x: jnp.broadcast_to(x, (self.num_envs, *x.shape)), (core.blank_state, core.blank_view)
        )
        self._rngs: list[np.random.Generator] | None = None
        self._keys = self._states = self._views = self._pending = None

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        jax = self.core.jax
        if seed is not None:
            seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed + i for i in range(self.num_envs)]
            self._rngs = [np.random.default_rng(s) for s in seeds]
        elif self._rngs is None:
            self._rngs = [np.random.default_rng() for _ in range(self.num_envs)]
        raw = np.array([int(rng.integers(2**31 - 1)) for rng in self._rngs], np.uint32)
        keys = jax.vmap(jax.random.PRNGKey)(raw)
        flags = np.ones(self.num_envs, bool)
        actions = np.zeros((self.num_envs, self.n_agents), np.int32)
        out = self.core.step_batched(keys, self._blank_state, self._blank_view, actions, flags, ~flags)
        self._keys, self._states, first, self._views = out[:4]
        self._pending = ~flags
        return self._team_obs(jax.device_get(first)), {"success": ~flags, "_success": flags}

    def step(self, actions):
        jax = self.core.jax
        actions = np.asarray(actions, np.int32).reshape(self.num_envs, self.n_agents)
        restart = np.zeros(self.num_envs, bool)
        out = self.core.step_batched(self._keys, self._states, self._views, actions, restart, self._pending)
        self._keys, self._states, view, self._views = out[:4]
        view, dense, sparse, term, trunc, won = jax.device_get((view, *out[4:]))
        term, trunc, won = np.asarray(term), np.asarray(trunc), np.asarray(won)
        self._pending = term | trunc
        reward = np.asarray(sparse if self.reward_mode == "sparse" else dense, np.float32)
        info = {"success": won, "_success": np.ones(self.num_envs, bool)}
        return self._team_obs(view), reward, term, trunc, info

    @staticmethod
    def _team_obs(view) -> dict[str, np.ndarray]:
        obs, state, avail, positions = (np.asarray(x) for x in view)
        return {OBS: obs, STATE: state, AVAIL: avail, POSITIONS: positions}


def make_smax(map_name: str = "3m", reward: str = "dense", num_envs: int | None = None, state_normalise: bool = True,
              **env_kwargs: Any):
    """``smax/<map>``: the team env, or the batched vector env when RLlib passes ``num_envs``."""
    if num_envs is not None:
        return SMAXVectorTeamEnv(num_envs, map_name, reward, state_normalise, **env_kwargs)
    return SMAXTeamEnv(map_name, reward, state_normalise, **env_kwargs)


def smax_specs() -> list:
    """One registry entry per SMAX map (kept free of jax imports: the registry lists them cheaply)."""
    from marlx.envs.spec import family_specs

    return family_specs(
        "smax", "marlx.envs.smax:make_smax",
        {name: f"SMAX {name}: {a} allies vs {e} heuristic enemies (JAX on CPU; reward dense|sparse)"
         for name, (a, e) in SMAX_MAPS.items()},
        key="map_name", requires=("jaxmarl", "jax"), install=INSTALL,
    )
