"""``TeamEnvRunner``: RLlib's env runner for team envs, with PyMARL's parallel-runner semantics.

Why not RLlib's ``SingleAgentEnvRunner`` (measured on Ray 2.60, see ``../shared/rllib-notes.md``): in
``complete_episodes`` mode it re-seeds every sub-env with the same seed at every ``sample()`` call (a seeded run
trains on ``num_envs`` start states), and it returns the first ``num_envs`` episodes to *finish*, so short
episodes are over-represented and long ones are dropped (while their steps still count as sampled).

This runner:

* builds ``num_envs_per_env_runner`` team envs (or one batched vector env, e.g. SMAX's, with
  ``gym_env_vectorize_mode: vector_entry_point``) and seeds each sub-env ONCE, at creation, from
  ``(seed, worker_index, env_index, evaluation)``; their RNGs then run on across ``sample()`` calls. Without a
  seed every sub-env draws fresh randomness;
* ``sample_mode="episodes"`` (value-based learners): returns exactly ``episodes_per_env`` whole episodes per
  sub-env, in the order they were played (no length bias; a sub-env that is done waits for the others);
  ``sample(num_episodes=N)`` (RLlib's evaluation) plays exactly ``N`` episodes, split evenly over sub-envs;
* ``sample_mode="fragments"`` (on-policy learners): ``rollout_fragment_length`` steps per sub-env per call,
  episodes (and recurrent states) continuing across calls, returned as chunks with the bootstrap observation and
  the recurrent state at each chunk start;
* runs ONE module forward pass per step over envs x agents on numpy team arrays (no RLlib episode objects or
  connector pipelines in the hot path) and keeps every per-step module output with the episode; a module with a
  ``fast_sampler()`` (QMIX's :class:`~marlx.modules.qmix_module.QMIXSampler`) selects actions through it when no
  attack is set (``fast_sampling: False`` turns it off; both paths give the same actions and outputs);
* calls the configured :class:`~marlx.attacks.base.Attack` (the action-time seam) between the module's joint
  action and the env; intended and executed actions are both kept;
* reports RLlib's metric keys (``episode_return_mean``, ``episode_len_mean``, ``num_episodes(_lifetime)``,
  ``num_env_steps_sampled(_lifetime)``) plus ``success_rate``, from exactly the episodes it returns, and calls
  RLlib callbacks (``on_episode_end``, ``on_sample_end``) with :class:`~marlx.runtime.episode.TeamEpisode` s.

Env steps counted = env steps returned. It is an ordinary RLlib ``EnvRunner``: local or remote (Ray actors on one
machine or a cluster), restarted by RLlib on failure, its state in checkpoints.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
import gymnasium as gym
import numpy as np
import torch
from ray.rllib.callbacks.utils import make_callback
from ray.rllib.core import COMPONENT_RL_MODULE, DEFAULT_AGENT_ID, DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.env import INPUT_ENV_SINGLE_SPACES, INPUT_ENV_SPACES
from ray.rllib.env.env_context import EnvContext
from ray.rllib.env.env_runner import EnvRunner
from ray.rllib.utils.checkpoints import Checkpointable
from ray.rllib.utils.framework import get_device
from ray.rllib.utils.metrics import (
    EPISODE_DURATION_SEC_MEAN,
    EPISODE_LEN_MAX,
    EPISODE_LEN_MEAN,
    EPISODE_LEN_MIN,
    EPISODE_RETURN_MAX,
    EPISODE_RETURN_MEAN,
    EPISODE_RETURN_MIN,
    NUM_AGENT_STEPS_SAMPLED,
    NUM_AGENT_STEPS_SAMPLED_LIFETIME,
    NUM_ENV_STEPS_SAMPLED,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    NUM_EPISODES,
    NUM_EPISODES_LIFETIME,
    NUM_MODULE_STEPS_SAMPLED,
    NUM_MODULE_STEPS_SAMPLED_LIFETIME,
    WEIGHTS_SEQ_NO,
)

from marlx._rllib import module_forward, registered_env_creator
from marlx.attacks.base import ATTACK_KEY, AttackContext, make_attack
from marlx.runtime.columns import ATTACKED, AVAIL, STATE_OUT_PREFIX
from marlx.runtime.episode import TeamEpisode

logger = logging.getLogger(__name__)

SAMPLE_MODES = ("episodes", "fragments")
SUCCESS_METRIC = "success_rate"
#: Seed offset of evaluation runners' sub-envs (RLlib uses +1e6 for evaluation workers too).
_EVAL_STREAM = 1


def sub_env_seeds(seed: int | None, worker_index: int, num_envs: int, in_evaluation: bool) -> list[int | None]:
    """One distinct seed per sub-env from ``(seed, worker_index, env_index, evaluation)``; ``None`` without a seed."""
    if seed is None:
        return [None] * num_envs
    base = np.random.SeedSequence([int(seed), int(worker_index or 0), _EVAL_STREAM if in_evaluation else 0])
    return [int(s.generate_state(1)[0]) for s in base.spawn(num_envs)]


class _Ongoing:
    """The running chunk of one sub-env's episode (lists, stacked when the chunk is returned)."""

    __slots__ = ("obs", "actions", "executed", "rewards", "extras", "state_in", "id_", "start_t", "t",
                 "ret", "t0", "infos_last")

    def __init__(self, first_obs: dict, state_in: dict, id_: str | None = None, start_t: int = 0, ret: float = 0.0):
        self.obs = {k: [v] for k, v in first_obs.items()}
        self.actions, self.executed, self.rewards = [], [], []
        self.extras: dict[str, list] = defaultdict(list)
        self.state_in = state_in
        self.id_ = id_ or TeamEpisode.__dataclass_fields__["id_"].default_factory()
        self.start_t = start_t
        self.t = start_t  # steps of the whole episode so far
        self.ret = ret  # return of the whole episode so far
        self.t0 = time.perf_counter()
        self.infos_last: dict = {}

    def __len__(self) -> int:
        return len(self.rewards)

    def build(self, env_index: int, terminated: bool, truncated: bool) -> TeamEpisode:
        return TeamEpisode(
            obs={k: np.stack(v) for k, v in self.obs.items()},
            actions=np.asarray(self.actions, np.int64).reshape(len(self.rewards), -1),
            executed_actions=np.asarray(self.executed, np.int64).reshape(len(self.rewards), -1),
            rewards=np.asarray(self.rewards, np.float32),
            terminated=terminated,
            truncated=truncated,
            extras={k: np.stack(v) for k, v in self.extras.items()},
            state_in=self.state_in,
            infos_last=self.infos_last,
            id_=self.id_,
            env_index=env_index,
            start_t=self.start_t,
            duration_s=time.perf_counter() - self.t0,
        )


