"""FoX's two intrinsic rewards (Jo et al., AAAI 2024; spec ``shared/specs/fox.md`` §3-4) as components.

* ``fox_count`` — the formation visit counter and the count bonus ``beta1 * N(F_{t+1})^(-1/2)`` (or the SMAC
  normalisation). Driver side: :meth:`FoXCount.observe` counts every formation of every collected training
  episode once (evaluation episodes never pass through ``observe``); :meth:`FoXCount.annotate` adds to a
  sampled batch the count bonus of the next formation (``fox_count_bonus [B, T]``) from the count stored when
  that step was collected (``count_at="collection"``, the released runner's ``visit``) or from the counts at
  sampling time (``"sampling"``) and the formation keys and index sets (``fox_keys [B, T+1, 4n]``, ``fox_far``/``fox_near``
  ``[B, T+1, n]``) that the awareness bonus needs. Learner side: the bonus is the annotated column.
* ``fox_awareness`` — the formation VAE and the formation-awareness bonus ``beta2 * sum_i norm(b_i)`` of the
  next step's hidden states (no gradient). Learner side only: :meth:`FoXAwareness.bonus` reads the module's
  per-step hidden states (``fox_hidden``, returned by FoX's module) and the batch's formation columns;
  :meth:`FoXAwareness.update` trains the VAE on ``vae_samples_per_update`` random (episode, t, agent) samples
  of the same batch after the RL update. It shares the module's formation encoder.

Formation keys are computed from the vectors as the replay stores them (``replay_obs_dtype``), so a float16
replay counts and looks up the same keys.
"""

from __future__ import annotations

import logging
import numbers
import warnings

import numpy as np
import torch

from marlx.intrinsic.base import IntrinsicReward, register_intrinsic
from marlx.intrinsic.fox_formation import FormationCounter, FormationKeyer, count_bonus
from marlx.intrinsic.fox_vae import AwarenessNormaliser, FormationVAE
from marlx.runtime.columns import MASK

logger = logging.getLogger(__name__)

#: A batch of at least this many formations that yields one distinct key triggers the degenerate-key warning.
SINGLE_KEY_MIN_STEPS = 16
#: ... and a batch of at least FEW_KEYS_MIN_STEPS formations with fewer distinct keys than this fraction of them.
FEW_KEYS_MIN_STEPS, FEW_KEYS_FRACTION = 200, 0.02

FOX_KEYS, FOX_FAR, FOX_NEAR, FOX_COUNT_BONUS = "fox_keys", "fox_far", "fox_near", "fox_count_bonus"
#: Per-step replay column ``[T]``: N(F_{t+1}) as counted when F_{t+1} was collected (``count_at="collection"``).
FOX_VISIT_NEXT = "fox_visit_next"
COUNT_AT = ("collection", "sampling")
VAE_SCHEDULES = ("per_update", "episodes")
#: Per-step hidden states ``[B, T+1, n, H]`` in the forward output of FoX's module.
FOX_HIDDEN = "fox_hidden"

#: Defaults of ``fox_count`` (FoXConfig passes its own attributes; see its docs for the sources).
COUNT_DEFAULTS = {"beta1": 0.01, "formation_round": 3, "formation_source": "obs", "bonus_normalisation": "grf",
                  "hash_seed": 0, "replay_obs_dtype": "float32", "count_at": "collection",
                  "count_terminal_formation": True, "hash_bit_order": "msb"}
#: Defaults of ``fox_awareness``.
AWARENESS_DEFAULTS = {"beta2": 0.02, "vae_latent_dim": 64, "vae_hidden_dim": 128, "vae_lr": 1e-3,
                      "vae_grad_clip": 1.0, "vae_samples_per_update": 25, "vae_tau_weight": 0.1,
                      "vae_key_scale": 1000.0, "vae_kl_weight": 1.0, "awareness_samples": 20,
                      "released_grad_accumulation": False, "bonus_normalisation": "grf", "seed": 0,
                      "awareness_target": "raw", "awareness_per_agent": True, "awareness_before_mean": True,
                      "vae_schedule": "per_update", "vae_every_episodes": 16, "vae_steps": 25, "vae_joint_clip": False}


