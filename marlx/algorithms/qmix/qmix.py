"""QMIX and VDN on RLlib's new API stack (Config -> Algorithm -> Learner -> RLModule).

One training iteration (PyMARL's episode runner loop):

1. every env runner (:class:`~marlx.runtime.runner.TeamEnvRunner`) plays ``episodes_per_env`` whole episodes
   per sub-env with the epsilon-greedy :class:`~marlx.modules.qmix_module.QMIXRLModule`, batched over
   envs x agents (each sub-env seeded once; no bias toward short episodes);
2. the configured intrinsic-reward components observe them, then they go into
   :class:`~marlx.runtime.replay.TeamEpisodeReplay` (capacity in episodes);
3. ``num_updates_per_iteration`` times: sample ``batch_size_episodes`` whole episodes and update the
   :class:`~marlx.algorithms.qmix.learner.QMIXLearner` through ``LearnerGroup.update`` (RLlib's normal path);
4. weights go back to the env runners.

Every hyper-parameter is an attribute of :class:`QMIXConfig` with PyMARL's default, settable through
``.training(...)`` and ``update_from_dict`` (YAML ``config:``). Greedy play follows RLlib's ``explore=False``.
"""

from __future__ import annotations

import time
from typing import Any

from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
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
from marlx.algorithms.qmix.learner import NUM_EPISODES_SAMPLED_LIFETIME, QMIXLearner
from marlx.callbacks import TeamMetricsCallback
from marlx.errors import UnknownNameError
from marlx.intrinsic.base import IntrinsicAlgorithmMixin
from marlx.modules.mixers import MIXERS
from marlx.modules.qmix_module import MODEL_DEFAULTS, QMIXRLModule, linear_epsilon
from marlx.runtime.columns import MASK
from marlx.runtime.config import TeamRuntimeConfig
from marlx.runtime.replay import TeamEpisodeReplay

REPLAY_STATE_KEY = "marlx_replay"
#: Config attributes that travel to the module's model_config (their defaults: ``MODEL_DEFAULTS``).
_MODEL_KEYS = tuple(k for k in MODEL_DEFAULTS if k != "mixer_on_runners")


#: Named settings of published code bases, applied by ``config: {preset: NAME}`` before the file's other keys.
PRESETS: dict[str, dict[str, Any]] = {
    # EPyMARL (uoe-agents/epymarl): src/config/default.yaml + algs/qmix.yaml|vdn.yaml (+ envs/gymma.yaml for the
    # evaluation): the episode runner (1 env, one update per collected episode), batch 32 from 5000 episodes,
    # Adam(lr 5e-4, torch's eps), grad-norm clip 10, gamma 0.99, epsilon 1 -> 0.05 over 50k steps, hard target
    # update every 200 updates (= episodes here), double Q, feed-forward 64-64 agent on obs + agent id (no last
    # action), standardised rewards, QMIX mixer embed 32 with 2-layer 64-wide hypernetworks.
    "epymarl": {
        "num_envs_per_env_runner": 1,
        "num_updates_per_iteration": "per_episode",
        "batch_size_episodes": 32,
        "learning_starts_episodes": 32,
        "buffer_size": 5000,
        "optimizer": "adam",
        "lr": 5e-4,
        "optim_eps": None,
        "grad_clip": 10.0,
        "gamma": 0.99,
        "epsilon_start": 1.0,
        "epsilon_finish": 0.05,
        "epsilon_anneal_time": 50_000,
        "target_update_interval_episodes": 200,
        "target_update_tau": 1.0,
        "double_q": True,
        "td_lambda": 0.0,
        "n_step": 1,
        "use_rnn": False,
        "rnn_hidden_dim": 64,
        "obs_agent_id": True,
        "obs_last_action": False,
        "standardise_rewards": True,
        "mixing_embed_dim": 32,
        "hypernet_layers": 2,
        "hypernet_embed": 64,
    },
    # PyMARL2 (hijkzzz/pymarl2): src/config/default.yaml + algs/qmix.yaml|vdn.yaml: the parallel runner (8 envs,
    # one update per 8 episodes), batch 128 from 5000 episodes, Adam(lr 1e-3, torch's eps), TD(lambda 0.6),
    # epsilon 1 -> 0.05 over 100k steps, hard target update every 200 episodes, double Q, GRU agent (64) on obs +
    # last action + agent id, no reward standardisation. (PyMARL2's loss is 0.5 * td^2; marlx's td^2 differs
    # only by the scale that Adam removes, up to eps and the grad clip.)
    "pymarl2": {
        "num_envs_per_env_runner": 8,
        "num_updates_per_iteration": 1,
        "batch_size_episodes": 128,
        "learning_starts_episodes": 128,
        "buffer_size": 5000,
        "optimizer": "adam",
        "lr": 1e-3,
        "optim_eps": None,
        "grad_clip": 10.0,
        "gamma": 0.99,
        "epsilon_start": 1.0,
        "epsilon_finish": 0.05,
        "epsilon_anneal_time": 100_000,
        "target_update_interval_episodes": 200,
        "target_update_tau": 1.0,
        "double_q": True,
        "td_lambda": 0.6,
        "n_step": 1,
        "use_rnn": True,
        "rnn_hidden_dim": 64,
        "obs_agent_id": True,
        "obs_last_action": True,
        "standardise_rewards": False,
        "mixing_embed_dim": 32,
        "hypernet_layers": 2,
        "hypernet_embed": 64,
    },
}


