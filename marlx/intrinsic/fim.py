"""FIM, the Focusing Influence Mechanism (Park, Lee, Han; arXiv 2506.19417), as an intrinsic-reward component.

``intrinsic: {fim: {...}}`` on any team algorithm (``run: FIM`` is QMIX with it). Spec: shared/specs/fim.md.

**What the paper and its reviews establish** (the paper's code is not public; equations 3-5 and most
hyper-parameter values are not available to us):

* **SFI** (state focusing influence) = (1) CoG selection: under a behaviour policy beta (the initial random
  policy), the *normalised temporal change* of every state dimension, the entropy of its marginal distribution,
  and the set ``CoG_delta = {d : H(d) < delta}`` with never-changing (zero-entropy) dimensions excluded; estimated
  once (about "100K" samples) and kept fixed; (2) a *counterfactual* intrinsic reward: each agent's marginal
  contribution to the changes of the CoG dimensions.
* **AFI** (agent focusing influence) = eligibility traces that accumulate influence credit over time, so that
  agents keep a synchronised focus on the same CoG dimensions and can switch targets.

**What is marlx's reconstruction** (every item is an option below, marked ``[marlx]``; ``[LAIES]`` marks a choice
taken from LAIES, the closest published method, whose code we read):

* the exact normalisation (by the sample range), the binning (equal bins plus a zero-change bin) and the
  selection modes other than the threshold (``entropy_k``, ``least_change`` = the paper's LFI ablation,
  ``manual`` = its EFI ablation, ``all``);
* the forward model (LAIES's Linear-ReLU-GRU-Linear, trained by MSE from replay, predicting the next state; its
  loss covers the CoG dimensions only), the counterfactual baseline (the mean over the agent's other available
  actions, with the factual recurrent state, as LAIES) and the influence measure (``sq_diff``, LAIES style, or
  ``norm_change``, reviewer 3's "normalised state difference in each state dimension");
* the trace rule ``e_t = eta * e_{t-1} + infl_t`` per agent and dimension, the shared focus weights
  ``w_t = softmax_d(sum_i e_{i,d,t} / tau)`` and ``r_int = alpha * sum_i sum_d w_{d,t} infl_{i,d,t}``;
* LAIES's anneal (linear to 0 after the first positive reward) and a clip to ``[0, fim_clip]``.

Data flow. Driver: :meth:`FIMReward.observe` collects the states of the first ``cog_samples`` env steps (or
episodes) of training, fits the :class:`CogDetector` once (progress line ``CoG: name1, name2, ...``) and counts env
steps for the anneal; :meth:`FIMReward.annotate` adds to every sampled batch the CoG mask ``fim_cog [B, S]``, the
per-dimension scale ``fim_scale [B, S]`` (1 / range) and the anneal factor ``fim_anneal [B, T]``, which is how
the learner-side copy learns the detection. Learner: :meth:`FIMReward.bonus` computes the counterfactual
influence with the :class:`CogForwardModel` and the AFI reward; :meth:`FIMReward.update` trains the model.
Until the detection is done, the bonus is 0 and the model is not trained.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from marlx.intrinsic.base import IntrinsicReward, register_intrinsic

#: Batch columns written by the driver (:meth:`FIMReward.annotate`), read by the learner.
FIM_COG, FIM_SCALE, FIM_ANNEAL = "fim_cog", "fim_scale", "fim_anneal"

SELECT_MODES = ("entropy", "entropy_k", "least_change", "manual", "all")
_ZERO_ENTROPY = 1e-9  # H below this counts as zero (never-changing or deterministic-change dimension)
_ZERO_CHANGE = 1e-6  # |normalised change| below this falls into the zero-change bin


_INT_OPTIONS = ("cog_samples", "cog_bins", "cog_k", "cog_refresh_every", "fim_hidden", "fim_model_epochs",
                "fim_trace_reset_on_constant", "fim_anneal_steps")


# ---------------------------------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------------------------------
@dataclass
class FIMOptions:
    """Every FIM option with its default and its source (``intrinsic: {fim: {<option>: value}}``)."""

    # -- SFI: CoG detection ------------------------------------------------------------------------
    #: Size of the behaviour-policy sample for CoG detection. Paper: "about 100K" [rev 1]; a small value such as
    #: 2,000 makes a smoke run.
    cog_samples: int = 100_000
    #: Unit of ``cog_samples``: "steps" (env steps) or "episodes". The paper's unit is unverified (reviewer 1
    #: writes "100K episodes") [marlx].
    cog_sample_unit: str = "steps"
    #: "abs": entropy of |normalised change| on [0, 1]; "signed": of the signed change on [-1, 1] [marlx].
    cog_delta: str = "abs"
    #: Equal-width histogram bins of the normalised change; exact zero changes get a bin of their own
    #: (they dominate CoG-like dimensions) [marlx; the paper's binning or KDE is unknown].
    cog_bins: int = 20
    #: "entropy": {d : 0 < H(d) < cog_entropy_threshold} (the paper's CoG_delta); "entropy_k": the ``cog_k``
    #: lowest nonzero H; "least_change": the ``cog_k`` lowest mean |change| (the paper's LFI ablation);
    #: "manual": ``cog_dims`` (the paper's EFI ablation); "all": every dimension. Default entropy_k [marlx]: the
    #: paper's delta values are not published, and a count is robust across envs.
    cog_select: str = "entropy_k"
    #: delta, in nats, for ``cog_select: entropy`` [marlx value; the paper's is unpublished; the maximum possible
    #: H is ln(cog_bins + 1), about 3.04 with 20 bins].
    cog_entropy_threshold: float = 0.5
    #: Dimensions kept by ``entropy_k`` and ``least_change`` [marlx].
    cog_k: int = 2
    #: Dimensions for ``cog_select: manual``: state names (the env's ``state_names``) or indices [marlx].
    cog_dims: list | None = None
    #: Re-estimate the CoG set every this many env steps with the current policy as beta (0: never). The paper
    #: says beta "can be periodically updated" (Sec. 4.2) but keeps it fixed [marlx option].
    cog_refresh_every: int = 0
    # -- SFI: forward model and counterfactual influence -------------------------------------------
    #: "gru": Linear-ReLU-GRU-Linear over the episode (LAIES's Predict_Network) or "mlp": Linear-ReLU-Linear-ReLU-
    #: Linear on (s_t, a_t) only [LAIES / marlx].
    fim_model: str = "gru"
    #: Hidden width of the forward model (LAIES: 128).
    fim_hidden: int = 128
    #: Adam learning rate of the forward model (LAIES: 3e-4).
    fim_lr: float = 3e-4
    #: Grad-norm clip of the forward model (LAIES: 1).
    fim_grad_clip: float = 1.0
    #: Forward-model gradient steps on each learner batch (LAIES predict_epoch: 25).
    fim_model_epochs: int = 25
    #: "norm_change": infl = max(0, |dhat(a)| - mean_{a'} |dhat(a')|) with dhat = (f - s) / range (reviewer 3's
    #: "normalised state difference"); "sq_diff": ((f(a) - mean_{a'} f(a')) / range)^2 (LAIES style) [marlx].
    fim_influence: str = "norm_change"
    # -- AFI: eligibility traces and reward -------------------------------------------------------
    #: Trace decay eta in e_t = eta e_{t-1} + infl_t [marlx; the paper's value and rule are unknown].
    fim_eta: float = 0.9
    #: Shared focus over CoG dimensions from E_d = sum_i e_{i,d}: "softmax" (w = softmax(E / tau)), "argmax"
    #: (one-hot of the largest) or "none" (w = 1) [marlx].
    fim_focus: str = "softmax"
    #: Temperature tau of the softmax focus [marlx].
    fim_focus_tau: float = 1.0
    #: Scale alpha of the intrinsic reward r_int = alpha sum_i sum_d w_d infl_{i,d} [marlx value; the paper's
    #: alpha is unpublished].
    fim_alpha: float = 0.1
    #: Reset a dimension's traces after its true value stayed constant this many steps (0: off; then a dead
    #: target's trace only decays by eta) [marlx option].
    fim_trace_reset_on_constant: int = 0
    #: "after_success": after the first positive team reward, r_int scales by max(1 - (t - t0)/fim_anneal_steps,
    #: 0) (LAIES's rule for sparse rewards); "none": never annealed.
    fim_anneal: str = "after_success"
    #: Env steps of the anneal (LAIES anneal_speed: 2e6).
    fim_anneal_steps: int = 2_000_000
    #: r_int is clipped to [0, fim_clip] (LAIES caps its reward at 1).
    fim_clip: float = 1.0

    _CHOICES = {
        "cog_sample_unit": ("steps", "episodes"),
        "cog_delta": ("abs", "signed"),
        "cog_select": SELECT_MODES,
        "fim_model": ("gru", "mlp"),
        "fim_influence": ("norm_change", "sq_diff"),
        "fim_focus": ("softmax", "argmax", "none"),
        "fim_anneal": ("after_success", "none"),
    }

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, options: dict | None) -> "FIMOptions":
        """Validated options; raises :class:`ValueError` naming the bad key and the valid choices."""
        options = {k: int(v) if isinstance(v, float) and v.is_integer() and k in _INT_OPTIONS else v
                   for k, v in dict(options or {}).items()}
        unknown = sorted(set(options) - set(cls.names()))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown}; valid: {cls.names()}")
        opts = cls(**options)
        for key, choices in cls._CHOICES.items():
            if getattr(opts, key) not in choices:
                raise ValueError(f"{key} must be one of {list(choices)}, got {getattr(opts, key)!r}")
        for key in _INT_OPTIONS:
            value = getattr(opts, key)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{key} must be a non-negative integer, got {value!r}")
        for key in ("cog_samples", "cog_bins", "cog_k", "fim_hidden", "fim_anneal_steps"):
            if getattr(opts, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(opts, key)}")
        for key in ("cog_entropy_threshold", "fim_lr", "fim_grad_clip", "fim_eta", "fim_focus_tau", "fim_alpha",
                    "fim_clip"):
            value = getattr(opts, key)
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{key} must be a non-negative number, got {value!r}")
        if not opts.fim_eta <= 1.0:
            raise ValueError(f"fim_eta must be in [0, 1], got {opts.fim_eta}")
        if opts.fim_focus_tau <= 0 or opts.fim_lr <= 0:
            raise ValueError("fim_focus_tau and fim_lr must be > 0")
        if opts.cog_select == "manual":
            if not opts.cog_dims or not isinstance(opts.cog_dims, (list, tuple)):
                raise ValueError("cog_select: manual needs cog_dims, a list of state names or indices, "
                                 "e.g. cog_dims: [box0_x, box0_y]")
        elif opts.cog_dims is not None:
            raise ValueError(f"cog_dims is used only with cog_select: manual (got cog_select: {opts.cog_select})")
        return opts


# ---------------------------------------------------------------------------------------------------------
# SFI part 1: CoG detection
# ---------------------------------------------------------------------------------------------------------
def normalised_changes(episodes_states: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension temporal change inside each episode, normalised by the sample's range.

    Args:
        episodes_states: one ``[T_e + 1, S]`` array of states per episode.

    Returns:
        ``(delta [N, S], range [S])`` with ``delta[:, d] = (s_{t+1,d} - s_{t,d}) / (max_d - min_d + 1e-8)``, N the
        number of transitions, max/min over every state of the sample.
    """
    states = [np.asarray(s, np.float64) for s in episodes_states if len(s) >= 2]
    if not states:
        raise ValueError("CoG detection needs at least one episode with a transition")
    every = np.concatenate(states, axis=0)
    rng = every.max(axis=0) - every.min(axis=0)
    diffs = np.concatenate([np.diff(s, axis=0) for s in states], axis=0)
    return diffs / (rng + 1e-8), rng