def _check(options: dict, defaults: dict) -> None:
    unknown = set(options) - set(defaults)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; valid: {sorted(defaults)}")
    for key, value in options.items():
        default = defaults[key]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, numbers.Real):
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        else:
            ok = isinstance(value, type(default)) or value is None
        if not ok:
            raise ValueError(f"{key} must be of the type of {default!r}, got {value!r}")
    if options.get("formation_source", "obs") not in ("obs", "positions"):
        raise ValueError(f"formation_source must be 'obs' or 'positions', got {options['formation_source']!r}")
    if options.get("bonus_normalisation", "grf") not in ("grf", "smac"):
        raise ValueError(f"bonus_normalisation must be 'grf' or 'smac', got {options['bonus_normalisation']!r}")
    choices = {"count_at": COUNT_AT, "hash_bit_order": ("msb", "lsb"), "awareness_target": ("raw", "scaled"),
               "vae_schedule": VAE_SCHEDULES}
    for key, allowed in choices.items():
        if key in options and options[key] not in allowed:
            raise ValueError(f"{key} must be one of {allowed}, got {options[key]!r}")


def gather_agents(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x [..., n, H]``, ``index [..., n]`` -> ``x[..., index[j], :]`` for every agent j."""
    return torch.take_along_dim(x, index.long().unsqueeze(-1).expand(*index.shape, x.shape[-1]), dim=-2)


@register_intrinsic("fox_count")
class FoXCount(IntrinsicReward):
    """Formation visit counts (driver) and FoX's count bonus."""

    @classmethod
    def check_options(cls, options: dict) -> None:
        _check(options, COUNT_DEFAULTS)

    def __init__(self, options, observation_space, action_space, model_config=None, where="learner"):
        super().__init__({**COUNT_DEFAULTS, **options}, observation_space, action_space, model_config, where)
        self.counter = FormationCounter()
        self.keyer: FormationKeyer | None = None
        self._warned = False
        self.dtype = np.dtype(self.options["replay_obs_dtype"])

    def _vectors(self, obs: dict) -> np.ndarray:
        source = self.options["formation_source"]
        if source not in obs:
            raise ValueError("formation_source='positions' needs an env with agent positions "
                             "(observation key 'positions')")
        return np.asarray(obs[source]).astype(self.dtype).astype(np.float32)

    def _keys(self, vectors: np.ndarray):
        if self.keyer is None:
            self.keyer = FormationKeyer(vectors.shape[-1], self.options["formation_round"], self.options["hash_seed"],
                                        self.options["hash_bit_order"])
        return self.keyer.keys_and_index_sets(vectors)

    def observe(self, episodes: list) -> None:
        """Count the formations of the collected episodes, each in step order.

        A whole episode contributes F_0 .. F_T (F_T only with ``count_terminal_formation``); a later chunk of
        an episode (fragment mode) its new observations. With ``count_at="collection"`` each episode gets
        ``extras["fox_visit_next"] [T]``: N(F_{t+1}) right after F_{t+1} was counted (0 when not counted),
        which the replay stores with the step.
        """
        batch_keys = []
        for ep in episodes:
            first = 0 if ep.start_t == 0 else 1  # a later chunk's first observation was counted with the previous one
            keys, _, _ = self._keys(self._vectors({k: v[first:] for k, v in ep.obs.items()}))
            if ep.is_done and not self.options["count_terminal_formation"]:
                keys = keys[:-1]  # released: the formation is computed only before an action
            visits = self.counter.update_sequential(keys)
            T = len(ep)
            visit_next = np.zeros(T, np.int64)
            after = visits[1 - first:]  # visits of F_{t+1}, t = 0 .. (up to) T-1
            visit_next[: len(after)] = after[:T]
            if self.options["count_at"] == "collection":
                ep.extras[FOX_VISIT_NEXT] = visit_next
            batch_keys.append(keys.reshape(-1, keys.shape[-1]))
        self._check_degenerate(batch_keys)

    def _check_degenerate(self, batch_keys: list) -> None:
        """Warn (once) when a collected batch's formations carry (almost) no information: a single key over at
        least ``SINGLE_KEY_MIN_STEPS`` formations, or fewer than ``FEW_KEYS_FRACTION`` of ``FEW_KEYS_MIN_STEPS``
        or more (the GRF simple115 case: 4 keys over 1,500 random steps)."""
        if self._warned or not batch_keys:
            return
        flat = np.concatenate(batch_keys)
        distinct = len(np.unique(flat, axis=0))
        single = len(flat) >= SINGLE_KEY_MIN_STEPS and distinct == 1
        few = len(flat) >= FEW_KEYS_MIN_STEPS and distinct < FEW_KEYS_FRACTION * len(flat)
        if single or few:
            self._warned = True
            what = "the same key" if distinct == 1 else f"only {distinct} distinct keys"
            msg = (f"FoX: the {len(flat)} formations of this batch have {what}: the agents' "
                   f"{self.options['formation_source']} vectors carry almost no formation (e.g. rows that differ only "
                   "in a one-hot); use an observation whose per-agent differences encode positions (GRF: env_config "
                   "representation: ego) or formation_source: positions")
            logger.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)

    def annotate(self, batch: dict) -> None:
        keys, far, near = self._keys(self._vectors(batch))
        mask = batch[MASK]
        if self.options["count_at"] == "collection":
            if FOX_VISIT_NEXT not in batch:
                raise ValueError("fox_count with count_at='collection' needs a replay that stores 'fox_visit_next' "
                                 "(run: FoX does); use count_at: sampling with other algorithms")
            counts = np.asarray(batch[FOX_VISIT_NEXT])
        else:
            counts = self.counter.lookup(keys[:, 1:])
            if not self.options["count_terminal_formation"]:  # the terminal formation of each episode is uncounted
                lengths = mask.sum(1).astype(np.int64)
                counts[np.arange(len(lengths)), lengths - 1] = 0
        bonus = count_bonus(counts, self.options["beta1"], self.options["bonus_normalisation"], mask)
        batch[FOX_COUNT_BONUS] = bonus.astype(np.float32) * mask
        batch[FOX_KEYS] = keys.astype(np.float32)
        batch[FOX_FAR], batch[FOX_NEAR] = far.astype(np.int64), near.astype(np.int64)

    def bonus(self, batch: dict, fwd_out: dict, module):
        return batch[FOX_COUNT_BONUS]

    def get_state(self) -> dict:
        return {"counter": self.counter.get_state()} if self.where == "driver" else {}

    def set_state(self, state: dict) -> None:
        if "counter" in state:
            self.counter.set_state(state["counter"])