class _EnvList:
    """``num_envs`` separate team envs stepped one by one (only the ones asked for)."""

    batched = False

    def __init__(self, envs: list):
        self.envs = envs
        self.num_envs = len(envs)
        self.single_observation_space = envs[0].observation_space
        self.single_action_space = envs[0].action_space

    def reset(self, i: int, seed: int | None):
        return self.envs[i].reset(seed=seed)

    def step(self, rows, actions):
        """``actions [len(rows), n]`` -> list of (obs, reward, terminated, truncated, info) per row."""
        return [self.envs[i].step(actions[j]) for j, i in enumerate(rows)]

    def close(self):
        for e in self.envs:
            e.close()


class _BatchedEnv:
    """A vector env that steps all sub-envs in one call (SMAX) with gymnasium's NEXT_STEP autoreset.

    A finished sub-env's next ``step`` returns its new first observation (its action is ignored, reward 0): that
    call is turned into the reset of the sub-env's next episode, so every episode is still seen whole.
    """

    batched = True

    def __init__(self, env):
        self.env = env
        self.num_envs = env.num_envs
        self.single_observation_space = env.single_observation_space
        self.single_action_space = env.single_action_space

    def reset_all(self, seeds: list[int | None]):
        seed = None if seeds[0] is None else list(seeds)
        obs, info = self.env.reset(seed=seed)
        return obs, info

    def step_all(self, actions):
        return self.env.step(actions)

    def close(self):
        self.env.close()


