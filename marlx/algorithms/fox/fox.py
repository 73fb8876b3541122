"""FoX (Jo, Lee, Yeom, Han; AAAI 2024): formation-aware exploration on marlx's QMIX.

``run: FoX`` in YAML. Everything QMIX has, plus (spec: shared/specs/fox.md):

* formation keys of every training step, counted by the ``fox_count`` intrinsic component
  (:mod:`marlx.intrinsic.fox`; evaluation episodes never count; the counts are saved in checkpoints);
* the formation-aware Q network (:class:`~marlx.algorithms.fox.module.FoXRLModule`);
* the count bonus (``fox_count``), the formation-awareness bonus and the formation VAE (``fox_awareness``),
  configured from FoX's attributes below, and CDS's L1 penalty (:class:`~marlx.algorithms.fox.learner.FoXLearner`).

Defaults are the paper's GRF settings (beta1 0.01, beta2 0.02, round 3); the SMAC example used beta1 0.02,
round 1 and the "smac" normalisation.
"""

from __future__ import annotations

from typing import Any

from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from marlx.algorithms.fox.learner import FoXLearner
from marlx.algorithms.fox.module import FOX_MODEL_DEFAULTS, FoXRLModule
from marlx.algorithms.qmix.qmix import QMIX, QMIXConfig
from marlx.intrinsic.fox import AWARENESS_DEFAULTS, COUNT_DEFAULTS

_FOX_OPTIONS = (
    "beta1", "beta2", "formation_round", "formation_source", "bonus_normalisation", "hash_seed",
    "vae_latent_dim", "vae_hidden_dim", "vae_lr", "vae_grad_clip", "vae_samples_per_update", "vae_tau_weight",
    "vae_key_scale", "vae_kl_weight", "awareness_samples", "local_head_l1", "local_head_hidden",
    "released_grad_accumulation", "formation_latent",
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
        #: Hidden width of each local head (marlx choice: the GRU width, 64).
        self.local_head_hidden: int = 64
        #: Reproduce the released code's gradient accumulation in the VAE update (off: intended losses).
        self.released_grad_accumulation: bool = False
        #: Latent the formation head reads: "sample" (z ~ q(z | h), the paper) or "mean" (marlx option:
        #: the posterior mean, deterministic action values).
        self.formation_latent: str = "sample"

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
        if errors:
            raise ValueError("invalid FoX config: " + "; ".join(errors))


class FoX(QMIX):
    """QMIX with FoX's formation counts, formation-aware agents and intrinsic rewards."""

    @classmethod
    def get_default_config(cls) -> FoXConfig:
        return FoXConfig(cls)

    @property
    def formation_counter(self):
        """The visit counter of training formations (the driver's ``fox_count`` component)."""
        return next(c for c in self.intrinsic if c.name == "fox_count").counter