class QMIXConfig(TeamRuntimeConfig, AlgorithmConfig):
    """Configuration of QMIX (and, with ``mixer="vdn"``, VDN). Defaults are PyMARL's ``qmix.yaml``.

    Example::

        config = (QMIXConfig().environment("builtin/push_box", env_config={"size": 5})
                  .env_runners(num_envs_per_env_runner=8)
                  .training(epsilon_anneal_time=20_000, mixer="qmix"))
        algo = config.build_algo()
    """

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or QMIX)
        # -- RLlib settings with PyMARL's values -------------------------------------------------
        self.lr = 5e-4  # PyMARL lr
        self.gamma = 0.99
        self.grad_clip = 10.0  # PyMARL grad_norm_clip
        self.grad_clip_by = "global_norm"
        self.num_env_runners = 0
        self.evaluation_config = {"explore": False}  # greedy test episodes (PyMARL test_greedy)
        self.callbacks_class = TeamMetricsCallback
        # marlx's team env runner: whole episodes, each sub-env seeded once (see marlx/runtime/runner.py)
        self._init_team_runtime(sample_mode="episodes")
        self.keep_outputs = []  # the TD learner recomputes Q values; an attack still sees them at action time

        # -- replay and update schedule --------------------------------------------------------
        #: Replay capacity in episodes (PyMARL buffer_size).
        self.buffer_size: int = 5000
        #: Episodes per learner batch (PyMARL batch_size; 8 in GRF configs).
        self.batch_size_episodes: int = 32
        #: Episodes in the buffer before the first update (PyMARL: one batch).
        self.learning_starts_episodes: int = 32
        #: Gradient updates per training iteration (each on a fresh replay batch): an integer, or
        #: ``"per_episode"``: one update per episode stored in this iteration (EPyMARL/PyMARL's episode runner,
        #: ``run.py``: one ``learner.train`` per collected episode). PyMARL2's parallel runner does one update
        #: per ``batch_size_run`` episodes, i.e. 1 here (an iteration samples one episode per env).
        self.num_updates_per_iteration: int | str = 1
        #: Dtype of float observation leaves in replay ("float32" or "float16").
        self.replay_obs_dtype: str = "float32"
        #: Put the replay contents into checkpoints (position and counters are always saved).
        self.store_buffer_in_checkpoints: bool = False

        # -- targets ---------------------------------------------------------------------------
        #: Double Q: argmax of the online network at t+1, valued by the target network.
        self.double_q: bool = True
        #: TD(lambda) targets when > 0 (PyMARL2 uses 0.6); 0 gives n-step / one-step targets.
        self.td_lambda: float = 0.0
        #: n-step returns (1 = one-step TD); ignored when td_lambda > 0.
        self.n_step: int = 1
        #: Hard target update every this many sampled episodes (PyMARL target_update_interval).
        self.target_update_interval_episodes: int = 200
        #: 1.0 = hard updates; < 1 = soft (Polyak) update with this tau after every learner update.
        self.target_update_tau: float = 1.0
        #: Store an episode's time-limit end as a termination (no bootstrap). EPyMARL's gymma envs (LBF, RWARE)
        #: do this: their info has no ``episode_limit`` key, so ``episode_runner.py`` stores
        #: ``terminated = done or truncated``. False (default, PyMARL on SMAC): a truncated episode bootstraps.
        self.time_limit_terminal: bool = False
        #: Standardise rewards with a running mean/std before the TD target (EPyMARL ``standardise_rewards``,
        #: ``q_learner.py`` with ``components/standarize_stream.py``): every learner batch updates the statistics
        #: (parallel-variance formula, initial count 1e-4) and the target uses ``(r - mean) / std``. marlx counts
        #: the batch's real steps only (EPyMARL also counts padded steps after early terminations).
        self.standardise_rewards: bool = False

        # -- optimiser -------------------------------------------------------------------------
        #: "rmsprop" (PyMARL) or "adam" (PyMARL2, with lr 1e-3).
        self.optimizer: str = "rmsprop"
        #: RMSprop smoothing constant (PyMARL optim_alpha).
        self.optim_alpha: float = 0.99
        #: Optimiser epsilon (PyMARL optim_eps = 1e-5, used for RMSprop); None = torch's default (1e-8), which
        #: EPyMARL's and PyMARL2's Adam use (``Adam(params, lr)``, ``q_learner.py`` / ``nq_learner.py``).
        self.optim_eps: float | None = 1e-5

        # -- networks --------------------------------------------------------------------------
        #: Hidden width of the agent network (GRU or MLP layers; PyMARL rnn_hidden_dim, EPyMARL hidden_dim).
        self.rnn_hidden_dim: int = MODEL_DEFAULTS["rnn_hidden_dim"]
        #: True: recurrent agent (PyMARL/PyMARL2 GRU); False: EPyMARL's feed-forward agent (``use_rnn: False``, its
        #: QMIX/VDN default): 64-64 ReLU layers, no hidden state (see :class:`~marlx.modules.agent.MLPAgent`).
        self.use_rnn: bool = MODEL_DEFAULTS["use_rnn"]
        #: Feed each agent the one-hot of its previous action.
        self.obs_last_action: bool = MODEL_DEFAULTS["obs_last_action"]
        #: Feed each agent the one-hot of its id (weights are shared).
        self.obs_agent_id: bool = MODEL_DEFAULTS["obs_agent_id"]
        #: "qmix" (monotonic hypernetwork mixer) or "vdn" (sum).
        self.mixer: str = MODEL_DEFAULTS["mixer"]
        #: Width of QMIX's mixing layer.
        self.mixing_embed_dim: int = MODEL_DEFAULTS["mixing_embed_dim"]
        #: Layers of QMIX's weight hypernetworks (1 or 2).
        self.hypernet_layers: int = MODEL_DEFAULTS["hypernet_layers"]
        #: Hidden width of 2-layer hypernetworks.
        self.hypernet_embed: int = MODEL_DEFAULTS["hypernet_embed"]

        # -- exploration -----------------------------------------------------------------------
        #: Epsilon at env step 0.
        self.epsilon_start: float = MODEL_DEFAULTS["epsilon_start"]
        #: Epsilon after annealing.
        self.epsilon_finish: float = MODEL_DEFAULTS["epsilon_finish"]
        #: Env steps (all runners together) over which epsilon anneals linearly.
        self.epsilon_anneal_time: int = MODEL_DEFAULTS["epsilon_anneal_time"]

        #: The preset applied before this config's other keys (see :data:`PRESETS`); None = marlx's defaults
        #: (PyMARL's). Set it through ``update_from_dict({"preset": ...})`` (YAML ``config: {preset: epymarl}``)
        #: or :meth:`apply_preset`; explicit keys of the same dict override the preset's values.
        self.preset: str | None = None

    def training(
        self,
        *,
        buffer_size: int = NotProvided,
        batch_size_episodes: int = NotProvided,
        learning_starts_episodes: int = NotProvided,
        num_updates_per_iteration: int | str = NotProvided,
        replay_obs_dtype: str = NotProvided,
        store_buffer_in_checkpoints: bool = NotProvided,
        double_q: bool = NotProvided,
        td_lambda: float = NotProvided,
        n_step: int = NotProvided,
        target_update_interval_episodes: int = NotProvided,
        target_update_tau: float = NotProvided,
        time_limit_terminal: bool = NotProvided,
        standardise_rewards: bool = NotProvided,
        optimizer: str = NotProvided,
        optim_alpha: float = NotProvided,
        optim_eps: float | None = NotProvided,
        rnn_hidden_dim: int = NotProvided,
        use_rnn: bool = NotProvided,
        obs_last_action: bool = NotProvided,
        obs_agent_id: bool = NotProvided,
        mixer: str = NotProvided,
        mixing_embed_dim: int = NotProvided,
        hypernet_layers: int = NotProvided,
        hypernet_embed: int = NotProvided,
        epsilon_start: float = NotProvided,
        epsilon_finish: float = NotProvided,
        epsilon_anneal_time: int = NotProvided,
        **kwargs,
    ) -> "QMIXConfig":
        """Set QMIX options (see the attribute docs in :class:`QMIXConfig`), the team runtime's options
        (``intrinsic``, ``attack``, ``episodes_per_env``, ...) and RLlib's training options."""
        self._pop_team_runtime(kwargs)
        super().training(**kwargs)
        for key, value in dict(locals()).items():
            if key not in ("self", "kwargs", "__class__") and value is not NotProvided:
                setattr(self, key, value)
        return self

    # -- presets ---------------------------------------------------------------------------
    def apply_preset(self, name: str) -> "QMIXConfig":
        """Set the values of preset ``name`` (:data:`PRESETS`); an unknown name raises a one-line MarlxError."""
        if name not in PRESETS:
            raise UnknownNameError("QMIX preset", str(name), PRESETS,
                                   hint="Or leave preset out for marlx's defaults (PyMARL's)")
        super().update_from_dict(dict(PRESETS[name]))
        self.preset = name
        return self

    def update_from_dict(self, config_dict: dict) -> "QMIXConfig":
        """RLlib's ``update_from_dict``; a ``preset`` key is applied first, the other keys then override it."""
        config_dict = dict(config_dict)
        preset = config_dict.pop("preset", None)
        if preset is not None:
            self.apply_preset(preset)
        return super().update_from_dict(config_dict)

    @property
    def _model_config_auto_includes(self) -> dict[str, Any]:
        # max_seq_len: RLlib's learner connector of a stateful module requires it; marlx's learner batches
        # whole episodes itself, so any value works.
        return super()._model_config_auto_includes | {k: getattr(self, k) for k in _MODEL_KEYS} | {
            "max_seq_len": 1000
        }

    def get_default_rl_module_spec(self) -> RLModuleSpec:
        return RLModuleSpec(module_class=QMIXRLModule)

    def get_default_learner_class(self):
        return QMIXLearner

    def epsilon(self, env_steps: int) -> float:
        """Epsilon of the exploration schedule after ``env_steps`` sampled env steps."""
        return linear_epsilon(env_steps, self.epsilon_start, self.epsilon_finish, self.epsilon_anneal_time)

    def validate(self) -> None:
        super().validate()
        errors = []
        if self.mixer not in MIXERS:
            errors.append(f"mixer must be one of {MIXERS}, got {self.mixer!r}")
        if not 0.0 <= self.td_lambda <= 1.0:
            errors.append(f"td_lambda must be in [0, 1], got {self.td_lambda}")
        if self.n_step < 1:
            errors.append(f"n_step must be >= 1, got {self.n_step}")
        if self.td_lambda > 0 and self.n_step > 1:
            errors.append("td_lambda and n_step > 1 exclude each other: choose one")
        errors += self._team_runtime_errors()
        if self.sample_mode != "episodes":
            errors.append("QMIX stores whole episodes: sample_mode must be 'episodes'")
        if self.optimizer not in ("rmsprop", "adam"):
            errors.append(f"optimizer must be 'rmsprop' or 'adam', got {self.optimizer!r}")
        if not 0.0 < self.target_update_tau <= 1.0:
            errors.append(f"target_update_tau must be in (0, 1], got {self.target_update_tau}")
        n_upd = self.num_updates_per_iteration
        if not (n_upd == "per_episode" or (isinstance(n_upd, int) and not isinstance(n_upd, bool) and n_upd >= 0)):
            errors.append(f"num_updates_per_iteration must be an integer >= 0 or 'per_episode', got {n_upd!r}")
        if self.optim_eps is not None and not self.optim_eps > 0:
            errors.append(f"optim_eps must be > 0 or None (the optimiser's default), got {self.optim_eps!r}")
        if self.preset is not None and self.preset not in PRESETS:
            errors.append(f"unknown preset {self.preset!r}; valid presets: {', '.join(PRESETS)}")
        if self.batch_size_episodes > self.buffer_size:
            errors.append("batch_size_episodes exceeds buffer_size")
        if errors:
            raise ValueError("invalid QMIX config: " + "; ".join(errors))


