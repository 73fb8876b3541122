"""MAPPO and IPPO on the marlx team view (spec ``shared/specs/mappo.md``; Yu et al., NeurIPS 2022 D&B).

One training iteration:

1. every env runner (:class:`~marlx.runtime.runner.TeamEnvRunner`, ``sample_mode="fragments"``) plays
   ``rollout_fragment_length`` steps per sub-env (``auto`` = ``train_batch_size_per_learner`` / envs) with the
   stochastic :class:`~marlx.modules.mappo_module.MAPPOTeamModule` actor, keeping each agent's log-prob and
   the actor's hidden state after every step; episodes and hidden states continue across iterations;
2. the configured intrinsic-reward components observe the fragments (e.g. FoX's formation counts), the
   fragments are padded into one batch ``[B, T+1, ...]`` and annotated by the components;
3. :class:`~marlx.algorithms.mappo.learner.MAPPOLearner` computes per-agent GAE once and runs ``num_epochs``
   epochs over minibatches of ``data_chunk_length``-step chunks;
4. weights (actor only) go back to the env runners.

RLlib ships no MAPPO; RLlib's open example PR (one actor per agent, a joint-ratio-free but KL-penalised PPO, no
value normalisation, fails when an agent is missing) is not used (spec §2). The config is an
``AlgorithmConfig`` with PPO's attribute names where they mean the same thing; not a ``PPOConfig`` subclass, so
that none of PPO's connectors, KL schedule or joint-action loss can slip in [marlx]. Defaults are the official
on-policy code's (``onpolicy/config.py`` at ``de66d7a``, SMAC scripts); sources are in each attribute's doc.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.policy.sample_batch import DEFAULT_POLICY_ID, MultiAgentBatch, SampleBatch
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    ENV_RUNNER_SAMPLING_TIMER,
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    NUM_AGENT_STEPS_SAMPLED_LIFETIME,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TIMERS,
)

from marlx._rllib import parallel_sample
from marlx.algorithms.mappo.learner import H_IN, TRUNCATEDS, MAPPOLearner
from marlx.callbacks import TeamMetricsCallback
from marlx.intrinsic.base import IntrinsicAlgorithmMixin
from marlx.modules.mappo_module import CRITIC_INPUTS, H_PI, MODEL_DEFAULTS, MAPPOTeamModule
from marlx.runtime.columns import ACTION_LOGP, MASK, STATE_OUT_PREFIX
from marlx.runtime.config import TeamRuntimeConfig

_MODEL_KEYS = ("hidden_size", "layer_N", "obs_agent_id", "critic_input", "death_mask", "use_valuenorm", "gain")
ADV_NORMS = ("active", "all", "none")
VALUENORM_UPDATES = ("minibatch", "iteration")
#: Intrinsic components that need a module other than MAPPO's (FoX's awareness reads FoX's formation encoder).
_UNSUPPORTED_INTRINSIC = {"fox_awareness": "it reads FoX's QMIX module (formation encoder, per-step hidden states)"}


class MAPPOConfig(TeamRuntimeConfig, AlgorithmConfig):
    """Configuration of MAPPO (``critic_input="state_id"``) and IPPO (:class:`IPPOConfig`, ``"obs_id"``).

    Example::

        config = (MAPPOConfig().environment("builtin/push_box", env_config={"size": 3})
                  .env_runners(num_envs_per_env_runner=8)
                  .training(train_batch_size_per_learner=800, num_epochs=5, critic_input="state_id"))
        algo = config.build_algo()
    """

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or MAPPO)
        # -- RLlib settings with the official values ---------------------------------------------
        self.lr = 5e-4  # official --lr (actor), onpolicy/config.py
        self.gamma = 0.99  # official --gamma
        self.grad_clip = 10.0  # official --max_grad_norm, applied per optimiser (actor, critic)
        self.grad_clip_by = "global_norm"
        self.num_epochs = 15  # official --ppo_epoch (15 on the SMAC easy maps; 10 / 5 on hard ones)
        # None: num_mini_batch minibatches (official --num_mini_batch 1); else minibatches of about this many env
        # steps, made of whole data_chunk_length chunks
        self.minibatch_size = None
        self.train_batch_size_per_learner = 3200  # SMAC scripts: 8 envs x 400 steps (--episode_length 400)
        self.num_envs_per_env_runner = 8  # SMAC scripts --n_rollout_threads 8
        self.num_env_runners = 0
        self.rollout_fragment_length = "auto"
        self.evaluation_config = {"explore": False}  # greedy test episodes (per-agent argmax)
        self.evaluation_duration = 32  # official --eval_episodes 32
        self.evaluation_duration_unit = "episodes"
        self.callbacks_class = TeamMetricsCallback
        self._init_team_runtime(sample_mode="fragments")
        self.keep_outputs = [ACTION_LOGP]
        self.keep_state_out = True  # the actor's hidden state after each step: chunk-start states

        # -- PPO ------------------------------------------------------------------------------
        #: GAE lambda (official --gae_lambda 0.95).
        self.lambda_: float = 0.95
        #: PPO ratio clip, applied to each agent's own ratio (official --clip_param 0.2; 0.05 on some SMAC maps).
        self.clip_param: float = 0.2
        #: Entropy bonus coefficient, per agent (official --entropy_coef 0.01).
        self.entropy_coeff: float = 0.01
        #: Value-loss coefficient (official --value_loss_coef 1).
        self.vf_loss_coeff: float = 1.0
        #: Minibatches per epoch when ``minibatch_size`` is None (official --num_mini_batch 1: the whole batch);
        #: minibatches are made of whole chunks.
        self.num_mini_batch: int = 1
        #: Critic learning rate (official --critic_lr 5e-4); ``lr`` is the actor's.
        self.critic_lr: float = 5e-4
        #: Adam epsilon of both optimisers (official --opti_eps 1e-5).
        self.opti_eps: float = 1e-5
        #: Adam weight decay of both optimisers (official --weight_decay 0).
        self.weight_decay: float = 0.0

        # -- value function -------------------------------------------------------------------
        #: MAPPO value clipping: ``V_clip = V_old + clamp(V - V_old, +-vf_clip_param)`` (official --clip_param,
        #: the same 0.2 as the policy's; ``use_clipped_value_loss`` True). Not PPO's loss clamp.
        self.vf_clip_param: float = 0.2
        #: Use MAPPO's clipped value loss ``max(L(e), L(e_clip))`` (official --use_clipped_value_loss True).
        self.use_clipped_value_loss: bool = True
        #: Huber value loss (official --use_huber_loss True) with this delta (official --huber_delta 10).
        self.use_huber_loss: bool = True
        self.huber_delta: float = 10.0
        #: Running mean/var normalisation of value targets (official --use_valuenorm True, valuenorm.py).
        self.use_valuenorm: bool = True
        #: ValueNorm EMA factor (official ValueNorm beta 0.99999).
        self.valuenorm_beta: float = 0.99999
        #: When ValueNorm takes a step: "minibatch" (official: inside every minibatch's value loss) or
        #: "iteration" (once per update, with all returns) [marlx option].
        self.valuenorm_update: str = "minibatch"
        #: Critic input per agent: "state" (EP, one team V), "state_id" (state + one-hot id, default [marlx:
        #: the env state is what every marlx env provides]), "agent_state" (the env's ``agent_state`` key + id,
        #: the official SMAC default ``use_state_agent``), "state_obs_id" (state + obs_i + id, FP-like), "obs_id"
        #: (IPPO's decentralised critic). Spec §4.2.
        self.critic_input: str = "state_id"
        #: Zero a dead agent's critic input except its id (official --use_mustalive True / "death masking").
        self.death_mask: bool = True
        #: Mask the value loss by alive agents too (official --use_value_active_masks; every SMAC script turns it
        #: off, so False).
        self.value_active_masks: bool = False

        # -- advantages -----------------------------------------------------------------------
        #: Advantage normalisation: "active" (mean/std over alive, non-padded rows: official r_mappo.py),
        #: "all" (all non-padded rows), "none" (BenchMARL).
        self.adv_norm: str = "active"
        #: At a time limit, bootstrap with ``gamma * V(s_T)`` (RLlib's semantics); False treats it as terminal
        #: (official --use_proper_time_limits False) [marlx default, spec §4.3].
        self.bootstrap_on_truncation: bool = True

        # -- recurrence and networks ----------------------------------------------------------
        #: Steps per training chunk of the recurrent actor; each chunk starts from the hidden state the env
        #: runner had there (official --data_chunk_length 10).
        self.data_chunk_length: int = 10
        #: Width of every layer and of the GRU (official --hidden_size 64).
        self.hidden_size: int = MODEL_DEFAULTS["hidden_size"]
        #: Extra hidden layers after the first (official --layer_N 1).
        self.layer_N: int = MODEL_DEFAULTS["layer_N"]
        #: Append the one-hot agent id to each agent's observation (the official SMAC env's obs_agent_id True).
        self.obs_agent_id: bool = MODEL_DEFAULTS["obs_agent_id"]
        #: Orthogonal-init gain of the action layer (official --gain 0.01).
        self.gain: float = MODEL_DEFAULTS["gain"]

    def training(
        self,
        *,
        lambda_: float = NotProvided,
        clip_param: float = NotProvided,
        entropy_coeff: float = NotProvided,
        vf_loss_coeff: float = NotProvided,
        num_mini_batch: int = NotProvided,
        critic_lr: float = NotProvided,
        opti_eps: float = NotProvided,
        weight_decay: float = NotProvided,
        vf_clip_param: float = NotProvided,
        use_clipped_value_loss: bool = NotProvided,
        use_huber_loss: bool = NotProvided,
        huber_delta: float = NotProvided,
        use_valuenorm: bool = NotProvided,
        valuenorm_beta: float = NotProvided,
        valuenorm_update: str = NotProvided,
        critic_input: str = NotProvided,
        death_mask: bool = NotProvided,
        value_active_masks: bool = NotProvided,
        adv_norm: str = NotProvided,
        bootstrap_on_truncation: bool = NotProvided,
        data_chunk_length: int = NotProvided,
        hidden_size: int = NotProvided,
        layer_N: int = NotProvided,
        obs_agent_id: bool = NotProvided,
        gain: float = NotProvided,
        **kwargs,
    ) -> "MAPPOConfig":
        """Set MAPPO options (attribute docs of :class:`MAPPOConfig`), the team runtime's options and RLlib's."""
        self._pop_team_runtime(kwargs)
        super().training(**kwargs)
        for key, value in dict(locals()).items():
            if key not in ("self", "kwargs", "__class__") and value is not NotProvided:
                setattr(self, key, value)
        return self

    @property
    def _model_config_auto_includes(self) -> dict[str, Any]:
        return super()._model_config_auto_includes | {k: getattr(self, k) for k in _MODEL_KEYS} | {
            "valuenorm_beta": self.valuenorm_beta, "max_seq_len": self.data_chunk_length}

    def get_default_rl_module_spec(self) -> RLModuleSpec:
        return RLModuleSpec(module_class=MAPPOTeamModule)

    def get_default_learner_class(self):
        return MAPPOLearner

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__.replace("Config", "")
        errors = []
        if self.critic_input not in CRITIC_INPUTS:
            errors.append(f"critic_input must be one of {list(CRITIC_INPUTS)}, got {self.critic_input!r}")
        if self.adv_norm not in ADV_NORMS:
            errors.append(f"adv_norm must be one of {list(ADV_NORMS)}, got {self.adv_norm!r}")
        if self.valuenorm_update not in VALUENORM_UPDATES:
            errors.append(f"valuenorm_update must be one of {list(VALUENORM_UPDATES)}, got {self.valuenorm_update!r}")
        for key in ("gamma", "lambda_"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                errors.append(f"{key} must be in [0, 1], got {getattr(self, key)}")
        for key in ("clip_param", "huber_delta", "vf_clip_param"):
            if not getattr(self, key) > 0:
                errors.append(f"{key} must be > 0, got {getattr(self, key)}")
        for key in ("data_chunk_length", "num_mini_batch", "num_epochs", "hidden_size"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                errors.append(f"{key} must be an integer >= 1, got {v!r}")
        errors += self._team_runtime_errors()
        for comp, why in _UNSUPPORTED_INTRINSIC.items():
            if comp in (self.intrinsic or {}):
                errors.append(f"intrinsic {comp} does not run on {name}: {why}; use fox_count (the count bonus) "
                              f"or run: FoX")
        if errors:
            raise ValueError(f"invalid {name} config: " + "; ".join(errors))


class IPPOConfig(MAPPOConfig):
    """MAPPO's config with a decentralised critic ``V(obs_i, id)`` (official IPPO: ``use_centralized_V`` False)."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or IPPO)
        self.critic_input = "obs_id"