def histogram_entropy(delta: np.ndarray, bins: int = 20, signed: bool = False) -> np.ndarray:
    """Entropy (nats) of each column's histogram: ``bins`` equal bins on [0, 1] (``signed``: [-1, 1]) plus one
    bin for exact zero change (``|delta| < 1e-6``). Returns ``[S]``."""
    delta = np.asarray(delta, np.float64)
    if delta.ndim == 1:
        delta = delta[:, None]
    n, dims = delta.shape
    values = delta if signed else np.abs(delta)
    lo = -1.0 if signed else 0.0
    zero = np.abs(values) < _ZERO_CHANGE
    idx = np.clip(((values - lo) / (1.0 - lo) * bins).astype(np.int64), 0, bins - 1) + 1
    idx[zero] = 0  # the zero-change bin
    out = np.zeros(dims)
    for d in range(dims):
        p = np.bincount(idx[:, d], minlength=bins + 1) / max(n, 1)
        p = p[p > 0]
        out[d] = float(-(p * np.log(p)).sum())
    return out


class CogDetector:
    """Chooses the CoG (centre of gravity) state dimensions from a behaviour-policy sample (FIM's SFI, Eq. 3-5
    as reconstructed; see the module docstring).

    Args:
        select: one of :data:`SELECT_MODES`.
        k: dimensions kept by ``entropy_k`` and ``least_change``.
        threshold: delta (nats) of ``entropy``.
        bins: histogram bins; ``signed``: signed instead of absolute change.
        dims: ``manual`` dimensions (names from ``state_names`` or indices).
        state_names: one name per state dimension (``None``: ``s0, s1, ...``).

    Every mode except ``all`` and ``manual`` considers only *eligible* dimensions: those with H > 0. A dimension
    that never changes has H = 0 (the paper excludes it); so has one whose change is always the same (a timer).
    """

    def __init__(self, select: str = "entropy_k", k: int = 2, threshold: float = 0.5, bins: int = 20,
                 signed: bool = False, dims: Sequence | None = None, state_names: Sequence[str] | None = None):
        if select not in SELECT_MODES:
            raise ValueError(f"cog_select must be one of {list(SELECT_MODES)}, got {select!r}")
        self.select, self.k, self.threshold, self.bins, self.signed = select, int(k), float(threshold), bins, signed
        self.dims = list(dims) if dims is not None else None
        self.state_names = list(state_names) if state_names is not None else None
        self.entropy: np.ndarray | None = None
        self.mean_abs_change: np.ndarray | None = None
        self.range: np.ndarray | None = None
        self.selected: list[int] = []
        self.num_transitions = 0

    @classmethod
    def from_options(cls, opts: FIMOptions, state_names=None) -> "CogDetector":
        return cls(opts.cog_select, opts.cog_k, opts.cog_entropy_threshold, opts.cog_bins, opts.cog_delta == "signed",
                   opts.cog_dims, state_names)

    @property
    def fitted(self) -> bool:
        return self.entropy is not None

    def name(self, d: int) -> str:
        return self.state_names[d] if self.state_names and d < len(self.state_names) else f"s{d}"

    @property
    def names(self) -> list[str]:
        return [self.name(d) for d in self.selected]

    def fit(self, episodes_states: Sequence[np.ndarray]) -> "CogDetector":
        """Estimate H and mean |change| of every dimension from ``[T_e + 1, S]`` state arrays; choose the set."""
        delta, rng = normalised_changes(episodes_states)
        dims = delta.shape[1]
        if self.state_names is not None and len(self.state_names) != dims:
            self.state_names = None  # names of another state layout: fall back to s<i>
        self.range = rng
        self.num_transitions = len(delta)
        self.entropy = histogram_entropy(delta, self.bins, self.signed)
        self.mean_abs_change = np.abs(delta).mean(axis=0)
        self.selected = self._choose(dims)
        return self

    def _choose(self, dims: int) -> list[int]:
        eligible = [d for d in range(dims) if self.entropy[d] > _ZERO_ENTROPY]
        if self.select == "all":
            return list(range(dims))
        if self.select == "manual":
            return self._manual(dims)
        if self.select == "entropy":
            return [d for d in eligible if self.entropy[d] < self.threshold]
        key = self.entropy if self.select == "entropy_k" else self.mean_abs_change
        return sorted(sorted(eligible, key=lambda d: (key[d], d))[: self.k])

    def _manual(self, dims: int) -> list[int]:
        out = []
        for item in self.dims:
            if isinstance(item, numbers.Integral) and not isinstance(item, bool):
                if not 0 <= item < dims:
                    raise ValueError(f"cog_dims index {item} is outside the state (dimension {dims})")
                out.append(int(item))
            elif self.state_names and item in self.state_names:
                out.append(self.state_names.index(item))
            else:
                valid = ", ".join(self.state_names) if self.state_names else f"indices 0..{dims - 1}"
                raise ValueError(f"cog_dims entry {item!r} is not a state dimension; valid: {valid}")
        return sorted(set(out))

    def mask(self, dims: int) -> np.ndarray:
        """``[S]`` float32, 1 on the CoG dimensions."""
        out = np.zeros(dims, np.float32)
        out[self.selected] = 1.0
        return out

    def scale(self, dims: int) -> np.ndarray:
        """``[S]`` float32, 1 / range of every dimension (1 where the range is 0)."""
        rng = np.ones(dims) if self.range is None else self.range
        return np.where(rng > 0, 1.0 / np.where(rng > 0, rng, 1.0), 1.0).astype(np.float32)

    def table(self) -> list[dict]:
        """One row per dimension: name, entropy, mean |change|, range, selected."""
        chosen = set(self.selected)
        return [{"dim": d, "name": self.name(d), "entropy": float(self.entropy[d]),
                 "mean_abs_change": float(self.mean_abs_change[d]), "range": float(self.range[d]),
                 "selected": d in chosen} for d in range(len(self.entropy))]

    def summary(self) -> str:
        """The progress line, e.g. ``CoG: box0_x, box0_y``."""
        return "CoG: " + (", ".join(self.names) if self.selected else "(none)")

    def get_state(self) -> dict:
        return {k: getattr(self, k) for k in ("select", "k", "threshold", "bins", "signed", "dims", "state_names",
                                               "entropy", "mean_abs_change", "range", "selected",
                                               "num_transitions")}

    def set_state(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)


