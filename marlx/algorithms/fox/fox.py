"""FoX (Jo, Lee, Yeom, Han; AAAI 2024): formation-aware exploration on marlx's QMIX.

``run: FoX`` in YAML. Everything QMIX has, plus (spec: shared/specs/fox.md):

* formation keys of every training step, counted by the ``fox_count`` intrinsic component
  (:mod:`marlx.intrinsic.fox`; evaluation episodes never count; the counts are saved in checkpoints);
* the formation-aware Q network (:class:`~marlx.algorithms.fox.module.FoXRLModule`);
* the count bonus (``fox_count``), the formation-awareness bonus and the formation VAE (``fox_awareness``),
  configured from FoX's attributes below, and CDS's L1 penalty (:class:`~marlx.algorithms.fox.learner.FoXLearner`).

Defaults are the paper's GRF settings (beta1 0.01, beta2 0.02, round 3); the SMAC example used beta1 0.02,
round 1 and the "smac" normalisation. Where the released code (github:hyeon1996/FoX, ``FOX_GRF``) and marlx's
first version differed (shared/reviews/qmix_fox_faithfulness.md, F1-F14), each difference is an option below
and the attribute docs say which value the released code uses and which is the default.

Documented choices (no option): the VAE trains on the RL batch of the update rather than on a second uniform
draw (``ifon_sample: False`` draws a fresh batch; under uniform replay both are uniform samples of the buffer);
padded steps never enter the VAE samples or the awareness normalisation (the released code includes them);
the awareness bonus reads h_{far(t+1)} of F_{t+1} (the released code indexes time by an agent index, F13); a
0.5 factor on the squared TD error (PyMARL2) is not used: marlx's loss is PyMARL's/FoX's ``td_error ** 2``
(Q4); epsilon is evaluated per env step from the lifetime step count (PyMARL: once per episode; Q5); the hard
target update counts the episodes stored after this iteration (PyMARL the count before it: the copy can come
one iteration earlier; Q6). The replay batch stays QMIX's 32 episodes by default; the released GRF runs use 8 with
a burn-in of 32 episodes (F15), which ``tuned_examples/fox/grf_3v1.yaml`` sets, with one update per collected
episode (``num_updates_per_iteration: per_episode``, Q2).
"""

from __future__ import annotations

from typing import Any

from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from marlx.algorithms.fox.learner import FoXLearner
from marlx.algorithms.fox.module import FOX_MODEL_DEFAULTS, FoXRLModule
from marlx.algorithms.qmix.qmix import QMIX, QMIXConfig
from marlx.intrinsic.fox import AWARENESS_DEFAULTS, COUNT_DEFAULTS, FOX_VISIT_NEXT
from marlx.runtime.replay import PrioritisedTeamEpisodeReplay, TeamEpisodeReplay

_FOX_OPTIONS = (
    "beta1", "beta2", "formation_round", "formation_source", "bonus_normalisation", "hash_seed",
    "vae_latent_dim", "vae_hidden_dim", "vae_lr", "vae_grad_clip", "vae_samples_per_update", "vae_tau_weight",
    "vae_key_scale", "vae_kl_weight", "awareness_samples", "local_head_l1", "local_head_hidden",
    "released_grad_accumulation", "formation_latent", "count_at", "count_terminal_formation", "hash_bit_order",
    "awareness_target", "awareness_per_agent", "awareness_before_mean", "vae_schedule", "vae_every_episodes",
    "vae_steps", "vae_joint_clip", "formation_head_grad_to_gru", "target_encoder", "prioritised_replay_alpha",
)