@register_intrinsic("fox_awareness")
class FoXAwareness(IntrinsicReward):
    """The formation VAE (trained on the learner) and FoX's formation-awareness bonus."""

    @classmethod
    def check_options(cls, options: dict) -> None:
        _check(options, AWARENESS_DEFAULTS)
        o = {**AWARENESS_DEFAULTS, **options}
        if o["vae_samples_per_update"] < 1 or o["awareness_samples"] < 1:
            raise ValueError("vae_samples_per_update and awareness_samples must be >= 1")

    def __init__(self, options, observation_space, action_space, model_config=None, where="learner"):
        super().__init__({**AWARENESS_DEFAULTS, **options}, observation_space, action_space, model_config, where)
        self.vae: FormationVAE | None = None
        self.normaliser = AwarenessNormaliser(self.options["bonus_normalisation"], self.options["awareness_per_agent"],
                                              self.options["awareness_before_mean"])
        #: Lifetime episodes collected, set by FoX's learner before each update (``vae_schedule="episodes"``).
        self.episodes_sampled = 0
        self._vae_blocks_done: int | None = None
        self.rng = torch.Generator().manual_seed(int(self.options["seed"] or 0))
        self._pending_state: dict | None = None

    def build_vae(self, module) -> FormationVAE:
        """The VAE around the module's formation encoder (built on first use, on the module's device)."""
        if self.vae is None:
            o = self.options
            self.vae = FormationVAE(
                n_agents=module.n_agents, hidden_dim=module.hidden_dim, vae_hidden=o["vae_hidden_dim"],
                latent_dim=o["vae_latent_dim"], key_scale=o["vae_key_scale"], tau_weight=o["vae_tau_weight"],
                lr=o["vae_lr"], grad_clip=o["vae_grad_clip"],
                released_grad_accumulation=o["released_grad_accumulation"], kl_weight=o["vae_kl_weight"],
                encoder=module.formation_encoder, joint_clip=o["vae_joint_clip"],
            ).to(next(module.parameters()).device)
            if self._pending_state is not None:
                self._load(self._pending_state)
                self._pending_state = None
        return self.vae

    def bonus(self, batch: dict, fwd_out: dict, module):
        beta2 = self.options["beta2"]
        vae = self.build_vae(module)
        if beta2 == 0.0:
            return None
        mask = batch[MASK]
        hidden = fwd_out[FOX_HIDDEN].detach()  # [B, T+1, n, H]
        keys, far, near = batch[FOX_KEYS], batch[FOX_FAR], batch[FOX_NEAR]
        h_next, k_next = hidden[:, 1:], keys[:, 1:]
        h_far, h_near = gather_agents(h_next, far[:, 1:]), gather_agents(h_next, near[:, 1:])
        n = h_next.shape[2]
        b, log_q = vae.awareness_log_ratio(h_next, h_far, h_near, k_next.unsqueeze(2).expand(-1, -1, n, -1),
                                           self.options["awareness_samples"], target=self.options["awareness_target"],
                                           per_sample=self.options["awareness_before_mean"])
        agent_mask = mask.unsqueeze(-1).expand(*mask.shape, n)  # [B, T, n]
        awareness = self.normaliser(b, log_q, agent_mask) * agent_mask
        return beta2 * awareness.sum(-1)

    def vae_steps_due(self) -> tuple[int, int]:
        """``(steps, samples per step)`` of VAE training for this RL update.

        ``"per_update"`` (marlx): one step on ``vae_samples_per_update`` samples after every RL update.
        ``"episodes"`` (released ``run.py``: ``train_predict`` every ``on_policy_batch`` = 16 episodes, 25 updates on
        one sample each): ``vae_steps`` single-sample steps for every ``vae_every_episodes`` episodes collected since
        the last VAE training; at the first RL update only the latest block is due (the released code cannot
        train before the buffer holds a batch either).
        """
        o = self.options
        if o["vae_schedule"] == "per_update":
            return 1, o["vae_samples_per_update"]
        blocks = int(self.episodes_sampled) // int(o["vae_every_episodes"])
        if self._vae_blocks_done is None:
            self._vae_blocks_done = max(0, blocks - 1)
        due = blocks - self._vae_blocks_done
        self._vae_blocks_done = blocks
        return due * int(o["vae_steps"]), 1

    def update(self, batch: dict, fwd_out: dict, module) -> dict:
        vae = self.build_vae(module)
        hidden = fwd_out[FOX_HIDDEN].detach()
        keys, far, near, mask = batch[FOX_KEYS], batch[FOX_FAR], batch[FOX_NEAR], batch[MASK]
        valid = mask.nonzero()  # (episode, t) pairs of real steps (t < T: the mask covers transitions)
        steps, k = self.vae_steps_due()
        if len(valid) == 0 or steps == 0:
            return {"vae_steps": 0.0}
        totals: dict[str, float] = {}
        for _ in range(steps):
            pick = valid[torch.randint(len(valid), (k,), generator=self.rng)]
            agent = torch.randint(hidden.shape[2], (k,), generator=self.rng)
            e, t = pick[:, 0], pick[:, 1]
            h = hidden[e, t]  # [k, n, H]
            rows = torch.arange(k)
            losses = vae.train_step(h[rows, agent], h[rows, far[e, t, agent].long()],
                                    h[rows, near[e, t, agent].long()], keys[e, t])
            for name, value in losses.items():
                totals[name] = totals.get(name, 0.0) + value / steps
        return {**{f"vae_{name}": value for name, value in totals.items()}, "vae_steps": float(steps)}

    def get_state(self) -> dict:
        if self.vae is None:
            return self._pending_state or {}
        return {
            "decoder": self.vae.decoder.state_dict(),
            "decoder_tau": self.vae.decoder_tau.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in self.vae.optimizers.items()},
            "normaliser": self.normaliser.get_state(),
            "vae_blocks_done": self._vae_blocks_done,
        }

    def set_state(self, state: dict) -> None:
        if not state:
            return
        if self.vae is None:  # the VAE is built with the module on first use
            self._pending_state = state
            self.normaliser.set_state(state["normaliser"])
        else:
            self._load(state)

    def _load(self, state: dict) -> None:
        self._vae_blocks_done = state.get("vae_blocks_done")
        self.vae.decoder.load_state_dict(state["decoder"])
        self.vae.decoder_tau.load_state_dict(state["decoder_tau"])
        for name, opt in self.vae.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        self.normaliser.set_state(state["normaliser"])