def random_policy_states(env, num: int, unit: str = "steps", seed: int | None = None) -> list[np.ndarray]:
    """States ``[T_e + 1, S]`` of episodes of a :class:`~marlx.envs.team.TeamEnv` under the uniform policy over
    available actions (the paper's beta), until ``num`` env steps (or episodes) are collected."""
    rng = np.random.default_rng(seed)
    out, steps = [], 0
    first = True
    while (steps if unit == "steps" else len(out)) < num:
        obs, _ = env.reset(seed=seed if first else None)
        first = False
        states, done = [obs["state"]], False
        while not done:
            avail = obs["avail"] > 0
            probs = avail / avail.sum(axis=1, keepdims=True)
            actions = (probs.cumsum(axis=1) > rng.random((len(probs), 1))).argmax(axis=1)
            obs, _, term, trunc, _ = env.step(actions)
            states.append(obs["state"])
            steps += 1
            done = term or trunc or (unit == "steps" and steps >= num)
        out.append(np.stack(states))
    return out


# ---------------------------------------------------------------------------------------------------------
# SFI part 2: forward model and counterfactual influence
# ---------------------------------------------------------------------------------------------------------
def joint_onehot(actions: torch.Tensor, n_actions: int) -> torch.Tensor:
    """``[..., n]`` int -> ``[..., n * A]`` float one-hot of the joint action."""
    return nn.functional.one_hot(actions.long(), n_actions).flatten(-2).float()