def _row_info(info: dict, i: int) -> dict:
    """Sub-env ``i``'s entries of a vector env's info dict (gymnasium's ``key`` / ``_key`` layout)."""
    return {k: v[i] for k, v in info.items() if not k.startswith("_")}


class TeamEnvRunner(EnvRunner, Checkpointable):
    """RLlib ``EnvRunner`` for marlx team envs (see the module docstring)."""

    def __init__(self, *, config, **kwargs):
        super().__init__(config=config, **kwargs)
        self.worker_index = int(self.worker_index or 0)
        self.spaces = kwargs.get("spaces", {}) or {}
        self.tune_trial_id = kwargs.get("tune_trial_id")
        from ray.rllib.utils import force_list

        self._callbacks = [cls() for cls in force_list(self.config.callbacks_class)]
        self._device = get_device(self.config, 0 if not self.worker_index else self.config.num_gpus_per_env_runner)
        self.sample_mode = getattr(self.config, "sample_mode", "episodes")
        if self.sample_mode not in SAMPLE_MODES:
            raise ValueError(f"sample_mode must be one of {SAMPLE_MODES}, got {self.sample_mode!r}")
        self.episodes_per_env = int(getattr(self.config, "episodes_per_env", 1))
        self.keep_state_out = bool(getattr(self.config, "keep_state_out", False))
        keep = getattr(self.config, "keep_outputs", "all")
        self.keep_outputs = None if keep == "all" else set(keep)
        self.env = None
        self.num_envs = 0
        self.module = None
        # remote runners: lifetime env steps of the whole group ~ own steps x number of runners (RLlib's rule)
        self._step_factor = max(1, int(self.config.num_env_runners or 0)) if self.worker_index > 0 else 1
        self._global_steps_base = 0
        self._local_steps_since_sync = 0
        self._weights_seq_no = 0
        self._episodes_lifetime = 0
        if (self.worker_index > 0 or self.config.create_env_on_local_worker
                or self.config.num_env_runners == 0):
            self.make_env()
        self.make_module()

    # -- construction ---------------------------------------------------------------------------
    def _env_creator(self):
        env_ctx = self.config.env_config
        if not isinstance(env_ctx, EnvContext):
            env_ctx = EnvContext(env_ctx or {}, worker_index=self.worker_index, num_workers=self.num_workers,
                                 remote=self.config.remote_worker_envs)
        env = self.config.env
        if not env:
            raise ValueError("config.env is not set: call config.environment('<env name>')")
        creator = registered_env_creator(env) if isinstance(env, str) else None
        if creator is not None:
            return (lambda: creator(env_ctx)), (lambda n: creator(env_ctx | {"num_envs": n}))
        if callable(env):
            return (lambda: env(env_ctx)), (lambda n: env(env_ctx | {"num_envs": n}))
        return (lambda: gym.make(env, **dict(env_ctx))), None

    def make_env(self) -> None:
        if self.env is not None:
            try:
                self.env.close()
            except Exception as e:  # noqa: BLE001 - a broken env must not stop its replacement
                logger.warning("closing the old env failed: %s", e)
        n = int(self.config.num_envs_per_env_runner)
        make_one, make_vec = self._env_creator()
        if self.config.gym_env_vectorize_mode == "vector_entry_point" and make_vec is not None:
            self.env = _BatchedEnv(make_vec(n))
        else:
            self.env = _EnvList([make_one() for _ in range(n)])
        self.num_envs = self.env.num_envs
        self._seeds = sub_env_seeds(self.config.seed, self.worker_index, self.num_envs,
                                    bool(self.config.in_evaluation))
        self._needs_reset = True
        self._ongoing: list[_Ongoing | None] = [None] * self.num_envs
        self._cur_obs: list[dict | None] = [None] * self.num_envs
        make_callback(
            "on_environment_created", callbacks_objects=self._callbacks,
            callbacks_functions=self.config.callbacks_on_environment_created,
            kwargs=dict(env_runner=self, metrics_logger=self.metrics, env=self.env, env_context=self.config.env_config),
        )

    def make_module(self) -> None:
        try:
            spec = self.config.get_rl_module_spec(env=None, spaces=self.get_spaces(), inference_only=True)
            self.module = spec.build()
            self.module.to(self._device)
        except NotImplementedError:
            self.module = None
        self._init_state = None
        if self.module is not None and self.module.is_stateful():
            self._init_state = {k: v.detach().cpu().numpy() for k, v in self.module.get_initial_state().items()}
        self._state = None  # {key: [num_envs, ...]} recurrent state of every sub-env
        self._make_sampler()
        n_agents = int(len(self.env.single_action_space.nvec)) if self.env is not None else 0
        n_actions = int(self.env.single_action_space.nvec[0]) if self.env is not None else 0
        self.attack = None
        if self.env is not None:
            self.attack = make_attack(getattr(self.config, ATTACK_KEY, None), self.num_envs, n_agents, n_actions,
                                      seed=None if self.config.seed is None else self._seeds[0])

    def _make_sampler(self) -> None:
        """The module's fast action-selection path (same actions and outputs as its forward), when it has one."""
        self._sampler = None
        if self.module is not None and getattr(self.config, "fast_sampling", True):
            make = getattr(self.module, "fast_sampler", None)
            self._sampler = make() if make is not None else None

    def get_spaces(self):
        if self.env is None:
            return self.spaces
        single = (self.env.single_observation_space, self.env.single_action_space)
        return {INPUT_ENV_SPACES: single, INPUT_ENV_SINGLE_SPACES: single, DEFAULT_MODULE_ID: single}

    def assert_healthy(self):
        assert self.env is not None and self.module is not None

    def stop(self) -> None:
        if self.env is not None:
            self.env.close()

    # -- sampling -------------------------------------------------------------------------------
    def sample(self, *, num_timesteps: int | None = None, num_episodes: int | None = None,
               explore: bool | None = None, random_actions: bool = False, force_reset: bool = False,
               **kwargs) -> list[TeamEpisode]:
        """Whole episodes (``sample_mode="episodes"``, or whenever ``num_episodes`` is given) or fragments."""
        if self.env is None:
            return []
        explore = self.config.explore if explore is None else explore
        if force_reset or self._needs_reset:
            self._reset_all()
        t0 = time.perf_counter()
        if num_episodes is not None:
            out = self._sample_episodes(self._split(int(num_episodes)), explore, exact=True)
        elif num_timesteps is not None and self.sample_mode == "episodes":
            out = []
            while sum(len(e) for e in out) < num_timesteps:
                out += self._sample_episodes([1] * self.num_envs, explore)
        elif self.sample_mode == "episodes":
            out = self._sample_episodes([self.episodes_per_env] * self.num_envs, explore)
        else:
            length = self.config.get_rollout_fragment_length(self.worker_index)
            if num_timesteps is not None:
                length = max(1, math.ceil(num_timesteps / self.num_envs))
            out = self._sample_fragments(int(length), explore)
        self._log_sampled(out, time.perf_counter() - t0)
        make_callback(
            "on_sample_end", callbacks_objects=self._callbacks,
            callbacks_functions=self.config.callbacks_on_sample_end,
            kwargs=dict(env_runner=self, metrics_logger=self.metrics, samples=out),
        )
        return out

    def _split(self, n: int) -> list[int]:
        """``n`` episodes over the sub-envs as evenly as possible (the first ``n % num_envs`` get one more)."""
        base, extra = divmod(n, self.num_envs)
        return [base + (1 if i < extra else 0) for i in range(self.num_envs)]

    def _reset_all(self) -> None:
        """First reset of every sub-env, with its own seed (the only seeded reset it ever gets)."""
        self._ongoing = [None] * self.num_envs
        self._state = None
        if self.env.batched:
            obs, info = self.env.reset_all(self._seeds if self._needs_reset else [None] * self.num_envs)
            for i in range(self.num_envs):
                self._cur_obs[i] = {k: np.asarray(v[i]) for k, v in obs.items()}
                self._begin(i)
        else:
            for i in range(self.num_envs):
                self._reset_one(i, self._seeds[i] if self._needs_reset else None)
        self._needs_reset = False

    def _reset_one(self, i: int, seed: int | None = None) -> None:
        try:
            obs, _ = self.env.reset(i, seed)
        except Exception:
            if not self.config.restart_failed_sub_environments:
                raise
            logger.exception("resetting sub-env %d failed; re-creating it", i)
            self._recreate_sub_env(i)
            obs, _ = self.env.reset(i, None)
        self._cur_obs[i] = obs
        self._begin(i)

    def _recreate_sub_env(self, i: int) -> None:
        make_one, _ = self._env_creator()
        try:
            self.env.envs[i].close()
        except Exception:  # noqa: BLE001
            pass
        self.env.envs[i] = make_one()

    def _begin(self, i: int) -> None:
        """Start a new episode on sub-env ``i`` from its current observation."""
        if self._init_state is not None:
            if self._state is None:
                self._state = {k: np.repeat(v[None], self.num_envs, 0) for k, v in self._init_state.items()}
            for k, v in self._init_state.items():
                self._state[k][i] = v
        self._ongoing[i] = _Ongoing(self._cur_obs[i], self._state_row(i))
        if self.attack is not None:
            self.attack.begin_episode(i)

    def _state_row(self, i: int) -> dict:
        return {} if self._state is None else {k: v[i].copy() for k, v in self._state.items()}

    def _epsilon_t(self) -> int:
        return int(self._global_steps_base + self._local_steps_since_sync * self._step_factor)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(array)
        return t if self._device.type == "cpu" else t.to(self._device)

    def _act(self, rows: np.ndarray, explore: bool):
        """One forward pass for the sub-envs ``rows``: ``(intended [B, n], executed [B, n], extras)``."""
        all_rows = len(rows) == self.num_envs
        if self._sampler is not None and self.attack is None:
            fast = self._act_fast(rows, all_rows, explore)
            if fast is not None:
                return fast
        obs_np = self._rows_obs(rows)
        obs = {k: self._tensor(v) for k, v in obs_np.items()}
        batch = {Columns.OBS: obs}
        state = self._rows_state(rows, all_rows)
        if state is not None:
            batch[Columns.STATE_IN] = {k: self._tensor(v) for k, v in state.items()}
        with torch.no_grad():
            out = module_forward(self.module, batch, explore, self._epsilon_t())
        actions = out[Columns.ACTIONS]
        actions = actions.cpu().numpy() if isinstance(actions, torch.Tensor) else np.asarray(actions)
        actions = actions.reshape(len(rows), -1).astype(np.int64)
        extras = {}
        for k, v in out.items():
            if k in (Columns.ACTIONS, Columns.STATE_OUT) or (self.keep_outputs is not None and k not in self.keep_outputs):
                continue
            extras[k] = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        state_out = out.get(Columns.STATE_OUT)
        executed = actions
        if self.attack is not None:
            ctx = AttackContext(
                module=self.module, obs=obs, state_in=batch.get(Columns.STATE_IN, {}), outputs=out,
                actions=actions, avail=obs_np.get(AVAIL), t=np.array([self._ongoing[i].t for i in rows]),
                env_indices=rows, explore=explore,
            )
            executed, attack_extras = self.attack(ctx)
            executed = np.asarray(executed, np.int64).reshape(actions.shape)
            extras.update({k: np.asarray(v) for k, v in attack_extras.items()})
            extras.setdefault(ATTACKED, executed != actions)
        if state_out is not None:
            self._store_state(rows, all_rows, {k: v.detach().cpu().numpy() for k, v in state_out.items()}, extras)
        return actions, executed, extras

    def _act_fast(self, rows: np.ndarray, all_rows: bool, explore: bool):
        """:meth:`_act` through the module's fast sampler (no attack); None where the sampler declines the input."""
        obs = self._rows_obs(rows, self._sampler.obs_keys)
        res = self._sampler(obs, self._rows_state(rows, all_rows), explore, self._epsilon_t())
        if res is None:
            return None
        actions, outputs, state_np = res
        keep = self.keep_outputs
        extras = {k: v for k, v in outputs.items() if keep is None or k in keep}
        if state_np is not None:
            self._store_state(rows, all_rows, state_np, extras)
        return actions, actions, extras

    def _rows_obs(self, rows: np.ndarray, keys=None) -> dict:
        """The current observations of the sub-envs ``rows`` as ``{leaf: [B, ...]}`` (only ``keys`` when given)."""
        cur = self._cur_obs
        keys = list(cur[rows[0]]) if keys is None else keys
        if len(rows) == 1:
            return {k: cur[rows[0]][k][None] for k in keys}
        return {k: np.stack([cur[i][k] for i in rows]) for k in keys}

    def _rows_state(self, rows: np.ndarray, all_rows: bool) -> dict | None:
        """The recurrent state of the sub-envs ``rows`` (``{key: [B, ...]}``), None for a stateless module."""
        if self._state is None:
            return None
        return self._state if all_rows else {k: v[rows] for k, v in self._state.items()}

    def _store_state(self, rows, all_rows: bool, state_np: dict, extras: dict) -> None:
        """The module's recurrent state after the step: into the sub-envs' rows (and the extras when kept)."""
        if self._state is not None:
            for k, v in state_np.items():
                if all_rows:
                    self._state[k][...] = v
                else:
                    self._state[k][rows] = v
        if self.keep_state_out:
            extras.update({STATE_OUT_PREFIX + k: v for k, v in state_np.items()})

    def _record(self, i: int, j: int, actions, executed, extras, obs, reward, info) -> None:
        ep = self._ongoing[i]
        ep.actions.append(actions[j])
        ep.executed.append(executed[j])
        ep.rewards.append(float(reward))
        for k, v in extras.items():
            ep.extras[k].append(v[j])
        for k, v in obs.items():
            ep.obs[k].append(v)
        ep.t += 1
        ep.ret += float(reward)
        ep.infos_last = info
        self._cur_obs[i] = obs

    def _step_rows(self, rows: np.ndarray, explore: bool) -> list[tuple[int, bool, bool]]:
        """Step the sub-envs ``rows`` once; returns ``(env_index, terminated, truncated)`` of finished ones."""
        actions, executed, extras = self._act(rows, explore)
        results = self._safe_step(rows, executed)
        finished = []
        for j, i in enumerate(rows):
            res = results[j]
            if res is None:  # the sub-env failed and was re-created: its episode is dropped
                continue
            o, r, term, trunc, info = res
            self._record(i, j, actions, executed, extras, o, r, info)
            if term or trunc:
                finished.append((i, bool(term), bool(trunc and not term)))
        self._local_steps_since_sync += len(rows)
        return finished

    def _safe_step(self, rows, executed) -> list:
        if not self.config.restart_failed_sub_environments:
            return self.env.step(rows, executed)
        out = []
        for j, i in enumerate(rows):
            try:
                out.append(self.env.envs[i].step(executed[j]))
            except Exception:
                logger.exception("sub-env %d failed in step(); re-creating it and dropping its episode", i)
                self._recreate_sub_env(i)
                self._reset_one(i)
                out.append(None)
        return out

    def _step_batched(self, explore: bool) -> list[tuple[int, bool, bool]]:
        """One call of a batched env (NEXT_STEP autoreset) for all sub-envs.

        Running episodes record the step; a sub-env whose episode ended at the previous call gets its new first
        observation from this call (the env ignores its action), which starts its next episode.
        """
        running = np.array([i for i in range(self.num_envs) if self._ongoing[i] is not None], np.int64)
        restarting = [i for i in range(self.num_envs) if self._ongoing[i] is None]
        full = np.zeros((self.num_envs, len(self.env.single_action_space.nvec)), np.int64)
        if len(running):
            actions, executed, extras = self._act(running, explore)
            full[running] = executed
        obs, rew, term, trunc, info = self.env.step_all(full)
        finished = []
        for j, i in enumerate(running):
            o = {k: np.asarray(v[i]) for k, v in obs.items()}
            self._record(i, j, actions, executed, extras, o, rew[i], _row_info(info, i))
            if term[i] or trunc[i]:
                finished.append((i, bool(term[i]), bool(trunc[i] and not term[i])))
        for i in restarting:
            self._cur_obs[i] = {k: np.asarray(v[i]) for k, v in obs.items()}
            self._begin(i)
            self._fresh[i] = True
        self._local_steps_since_sync += len(running)
        return finished

    def _sample_episodes(self, quota: list[int], explore: bool, exact: bool = False) -> list[TeamEpisode]:
        """At least ``quota[i]`` whole episodes of sub-env ``i``, none of them chosen by its length.

        Separate sub-envs: exactly ``quota[i]`` each; a sub-env that is done waits. A batched env steps all its
        sub-envs together: in training every episode a sub-env completes is returned (the one still running at
        the end goes on at the next call, so every played episode is returned exactly once); with ``exact``
        (evaluation) exactly the first ``quota[i]`` episodes that start during this call are returned.
        """
        quota = list(quota)
        done: list[TeamEpisode] = []
        if self.env.batched:
            # in evaluation only episodes that start now count; one that has not taken a step yet has
            self._fresh = [not exact or (o is not None and len(o) == 0) for o in self._ongoing]
            while any(q > 0 for q in quota):
                for i, term, trunc in self._step_batched(explore):
                    ep = self._ongoing[i].build(i, term, trunc)
                    self._ongoing[i] = None
                    if self._fresh[i] and (quota[i] > 0 or not exact):
                        done.append(ep)
                        quota[i] = max(0, quota[i] - 1)
                        self._episode_end(ep)
            return done
        for i in range(self.num_envs):  # a sub-env whose episode was dropped (env failure) starts anew
            if quota[i] > 0 and self._ongoing[i] is None:
                self._reset_one(i)
        while any(q > 0 for q in quota):
            rows = np.array([i for i in range(self.num_envs) if quota[i] > 0], np.int64)
            for i, term, trunc in self._step_rows(rows, explore):
                ep = self._ongoing[i].build(i, term, trunc)
                done.append(ep)
                quota[i] -= 1
                self._episode_end(ep)
                self._ongoing[i] = None
                if quota[i] > 0:
                    self._reset_one(i)
        return done

    def _sample_fragments(self, length: int, explore: bool) -> list[TeamEpisode]:
        if self.env.batched:
            raise ValueError("sample_mode='fragments' needs separate sub-envs (gym_env_vectorize_mode: sync)")
        out: list[TeamEpisode] = []
        rows = np.arange(self.num_envs)
        for i in range(self.num_envs):
            if self._ongoing[i] is None:
                self._reset_one(i)
        for _ in range(length):
            for i, term, trunc in self._step_rows(rows, explore):
                ep = self._ongoing[i].build(i, term, trunc)
                out.append(ep)
                self._episode_end(ep, whole_return=self._ongoing[i].ret, whole_len=self._ongoing[i].t)
                self._reset_one(i)
        for i in range(self.num_envs):  # cut the running chunks; their episodes go on at the next call
            ong = self._ongoing[i]
            if len(ong) == 0:
                continue
            out.append(ong.build(i, False, False))
            self._ongoing[i] = _Ongoing(self._cur_obs[i], self._state_row(i), id_=ong.id_, start_t=ong.t, ret=ong.ret)
        return out

    # -- metrics --------------------------------------------------------------------------------
    def _episode_end(self, ep: TeamEpisode, whole_return: float | None = None, whole_len: int | None = None) -> None:
        self._episodes_lifetime += 1
        ret = ep.get_return() if whole_return is None else whole_return
        length = len(ep) if whole_len is None else whole_len
        win = max(1, int(math.ceil(self.config.metrics_num_episodes_for_smoothing / (self.config.num_env_runners or 1))))
        m = self.metrics
        m.log_value(EPISODE_LEN_MEAN, length, window=win)
        m.log_value(EPISODE_RETURN_MEAN, ret, window=win)
        m.log_value(EPISODE_DURATION_SEC_MEAN, ep.get_duration_s(), window=win)
        m.log_value(("agent_episode_return_mean", DEFAULT_AGENT_ID), ret, window=win)
        m.log_value(("module_episode_return_mean", DEFAULT_MODULE_ID), ret, window=win)
        m.log_value(EPISODE_LEN_MIN, length, reduce="min", window=win)
        m.log_value(EPISODE_RETURN_MIN, ret, reduce="min", window=win)
        m.log_value(EPISODE_LEN_MAX, length, reduce="max", window=win)
        m.log_value(EPISODE_RETURN_MAX, ret, reduce="max", window=win)
        make_callback(
            "on_episode_end", callbacks_objects=self._callbacks,
            callbacks_functions=self.config.callbacks_on_episode_end,
            kwargs=dict(episode=ep, env_runner=self, metrics_logger=m, env=self.env, rl_module=self.module,
                        env_index=ep.env_index, prev_episode_chunks=[]),
        )

    def _log_sampled(self, episodes: list[TeamEpisode], seconds: float) -> None:
        steps = sum(len(e) for e in episodes)
        finished = sum(1 for e in episodes if e.is_done)
        m = self.metrics
        m.log_value(NUM_ENV_STEPS_SAMPLED, steps, reduce="sum")
        m.log_value((NUM_AGENT_STEPS_SAMPLED, DEFAULT_AGENT_ID), steps, reduce="sum")
        m.log_value((NUM_MODULE_STEPS_SAMPLED, DEFAULT_MODULE_ID), steps, reduce="sum")
        m.log_value(NUM_EPISODES, finished, reduce="sum")
        m.log_value(NUM_ENV_STEPS_SAMPLED_LIFETIME, steps, reduce="lifetime_sum", with_throughput=True)
        m.log_value((NUM_AGENT_STEPS_SAMPLED_LIFETIME, DEFAULT_AGENT_ID), steps, reduce="lifetime_sum")
        m.log_value((NUM_MODULE_STEPS_SAMPLED_LIFETIME, DEFAULT_MODULE_ID), steps, reduce="lifetime_sum")
        m.log_value(NUM_EPISODES_LIFETIME, finished, reduce="lifetime_sum")
        if seconds > 0 and steps:
            m.log_value("env_steps_per_s", steps / seconds, window=20)
        self.num_env_steps_sampled_lifetime = self._epsilon_t()

    def get_metrics(self):
        return self.metrics.reduce()

    # -- state ----------------------------------------------------------------------------------
    def get_state(self, components=None, *, not_components=None, **kwargs) -> dict:
        state = {
            NUM_ENV_STEPS_SAMPLED_LIFETIME: self._epsilon_t(),
            "marlx_team_runner": {"episodes_lifetime": self._episodes_lifetime,
                                  "attack": None if self.attack is None else self.attack.get_state()},
        }
        if self.module is not None and self._check_component(COMPONENT_RL_MODULE, components, not_components):
            state[COMPONENT_RL_MODULE] = self.module.get_state(
                components=self._get_subcomponents(COMPONENT_RL_MODULE, components),
                not_components=self._get_subcomponents(COMPONENT_RL_MODULE, not_components),
                **kwargs,
            )
            state[WEIGHTS_SEQ_NO] = self._weights_seq_no
        return state

    def set_state(self, state: dict) -> None:
        if COMPONENT_RL_MODULE in state and self.module is not None:
            seq = state.get(WEIGHTS_SEQ_NO, 0)
            if seq == 0 or self._weights_seq_no < seq:
                module_state = state[COMPONENT_RL_MODULE]
                import ray

                if isinstance(module_state, ray.ObjectRef):
                    module_state = ray.get(module_state)
                if isinstance(module_state, dict) and DEFAULT_MODULE_ID in module_state:
                    module_state = module_state[DEFAULT_MODULE_ID]
                self.module.set_state(module_state)
                self._make_sampler()
            if seq > 0:
                self._weights_seq_no = seq
        if NUM_ENV_STEPS_SAMPLED_LIFETIME in state and state[NUM_ENV_STEPS_SAMPLED_LIFETIME] is not None:
            self._global_steps_base = int(state[NUM_ENV_STEPS_SAMPLED_LIFETIME])
            self._local_steps_since_sync = 0
            self.num_env_steps_sampled_lifetime = self._global_steps_base
        extra = state.get("marlx_team_runner")
        if extra:
            self._episodes_lifetime = extra.get("episodes_lifetime", self._episodes_lifetime)
            if extra.get("attack") is not None and self.attack is not None:
                self.attack.set_state(extra["attack"])

    def get_ctor_args_and_kwargs(self):
        return (), {"config": self.config}

    def get_metadata(self):
        return Checkpointable.get_metadata(self)

    def get_checkpointable_components(self):
        return [(COMPONENT_RL_MODULE, self.module)] if self.module is not None else []