class VDNConfig(QMIXConfig):
    """QMIX's config with the VDN (sum) mixer."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or VDN)
        self.mixer = "vdn"


class QMIX(IntrinsicAlgorithmMixin, Algorithm):
    """QMIX (Rashid et al. 2018) on a marlx team env; VDN when ``mixer="vdn"``."""

    marlx_team_algorithm = True

    @classmethod
    def get_default_config(cls) -> QMIXConfig:
        return QMIXConfig(cls)

    def setup(self, config: QMIXConfig) -> None:
        super().setup(config)
        self.replay = self.make_replay(config)
        self.setup_intrinsic(config)  # driver-side parts of the intrinsic components (observe / annotate)

    def make_replay(self, config: QMIXConfig) -> TeamEpisodeReplay:
        """The episode replay (a subclass may store more columns or count what it stores)."""
        return TeamEpisodeReplay(config.buffer_size, config.replay_obs_dtype, seed=config.seed)

    def training_step(self) -> None:
        cfg: QMIXConfig = self.config
        t0 = time.perf_counter()
        with self.metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
            episodes, env_runner_results = parallel_sample(self.env_runner_group, cfg.sample_timeout_s)
        sample_s = time.perf_counter() - t0
        self.metrics.aggregate(env_runner_results, key=ENV_RUNNER_RESULTS)
        for component in self.intrinsic:
            component.observe(episodes)
        self.replay.add(episodes)
        steps = sum(len(e) for e in episodes)
        lifetime = self.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0)
        self.metrics.log_value("epsilon", cfg.epsilon(lifetime), window=1)
        self.metrics.log_value("replay_episodes", len(self.replay), window=1)
        self.metrics.log_value("replay_bytes", self.replay.nbytes(), window=1)
        self.metrics.log_value("num_episodes_sampled_lifetime", self.replay.episodes_added, window=1)
        if sample_s > 0:
            self.metrics.log_value("env_steps_per_s_sampling", steps / sample_s, window=20)

        if len(self.replay) < max(cfg.learning_starts_episodes, cfg.batch_size_episodes):
            return
        timesteps = {
            NUM_ENV_STEPS_SAMPLED_LIFETIME: lifetime,
            NUM_AGENT_STEPS_SAMPLED_LIFETIME: lifetime,
            NUM_EPISODES_SAMPLED_LIFETIME: self.replay.episodes_added,
        }
        with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
            n_updates = len(episodes) if cfg.num_updates_per_iteration == "per_episode" else cfg.num_updates_per_iteration
            for _ in range(n_updates):
                data = self.replay.sample(cfg.batch_size_episodes)
                for component in self.intrinsic:
                    component.annotate(data)
                steps_in_batch = int(data[MASK].sum())
                batch = MultiAgentBatch({DEFAULT_POLICY_ID: SampleBatch(data)}, env_steps=steps_in_batch)
                results = self.learner_group.update(batch=batch, timesteps=timesteps)
                self.metrics.aggregate(results, key=LEARNER_RESULTS)
        with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
            self.env_runner_group.sync_weights(from_worker_or_learner_group=self.learner_group, inference_only=True)

    # -- checkpointing: replay position (and optionally contents) travel with the algorithm state ----
    def get_state(self, *args, **kwargs):
        state = super().get_state(*args, **kwargs)
        if getattr(self, "replay", None) is not None:
            state[REPLAY_STATE_KEY] = self.replay.get_state(include_data=self.config.store_buffer_in_checkpoints)
        return state

    def set_state(self, state) -> None:
        super().set_state(state)
        if REPLAY_STATE_KEY in state:
            self.replay.set_state(state[REPLAY_STATE_KEY])
        # Ray 2.60's Algorithm.set_state syncs env runner step counts before it restores the metrics;
        # sync again so that the epsilon schedule continues where it stopped.
        self.env_runner_group.sync_env_runner_states(
            config=self.config,
            env_steps_sampled=self.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0),
        )


class VDN(QMIX):
    """VDN (Sunehag et al. 2018): QMIX's learner with the sum mixer."""

    @classmethod
    def get_default_config(cls) -> VDNConfig:
        return VDNConfig(cls)