class CogForwardModel(nn.Module):
    """Predicts the next state ``s_{t+1}`` from ``(s_t, one-hot joint a_t)``.

    ``gru``: Linear(S + n A -> H), ReLU, GRU(H) over the episode, Linear(H -> S) (LAIES's ``Predict_Network``);
    ``mlp``: Linear, ReLU, Linear, ReLU, Linear (no memory) [marlx]. It predicts every state dimension; the
    training loss weights only the CoG dimensions (so a refreshed CoG set needs no new network) [marlx].
    """

    def __init__(self, state_dim: int, n_agents: int, n_actions: int, hidden: int = 128, kind: str = "gru"):
        super().__init__()
        self.state_dim, self.n_agents, self.n_actions, self.kind = state_dim, n_agents, n_actions, kind
        self.inp = nn.Linear(state_dim + n_agents * n_actions, hidden)
        if kind == "gru":
            self.rnn = nn.GRU(hidden, hidden, batch_first=True)
        else:
            self.mid = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, state_dim)

    def forward(self, states: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Factual pass: ``states [B, T, S]``, ``actions [B, T, n]`` -> ``(pred [B, T, S], h [B, T, H] | None)``;
        ``h[:, t]`` is the recurrent state after step t."""
        x = torch.relu(self.inp(torch.cat([states, joint_onehot(actions, self.n_actions)], -1)))
        if self.kind == "gru":
            h, _ = self.rnn(x)
            return self.out(h), h
        return self.out(torch.relu(self.mid(x))), None

    def predict_candidates(self, states: torch.Tensor, actions: torch.Tensor,
                           candidates: torch.Tensor) -> torch.Tensor:
        """Predictions for ``candidates [B, T, K, n]`` joint actions at every step, each from the *factual*
        recurrent state before the step (LAIES's counterfactual). Returns ``[B, T, K, S]``."""
        b, t, k, _ = candidates.shape
        s = states.unsqueeze(2).expand(b, t, k, states.shape[-1])
        x = torch.relu(self.inp(torch.cat([s, joint_onehot(candidates, self.n_actions)], -1)))
        if self.kind != "gru":
            return self.out(torch.relu(self.mid(x)))
        _, h = self.forward(states, actions)
        h_prev = torch.cat([h.new_zeros(b, 1, h.shape[-1]), h[:, :-1]], dim=1)  # state before step t
        h0 = h_prev.unsqueeze(2).expand(b, t, k, h.shape[-1]).reshape(1, b * t * k, h.shape[-1])
        y, _ = self.rnn(x.reshape(b * t * k, 1, -1), h0.contiguous())
        return self.out(y.reshape(b, t, k, -1))


def counterfactual_candidates(actions: torch.Tensor, n_actions: int) -> torch.Tensor:
    """``actions [B, T, n]`` -> ``[B, T, 1 + n A, n]``: candidate 0 is the factual joint action, candidate
    ``1 + i A + a`` the joint action with agent i's action replaced by ``a``."""
    b, t, n = actions.shape
    cand = actions.long().unsqueeze(2).unsqueeze(2).expand(b, t, n, n_actions, n).clone()  # [B,T,i,a,n]
    every = torch.arange(n_actions, device=actions.device)
    for i in range(n):
        cand[:, :, i, :, i] = every
    return torch.cat([actions.long().unsqueeze(2), cand.reshape(b, t, n * n_actions, n)], dim=2)


def counterfactual_influence(predict: Callable[[torch.Tensor], torch.Tensor], states: torch.Tensor,
                             actions: torch.Tensor, avail: torch.Tensor, scale: torch.Tensor,
                             mode: str = "norm_change") -> torch.Tensor:
    """Each agent's influence on every state dimension, against the mean over its other available actions.

    Args:
        predict: ``candidates [B, T, K, n]`` -> predicted next states ``[B, T, K, S]``.
        states: ``s_t [B, T, S]``; ``actions``: ``[B, T, n]``; ``avail``: ``[B, T, n, A]`` at step t.
        scale: ``[S]`` or ``[B, S]``, 1 / range of each dimension (predictions are compared in range units).
        mode: ``norm_change``: ``max(0, |f(a) - s| - mean_{a'} |f(a'_i, a_-i) - s|) * scale``; ``sq_diff``:
            ``((f(a) - mean_{a'} f(a'_i, a_-i)) * scale)^2``.

    Returns:
        ``[B, T, n, S]``; 0 for an agent without another available action (a dead or absent agent).
    """
    b, t, n = actions.shape
    n_actions = avail.shape[-1]
    preds = predict(counterfactual_candidates(actions, n_actions))  # [B, T, 1 + nA, S]
    factual, alt = preds[:, :, 0], preds[:, :, 1:].reshape(b, t, n, n_actions, -1)
    others = (avail > 0).float() * (1.0 - nn.functional.one_hot(actions.long(), n_actions).float())
    count = others.sum(-1, keepdim=True)  # [B, T, n, 1]
    has_alt = (count > 0).float()
    w = (others / count.clamp(min=1)).unsqueeze(-1)  # [B, T, n, A, 1]
    scale = scale.view(-1, 1, 1, scale.shape[-1]) if scale.dim() == 2 else scale
    if mode == "sq_diff":
        mean_alt = (w * alt).sum(3)  # [B, T, n, S]
        infl = ((factual.unsqueeze(2) - mean_alt) * scale) ** 2
    elif mode == "norm_change":
        s = states.unsqueeze(2)
        change = (factual.unsqueeze(2) - s).abs()
        alt_change = (w * (alt - s.unsqueeze(3)).abs()).sum(3)
        infl = torch.relu(change - alt_change) * scale
    else:
        raise ValueError(f"fim_influence must be 'norm_change' or 'sq_diff', got {mode!r}")
    return infl * has_alt


# ---------------------------------------------------------------------------------------------------------
# AFI: eligibility traces and the focus-weighted reward
# ---------------------------------------------------------------------------------------------------------
def constant_runs(states: torch.Tensor, k: int) -> torch.Tensor:
    """``states [B, T+1, S]`` -> ``[B, T, S]`` bool, True at step t when dimension d kept its value over the last
    ``k`` transitions up to ``t`` (``s_{t+1} = s_t = ... = s_{t+1-k}``)."""
    same = (states[:, 1:] == states[:, :-1])
    run = torch.zeros_like(same[:, 0], dtype=torch.long)
    out = torch.zeros_like(same)
    for t in range(same.shape[1]):
        run = (run + 1) * same[:, t]
        out[:, t] = run >= k
    return out


def eligibility_traces(infl: torch.Tensor, eta: float, mask: torch.Tensor | None = None,
                       reset: torch.Tensor | None = None) -> torch.Tensor:
    """AFI's traces, a scan over time starting at 0 (each batch row starts an episode):
    ``e_t = eta * e_{t-1} * (1 - reset_t) + infl_t``.

    Args:
        infl: ``[B, T, n, D]`` influence; ``mask``: ``[B, T]`` valid steps (padded steps add nothing);
        reset: optional ``[B, T, D]`` bool, traces of a dimension set to 0 before adding step t's influence.
    """
    if mask is not None:
        infl = infl * mask[:, :, None, None]
    e = torch.zeros_like(infl[:, 0])
    out = torch.empty_like(infl)
    for t in range(infl.shape[1]):
        decay = eta if reset is None else eta * (~reset[:, t]).unsqueeze(1).to(infl.dtype)
        e = decay * e + infl[:, t]
        out[:, t] = e
    return out


def focus_weights(traces: torch.Tensor, mode: str = "softmax", tau: float = 1.0,
                  dim_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Shared focus ``w [B, T, D]`` from the agents' summed traces ``E_{d,t} = sum_i e_{i,d,t}``, over the
    dimensions of ``dim_mask`` (``[D]`` or ``[B, D]``; others get weight 0)."""
    e = traces.sum(2)  # [B, T, D]
    valid = torch.ones_like(e, dtype=torch.bool) if dim_mask is None else (
        (dim_mask > 0).view(-1, 1, e.shape[-1]).expand_as(e))
    if mode == "none":
        return valid.to(e.dtype)
    if mode == "softmax":
        w = torch.softmax((e / tau).masked_fill(~valid, float("-inf")), dim=-1)
        return torch.nan_to_num(w, nan=0.0)  # no valid dimension at all: all weights 0
    if mode == "argmax":
        best = e.masked_fill(~valid, float("-inf")).argmax(-1, keepdim=True)
        return torch.zeros_like(e).scatter_(-1, best, 1.0) * valid.any(-1, keepdim=True)
    raise ValueError(f"fim_focus must be 'softmax', 'argmax' or 'none', got {mode!r}")


def afi_reward(infl: torch.Tensor, mask: torch.Tensor, *, eta: float, alpha: float, focus: str = "softmax",
               tau: float = 1.0, dim_mask: torch.Tensor | None = None,
               reset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(team r_int [B, T], per-agent r_int [B, T, n])`` with ``r_{i,t} = alpha * sum_d w_{d,t} infl_{i,d,t}``
    and the team reward the sum over agents (before anneal and clip)."""
    if dim_mask is not None:
        infl = infl * dim_mask.view(-1, 1, 1, infl.shape[-1])
    infl = infl * mask[:, :, None, None]
    w = focus_weights(eligibility_traces(infl, eta, None, reset), focus, tau, dim_mask)
    per_agent = alpha * (w.unsqueeze(2) * infl).sum(-1)
    return per_agent.sum(-1), per_agent


def anneal_factor(env_steps: int, first_success_step: int | None, anneal_steps: int, mode: str) -> float:
    """LAIES's anneal: 1 until the first positive reward at ``first_success_step``, then linear to 0 over
    ``anneal_steps`` env steps (``mode="none"``: always 1)."""
    if mode == "none" or first_success_step is None:
        return 1.0
    return max(1.0 - (env_steps - first_success_step) / anneal_steps, 0.0)


# ---------------------------------------------------------------------------------------------------------
# the component
# ---------------------------------------------------------------------------------------------------------
def _episode_states_rewards(ep) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(ep.obs["state"], np.float32), np.asarray(ep.rewards, np.float32)


@register_intrinsic("fim")
class FIMReward(IntrinsicReward):
    """FIM's intrinsic reward (SFI + AFI); options: :class:`FIMOptions`. See the module docstring for the data
    flow between the driver and the learner copies and for what is reconstruction."""

    @classmethod
    def check_options(cls, options: dict) -> None:
        FIMOptions.from_dict(options)

    def __init__(self, options: dict, observation_space, action_space, model_config: dict | None = None,
                 where: str = "learner"):
        super().__init__(options, observation_space, action_space, model_config, where)
        self.opts = FIMOptions.from_dict(options)
        self.state_dim = int(observation_space["state"].shape[0])
        self.n_agents = len(action_space.nvec)
        self.n_actions = int(action_space.nvec[0])
        state_names = self.model_config.get("state_names")
        self.detector = CogDetector.from_options(self.opts, state_names)
        # driver side: the detection sample, env-step count and anneal state
        self._sample: list[np.ndarray] = []
        self._sample_steps = 0
        self.env_steps = 0
        self.last_fit_step = 0
        self.first_success_step: int | None = None
        self.printed = False
        # learner side: the forward model
        self.model: CogForwardModel | None = None
        self.optimizer = None
        self.model_updates = 0
        if where == "learner":
            self.model = CogForwardModel(self.state_dim, self.n_agents, self.n_actions, self.opts.fim_hidden,
                                         self.opts.fim_model)
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.opts.fim_lr)

    # -- driver ----------------------------------------------------------------------------------
    def _sample_size(self) -> int:
        return self._sample_steps if self.opts.cog_sample_unit == "steps" else len(self._sample)

    def observe(self, episodes: list) -> None:
        for ep in episodes:
            states, rewards = _episode_states_rewards(ep)
            self.env_steps += len(rewards)
            if self.first_success_step is None and (rewards > 0).any():
                self.first_success_step = self.env_steps
            refresh = self.opts.cog_refresh_every
            collecting = not self.detector.fitted or (
                refresh > 0 and self.env_steps - self.last_fit_step >= refresh)
            if collecting and len(states) >= 2:
                self._sample.append(states)
                self._sample_steps += len(states) - 1
                if self._sample_size() >= self.opts.cog_samples:
                    self.fit(self._sample)
                    self._sample, self._sample_steps = [], 0

    def fit(self, episodes_states: Sequence[np.ndarray]) -> CogDetector:
        """Fit the detector on ``[T_e + 1, S]`` state arrays and print the progress line."""
        self.detector.fit(episodes_states)
        self.last_fit_step = self.env_steps
        print(self.detector.summary(), flush=True)
        self.printed = True
        return self.detector

    def annotate(self, batch: dict) -> None:
        b = batch["mask"].shape[0]
        fitted = self.detector.fitted
        cog = self.detector.mask(self.state_dim) if fitted else np.zeros(self.state_dim, np.float32)
        batch[FIM_COG] = np.broadcast_to(cog, (b, self.state_dim)).copy()
        batch[FIM_SCALE] = np.broadcast_to(self.detector.scale(self.state_dim), (b, self.state_dim)).copy()
        factor = anneal_factor(self.env_steps, self.first_success_step, self.opts.fim_anneal_steps,
                               self.opts.fim_anneal)
        batch[FIM_ANNEAL] = np.full(batch["mask"].shape, factor, np.float32)

    def metrics(self) -> dict[str, float]:
        """Driver metrics: the entropy table (``fim/entropy/<name>``, ``fim/selected/<name>``), anneal factor."""
        out = {"fim/anneal": anneal_factor(self.env_steps, self.first_success_step, self.opts.fim_anneal_steps,
                                           self.opts.fim_anneal),
               "fim/cog_fitted": float(self.detector.fitted)}
        if self.detector.fitted:
            for row in self.detector.table():
                out[f"fim/entropy/{row['name']}"] = row["entropy"]
                out[f"fim/selected/{row['name']}"] = float(row["selected"])
        return out

    # -- learner ---------------------------------------------------------------------------------
    def to(self, device) -> "FIMReward":
        if self.model is not None:
            self.model.to(device)
        return self

    @staticmethod
    def _active(batch: dict) -> bool:
        return FIM_COG in batch and bool((batch[FIM_COG] > 0).any())

    def influence(self, batch: dict) -> torch.Tensor:
        """Counterfactual influence ``[B, T, n, S]`` (0 outside the CoG set) with the current model."""
        states = batch["state"][:, :-1].float()
        actions = batch["actions"].long()
        avail = batch["avail"][:, :-1].float()
        model = self.model
        with torch.no_grad():
            infl = counterfactual_influence(lambda cand: model.predict_candidates(states, actions, cand),
                                            states, actions, avail, batch[FIM_SCALE].float(), self.opts.fim_influence)
        return infl * batch[FIM_COG].float()[:, None, None, :]

    def bonus(self, batch: dict, fwd_out: dict, module) -> torch.Tensor | None:
        mask = batch["mask"].float()
        if not self._active(batch):
            return torch.zeros_like(mask)
        o = self.opts
        infl = self.influence(batch)
        reset = None
        if o.fim_trace_reset_on_constant > 0:
            reset = constant_runs(batch["state"].float(), o.fim_trace_reset_on_constant)
        r, _ = afi_reward(infl, mask, eta=o.fim_eta, alpha=o.fim_alpha, focus=o.fim_focus, tau=o.fim_focus_tau,
                          dim_mask=batch[FIM_COG].float(), reset=reset)
        return r.clamp(0.0, o.fim_clip) * batch[FIM_ANNEAL].float() * mask

    def model_loss(self, batch: dict) -> torch.Tensor:
        """Masked MSE of the predicted next state on the CoG dimensions, in range units."""
        states = batch["state"].float()
        pred, _ = self.model(states[:, :-1], batch["actions"].long())
        w = (batch[FIM_COG].float() * batch[FIM_SCALE].float())[:, None, :]
        err = ((pred - states[:, 1:]) * w) ** 2 * batch["mask"].float()[:, :, None]
        n = batch["mask"].sum().clamp(min=1) * batch[FIM_COG].sum(-1).mean().clamp(min=1)
        return err.sum() / n

    def update(self, batch: dict, fwd_out: dict, module) -> dict[str, float]:
        if not self._active(batch) or self.opts.fim_model_epochs == 0:
            return {}
        loss = None
        for _ in range(self.opts.fim_model_epochs):
            loss = self.model_loss(batch)
            self.optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), self.opts.fim_grad_clip)
            self.optimizer.step()
        self.model_updates += 1
        return {"fim_model_loss": float(loss.item()), "fim_model_updates": float(self.model_updates)}

    def parameters(self) -> list:
        return [] if self.model is None else list(self.model.parameters())

    # -- checkpoints -----------------------------------------------------------------------------
    def get_state(self) -> dict:
        state: dict[str, Any] = {"detector": self.detector.get_state(), "env_steps": self.env_steps,
                                 "first_success_step": self.first_success_step, "last_fit_step": self.last_fit_step}
        if not self.detector.fitted or self.opts.cog_refresh_every:
            state["sample"] = list(self._sample)  # detection not finished: keep what was collected
        if self.model is not None:
            state["model"] = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
            state["optimizer"] = self.optimizer.state_dict()
            state["model_updates"] = self.model_updates
        return state

    def set_state(self, state: dict) -> None:
        self.detector.set_state(state["detector"])
        self.env_steps = state["env_steps"]
        self.first_success_step = state["first_success_step"]
        self.last_fit_step = state.get("last_fit_step", 0)
        if "sample" in state:
            self._sample = list(state["sample"])
            self._sample_steps = sum(len(s) - 1 for s in self._sample)
        if self.model is not None and "model" in state:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.model_updates = state.get("model_updates", 0)