class FoXConfig(QMIXConfig):
    """QMIX's config plus FoX's hyper-parameters (paper defaults, GRF setting)."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or FoX)
        #: Weight of the count bonus beta1 * N(F_{t+1})^(-1/2) (paper: 0.01 GRF, 0.02 SMAC;
        #: grid {0.001, 0.005, 0.01, 0.02, 0.1}).
        self.beta1: float = 0.01
        #: Weight of the formation-awareness bonus (paper: 0.02; grid {0.001, 0.005, 0.01, 0.05}).
        self.beta2: float = 0.02
        #: Decimals kept of the distances in a formation key (paper: 3 GRF, 1 SMAC example).
        self.formation_round: int = 3
        #: "obs": formations from observation vectors (paper); "positions": from the env's agent positions
        #: (marlx option for envs that provide them).
        self.formation_source: str = "obs"
        #: "grf": count bonus N^-1/2 and awareness in [0, 1]; "smac": count bonus minus the batch max and
        #: awareness in [-1, 0] (the two normalisations of the released code).
        self.bonus_normalisation: str = "grf"
        #: Seed of the fixed random hash matrix A (9 x dim, Uniform[0, 1)).
        self.hash_seed: int = 0
        #: Latent size of the formation encoder (64).
        self.vae_latent_dim: int = 64
        #: Hidden width of the encoder and both decoders (128).
        self.vae_hidden_dim: int = 128
        #: Adam learning rate of each VAE part (1e-3).
        self.vae_lr: float = 1e-3
        #: Grad-norm clip of each VAE part (1.0).
        self.vae_grad_clip: float = 1.0
        #: Random (episode, t, agent) samples per VAE update, one update after each RL update (25).
        self.vae_samples_per_update: int = 25
        #: Weight of L2 in the encoder loss L1 - w * L2 (0.1).
        self.vae_tau_weight: float = 0.1
        #: The decoder reconstructs F / key_scale (1000).
        self.vae_key_scale: float = 1000.0
        #: Weight of the VAE's KL terms [marlx option; the paper's losses use 1.0].
        self.vae_kl_weight: float = 1.0
        #: Latent samples averaged in the awareness bonus (20).
        self.awareness_samples: int = 20
        #: L1 penalty on the per-agent local heads' Q values (CDS; 0.1).
        self.local_head_l1: float = 0.1
        #: Hidden width of each local head; 0 (default) = one Linear H -> A per agent, as the released
        #: ``rnn_agent.py`` (F9); > 0 = H -> hidden -> ReLU -> A (the spec's "MLP_i"; marlx used 64 before).
        self.local_head_hidden: int = 0
        #: Reproduce the released code's gradient accumulation in the VAE update (off: intended losses).
        self.released_grad_accumulation: bool = False
        #: Latent the formation head reads: "sample" (z ~ q(z | h), the paper) or "mean" (marlx option:
        #: the posterior mean, deterministic action values).
        self.formation_latent: str = "sample"
        #: No agent-id input (F8): the released ``FOX_GRF/config/default.yaml`` has ``obs_agent_id: False``; the
        #: per-agent local heads tell agents apart. (QMIX's default is True.)
        self.obs_agent_id = False
        #: When the count N(F_{t+1}) of the count bonus is read (F1): "collection" (default, released runner:
        #: the count right after the step was collected, stored with it in replay) or "sampling" (the counts
        #: when the batch is drawn, marlx's first version).
        self.count_at: str = "collection"
        #: Count the terminal formation F_T (F11). True (default, marlx): the last transition's bonus uses
        #: N(F_T). False (released: formations are computed only before an action): F_T is never counted and the
        #: last transition's count bonus is 0 ("grf") or -beta1 * max ("smac").
        self.count_terminal_formation: bool = True
        #: Bit order of the 9-bit sign hash (F12): "msb" (default, released: projection 0 is the most significant
        #: bit) or "lsb". Counts are the same; the integers the decoder regresses differ.
        self.hash_bit_order: str = "msb"
        #: Target of log q in the awareness bonus (F3): "raw" (default: the spec's -||Dec - F||^2 and the
        #: released ``get_log_pi`` on the raw keys) or "scaled" (F / vae_key_scale, marlx's first version, whose
        #: running-max factor fades the bonus as the VAE learns).
        self.awareness_target: str = "raw"
        #: Awareness min-max and running max per agent (F4; default True, released ``FOX_QMIX.py`` loops over
        #: agents); False = one over all agents.
        self.awareness_per_agent: bool = True
        #: Normalise each of the ``awareness_samples`` latent samples before averaging (F4; default True,
        #: released); False = normalise the averaged values.
        self.awareness_before_mean: bool = True
        #: VAE schedule (F5): "per_update" (default, marlx: one step on vae_samples_per_update samples after each
        #: RL update) or "episodes" (released ``run.py``: vae_steps single-sample steps every vae_every_episodes
        #: collected episodes).
        self.vae_schedule: str = "per_update"
        #: Episodes between VAE trainings with vae_schedule="episodes" (released ``on_policy_batch: 16``).
        self.vae_every_episodes: int = 16
        #: Single-sample VAE steps per training with vae_schedule="episodes" (released: 25, one per sample).
        self.vae_steps: int = 25
        #: Clip the encoder's, decoder's and decoder_tau's gradients jointly to vae_grad_clip (released
        #: ``FNet.py``); False (default) = each part alone.
        self.vae_joint_clip: bool = False
        #: Let the TD gradient through W_f z(h) reach the GRU (F6; default True, released ``rnn_agent.py``); the
        #: encoder's own parameters never get a TD gradient either way.
        self.formation_head_grad_to_gru: bool = True
        #: The target network's formation encoder (F7): "copy" (default: refreshed with the other target
        #: weights) or "live" (released ``FOX_QMIX.py``: the target unroll uses the VAE's current encoder).
        self.target_encoder: str = "copy"
        #: Prioritised episode replay exponent (F10): 0 (default) = uniform replay; > 0 = sample episodes in
        #: proportion to priority ** alpha, priority = the episode's mean squared TD error, new episodes 1, no
        #: importance weights (released GRF run ``fox_qmix_prior``: alpha 0.3; its SMAC run is uniform).
        self.prioritised_replay_alpha: float = 0.0

    def training(self, **kwargs) -> "FoXConfig":
        fox = {k: kwargs.pop(k) for k in list(kwargs) if k in _FOX_OPTIONS}
        super().training(**kwargs)
        for key, value in fox.items():
            setattr(self, key, value)
        return self

    @property
    def _model_config_auto_includes(self) -> dict[str, Any]:
        # Private AlgorithmConfig hook (Ray 2.60), the same one QMIXConfig extends: config -> model_config.
        return super()._model_config_auto_includes | {k: getattr(self, k) for k in FOX_MODEL_DEFAULTS}

    def intrinsic_spec(self) -> dict:
        """The user's ``intrinsic`` components plus FoX's two, with options from FoX's attributes."""
        count = {k: getattr(self, k) for k in COUNT_DEFAULTS}
        awareness = {k: getattr(self, k) for k in AWARENESS_DEFAULTS if k != "seed"} | {"seed": int(self.seed or 0)}
        return {**(self.intrinsic or {}), "fox_count": count, "fox_awareness": awareness}

    def get_default_rl_module_spec(self) -> RLModuleSpec:
        return RLModuleSpec(module_class=FoXRLModule)

    def get_default_learner_class(self):
        return FoXLearner

    def validate(self) -> None:
        super().validate()
        errors = []
        if self.formation_source not in ("obs", "positions"):
            errors.append(f"formation_source must be 'obs' or 'positions', got {self.formation_source!r}")
        if self.bonus_normalisation not in ("grf", "smac"):
            errors.append(f"bonus_normalisation must be 'grf' or 'smac', got {self.bonus_normalisation!r}")
        if self.formation_latent not in ("sample", "mean"):
            errors.append(f"formation_latent must be 'sample' or 'mean', got {self.formation_latent!r}")
        if (isinstance(self.env, str) and self.env.startswith("grf/") and self.formation_source == "obs"
                and (self.env_config or {}).get("representation", "simple115v2") != "ego"):
            rep = (self.env_config or {}).get("representation", "simple115v2")
            errors.append(f"FoX on {self.env} with representation {rep!r}: the agents' observations differ only in the "
                          "active-player one-hot, so every formation key is the same; set env_config: "
                          "{representation: ego} (CDS/FoX's ego-centric observation) or formation_source: positions")
        if self.vae_samples_per_update < 1 or self.awareness_samples < 1:
            errors.append("vae_samples_per_update and awareness_samples must be >= 1")
        choices = {"count_at": ("collection", "sampling"), "hash_bit_order": ("msb", "lsb"),
                   "awareness_target": ("raw", "scaled"), "vae_schedule": ("per_update", "episodes"),
                   "target_encoder": ("copy", "live")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                errors.append(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")
        if self.vae_every_episodes < 1 or self.vae_steps < 1:
            errors.append("vae_every_episodes and vae_steps must be >= 1")
        if not 0.0 <= self.prioritised_replay_alpha:
            errors.append(f"prioritised_replay_alpha must be >= 0, got {self.prioritised_replay_alpha}")
        if self.prioritised_replay_alpha > 0 and (self.num_learners or 0) > 1:
            errors.append("prioritised_replay_alpha needs a single learner (num_learners 0 or 1)")
        if errors:
            raise ValueError("invalid FoX config: " + "; ".join(errors))


class FoX(QMIX):
    """QMIX with FoX's formation counts, formation-aware agents and intrinsic rewards."""

    @classmethod
    def get_default_config(cls) -> FoXConfig:
        return FoXConfig(cls)

    def make_replay(self, config: FoXConfig):
        columns = [FOX_VISIT_NEXT] if config.count_at == "collection" else []
        if config.prioritised_replay_alpha > 0:
            replay = PrioritisedTeamEpisodeReplay(config.buffer_size, config.replay_obs_dtype, seed=config.seed,
                                                  extra_columns=columns, alpha=config.prioritised_replay_alpha)
            replay.priority_source = self._last_priorities
            return replay
        return TeamEpisodeReplay(config.buffer_size, config.replay_obs_dtype, seed=config.seed, extra_columns=columns)

    def _last_priorities(self):
        """The learner's mean squared TD error per episode of the last batch (None before the first update)."""
        results = list(self.learner_group.foreach_learner(lambda learner: learner.episode_priorities()))
        first = results[0].get() if results else None  # a CallResult (Ray 2.60): .get() raises a remote error
        return (first or {}).get("default_policy")

    @property
    def formation_counter(self):
        """The visit counter of training formations (the driver's ``fox_count`` component)."""
        return next(c for c in self.intrinsic if c.name == "fox_count").counter