def fragments_to_batch(episodes: list) -> dict[str, np.ndarray]:
    """Pad :class:`~marlx.runtime.episode.TeamEpisode` fragments into one learner batch.

    Returns observation leaves ``[B, T+1, ...]`` (entry ``len`` of a row is its bootstrap / final observation),
    ``actions``, ``action_logp`` ``[B, T, n]``, ``rewards``/``terminateds``/``truncateds``/``mask`` ``[B, T]``
    and ``h_pi_in [B, T, n, H]`` (the actor's hidden state before each step). Every other per-step extra that all
    fragments carry (e.g. ``fox_visit_next`` written by ``fox_count``'s ``observe``) comes as ``[B, T, ...]``.
    """
    B = len(episodes)
    T = max(len(e) for e in episodes)
    first = episodes[0]
    out: dict[str, np.ndarray] = {}
    for k, v in first.obs.items():
        dtype = np.float32 if v.dtype.kind in "fb" else v.dtype
        out[k] = np.zeros((B, T + 1, *v.shape[1:]), dtype)
    n = first.actions.shape[1]
    h = first.state_in[H_PI]
    out[Columns.ACTIONS] = np.zeros((B, T, n), np.int64)
    out[ACTION_LOGP] = np.zeros((B, T, n), np.float32)
    out[H_IN] = np.zeros((B, T, *h.shape), np.float32)
    for key in (Columns.REWARDS, Columns.TERMINATEDS, TRUNCATEDS, MASK):
        out[key] = np.zeros((B, T), np.float32)
    extra = [k for k in first.extras if k != ACTION_LOGP and not k.startswith(STATE_OUT_PREFIX)
             and all(k in e.extras for e in episodes)]
    for k in extra:
        v = np.asarray(first.extras[k])
        out[k] = np.zeros((B, T, *v.shape[1:]), np.float32 if v.dtype.kind in "fb" else v.dtype)
    for i, e in enumerate(episodes):
        length = len(e)
        for k, v in e.obs.items():
            out[k][i, : length + 1] = v
        out[Columns.ACTIONS][i, :length] = e.actions
        out[ACTION_LOGP][i, :length] = e.extras[ACTION_LOGP]
        out[H_IN][i, 0] = e.state_in[H_PI]
        if length > 1:
            out[H_IN][i, 1:length] = e.extras[STATE_OUT_PREFIX + H_PI][: length - 1]
        out[Columns.REWARDS][i, :length] = e.rewards
        for k in extra:
            out[k][i, :length] = e.extras[k]
        out[MASK][i, :length] = 1.0
        out[Columns.TERMINATEDS][i, length - 1] = float(e.is_terminated)
        out[TRUNCATEDS][i, length - 1] = float(e.is_truncated and not e.is_terminated)
    return out


class MAPPO(IntrinsicAlgorithmMixin, Algorithm):
    """MAPPO (Yu et al. 2022): shared recurrent actor, centralised critic, per-agent PPO on a team env."""

    marlx_team_algorithm = True

    @classmethod
    def get_default_config(cls) -> MAPPOConfig:
        return MAPPOConfig(cls)

    def setup(self, config: MAPPOConfig) -> None:
        super().setup(config)
        self.setup_intrinsic(config)  # driver-side parts of the intrinsic components (observe / annotate)

    def training_step(self) -> None:
        cfg: MAPPOConfig = self.config
        t0 = time.perf_counter()
        episodes, results = [], []
        with self.metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
            while not episodes or (cfg.sample_mode == "episodes"
                                   and sum(len(e) for e in episodes) < cfg.train_batch_size_per_learner):
                eps, res = parallel_sample(self.env_runner_group, cfg.sample_timeout_s)
                episodes += [e for e in eps if len(e) > 0]
                results += res
        sample_s = time.perf_counter() - t0
        self.metrics.aggregate(results, key=ENV_RUNNER_RESULTS)
        if not episodes:
            return
        for component in self.intrinsic:
            component.observe(episodes)
        data = fragments_to_batch(episodes)
        for component in self.intrinsic:
            component.annotate(data)
        steps = int(data[MASK].sum())
        if sample_s > 0:
            self.metrics.log_value("env_steps_per_s_sampling", steps / sample_s, window=20)
        lifetime = self.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0)
        timesteps = {NUM_ENV_STEPS_SAMPLED_LIFETIME: lifetime, NUM_AGENT_STEPS_SAMPLED_LIFETIME: lifetime}
        batch = MultiAgentBatch({DEFAULT_POLICY_ID: SampleBatch(data)}, env_steps=steps)
        with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
            out = self.learner_group.update(batch=batch, timesteps=timesteps)
            self.metrics.aggregate(out, key=LEARNER_RESULTS)
        with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
            self.env_runner_group.sync_weights(from_worker_or_learner_group=self.learner_group, inference_only=True)

class IPPO(MAPPO):
    """IPPO (de Witt et al. 2020): MAPPO's learner with a decentralised critic ``V(obs_i, id)``."""

    @classmethod
    def get_default_config(cls) -> IPPOConfig:
        return IPPOConfig(cls)
