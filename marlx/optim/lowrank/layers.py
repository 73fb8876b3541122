"""Dynamic-rank linear and convolution layers: one module, three forms, exact switches between them.

A :class:`DynamicRankLinear` / :class:`DynamicRankConv2d` computes ``y = W x + b`` with ``W`` in one of
three forms (Shin et al., arXiv 2508.08625, section 1 of ``shared/specs/optim.md``):

``lowrank``  ``W = U V`` (rank ``r``): ``x -> V x -> U (V x)``; for a ``k x k`` convolution ``V`` is a
             ``k x k`` conv ``Cin -> r`` and ``U`` a ``1 x 1`` conv ``r -> Cout``.
``full``     a dense trainable ``W``.
``adapter``  the reference code's deflation: the dense ``W`` frozen plus a trainable low-rank adapter
             ``(alpha / r) * B A`` (``A`` down to ``r``, ``B`` up, ``B`` zero-initialised).

Switches: :meth:`inflate` (to ``full``: ``W = U V`` or ``W + (alpha/r) B A``, the function is unchanged)
and :meth:`deflate` (``"svd"``: ``U, V`` from the top-``r`` singular triplets of ``W``; ``"adapter"``).

Design: every form's tensors stay allocated with fixed names and shapes, and the current form is a buffer.
So the state dict never changes keys or shapes across a switch: optimisers keep their parameter lists,
checkpoints restore the form with the weights, and copies of the module load each other's state. Only
the active form takes part in the forward pass; the idle tensors get no gradient (torch optimisers skip
them). The cost is memory: dense + low-rank (+ adapter) weights per layer. The state dict also carries
the *effective* dense weight under the plain ``weight`` key, so a plain ``nn.Linear``/``nn.Conv2d`` copy of
the model (an RLlib env runner, ``RLModule.from_checkpoint``) loads it with ``strict=False`` and computes
exactly the same function.
"""

from __future__ import annotations

import fnmatch
import math

import torch
import torch.nn.functional as F
from torch import nn

from marlx.errors import MarlxError

FORMS = ("lowrank", "full", "adapter")
DEFLATIONS = ("svd", "adapter")


def effective_rank(matrix: torch.Tensor, eps: float = 1e-12) -> float:
    """Entropy-based effective rank (Roy & Vetterli 2007): ``exp(H(p))``, ``p_i = s_i / sum(s)``.

    ``matrix`` is reshaped to ``(rows, -1)``. A rank-``k`` matrix with ``k`` equal singular values gives ``k``.
    """
    s = torch.linalg.svdvals(matrix.detach().reshape(matrix.shape[0], -1).double())
    total = s.sum()
    if total <= eps:
        return 0.0
    p = s / total
    p = p[p > eps]
    return float(torch.exp(-(p * p.log()).sum()))


class DynamicRankLayer(nn.Module):
    """Shared machinery of the dynamic-rank layers; subclasses say how to apply each factor."""

    def _init_forms(self, out_dim: int, in_shape: tuple, rank: int, bias: bool, alpha: float) -> None:
        fan_in = math.prod(in_shape)
        max_rank = min(out_dim, fan_in)
        if not 1 <= rank <= max_rank:
            raise MarlxError(f"rank {rank} is out of range for a {out_dim} x {fan_in} layer (1..{max_rank})")
        self.rank = rank
        self.alpha = float(alpha)
        self.dense_weight = nn.Parameter(torch.empty(out_dim, *in_shape))
        self.u = nn.Parameter(torch.empty(out_dim, rank))
        self.v = nn.Parameter(torch.empty(rank, *in_shape))
        self.adapter_down = nn.Parameter(torch.empty(rank, *in_shape))
        self.adapter_up = nn.Parameter(torch.zeros(out_dim, rank))
        self.bias = nn.Parameter(torch.zeros(out_dim)) if bias else None
        # 0 lowrank, 1 full, 2 adapter; a buffer so that state dicts carry the form.
        self.register_buffer("form_id", torch.zeros((), dtype=torch.long))

    # ---- forms -------------------------------------------------------------------------------------
    @property
    def form(self) -> str:
        return FORMS[int(self.form_id)]

    @property
    def adapter_scale(self) -> float:
        return self.alpha / self.rank

    def _mat(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], -1)

    def effective_weight(self) -> torch.Tensor:
        """The dense ``W`` this layer currently computes with (shape of ``dense_weight``)."""
        if self.form == "full":
            return self.dense_weight
        if self.form == "lowrank":
            w = self.u @ self._mat(self.v)
        else:
            w = self._mat(self.dense_weight) + self.adapter_scale * (self.adapter_up @ self._mat(self.adapter_down))
        return w.reshape(self.dense_weight.shape)

    def active_parameters(self) -> list[nn.Parameter]:
        """The parameters that the current form trains."""
        own = {"lowrank": [self.u, self.v], "full": [self.dense_weight], "adapter": [self.adapter_down, self.adapter_up]}
        return own[self.form] + ([self.bias] if self.bias is not None else [])

    def switched_parameters(self) -> list[nn.Parameter]:
        """Every weight tensor whose role a switch can change (all but the bias)."""
        return [self.dense_weight, self.u, self.v, self.adapter_down, self.adapter_up]

    @torch.no_grad()
    def inflate(self) -> None:
        """To ``full``: the dense ``W`` becomes the effective weight exactly; the output does not change."""
        if self.form != "full":
            self.dense_weight.copy_(self.effective_weight())
            self.form_id.fill_(1)

    @torch.no_grad()
    def deflate(self, method: str = "svd", generator: torch.Generator | None = None) -> None:
        """Back to low rank. ``svd``: ``U, V`` = top-``r`` truncated SVD of ``W`` (balanced: ``U S^1/2``,
        ``S^1/2 V^T``). ``adapter``: freeze ``W``, fresh adapter (``A`` Kaiming-uniform like ``nn.Linear``,
        ``B = 0``), so the output does not change."""
        if method not in DEFLATIONS:
            raise MarlxError(f"unknown deflation {method!r}; choose one of {DEFLATIONS}")
        self.inflate()
        if method == "svd":
            u, s, vh = torch.linalg.svd(self._mat(self.dense_weight).double(), full_matrices=False)
            root = s[: self.rank].sqrt()
            self.u.copy_(u[:, : self.rank] * root)
            self.v.copy_((root[:, None] * vh[: self.rank]).reshape(self.v.shape))
            self.form_id.fill_(0)
        else:
            bound = 1.0 / math.sqrt(self._mat(self.adapter_down).shape[1])
            self.adapter_down.copy_(torch.rand(self.adapter_down.shape, generator=generator) * 2 * bound - bound)
            self.adapter_up.zero_()
            self.form_id.fill_(2)

    @torch.no_grad()
    def set_form(self, form: str, deflation: str = "svd", generator: torch.Generator | None = None) -> bool:
        """Switch to ``form`` (``lowrank`` uses SVD; ``adapter`` the adapter deflation). Returns whether it changed."""
        if form not in FORMS:
            raise MarlxError(f"unknown layer form {form!r}; choose one of {FORMS}")
        if form == self.form:
            return False
        if form == "full":
            self.inflate()
        else:
            self.deflate("svd" if form == "lowrank" else "adapter", generator)
        return True

    # ---- counts ------------------------------------------------------------------------------------
    def parameter_count(self, form: str | None = None, trainable_only: bool = True) -> int:
        """Parameters of ``form`` (default: the current one); ``adapter`` counts the frozen ``W`` only when
        ``trainable_only`` is false. Formulas: full ``O·I``, lowrank ``r·(I + O)``, adapter ``r·(I + O)``
        (+ ``O·I`` frozen), each + ``O`` for the bias, with ``I = Cin·k·k`` for a convolution."""
        form = form or self.form
        o, i = self._mat(self.dense_weight).shape
        n = {"full": o * i, "lowrank": self.rank * (i + o), "adapter": self.rank * (i + o)}[form]
        if form == "adapter" and not trainable_only:
            n += o * i
        return n + (o if self.bias is not None else 0)

    # ---- state dict --------------------------------------------------------------------------------
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        # Export for plain copies of the model; ignored when this layer loads its own state.
        w = self.effective_weight()
        destination[prefix + "weight"] = w if keep_vars else w.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        exported = state_dict.pop(prefix + "weight", None)
        if exported is not None and prefix + "dense_weight" not in state_dict:
            # A plain dense layer's state: take its weights and keep this layer's current form.
            form = self.form
            with torch.no_grad():
                self.dense_weight.copy_(exported)
                if self.bias is not None and prefix + "bias" in state_dict:
                    self.bias.copy_(state_dict.pop(prefix + "bias"))
                self.form_id.fill_(1)
                self.set_form(form)
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, form={self.form}, alpha={self.alpha}"


class DynamicRankLinear(DynamicRankLayer):
    """``nn.Linear`` with a switchable low-rank form (see the module docstring)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, alpha: float = 16.0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_forms(out_features, (in_features,), rank, bias, alpha)
        dense = nn.Linear(in_features, out_features, bias=bias)
        self._adopt(dense)

    @torch.no_grad()
    def _adopt(self, dense: nn.Module) -> None:
        """Take ``dense``'s weights; the low-rank form starts from their truncated SVD."""
        self.dense_weight.copy_(dense.weight)
        if self.bias is not None:
            self.bias.copy_(dense.bias)
        self.form_id.fill_(1)
        self.deflate("svd")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        form = self.form
        if form == "lowrank":
            return F.linear(F.linear(x, self.v), self.u, self.bias)
        if form == "full":
            return F.linear(x, self.dense_weight, self.bias)
        return F.linear(x, self.dense_weight.detach(), self.bias) + self.adapter_scale * F.linear(
            F.linear(x, self.adapter_down), self.adapter_up
        )

    def macs(self, form: str | None = None, batch: int = 1) -> int:
        """Multiply-accumulates of one forward pass on ``batch`` rows: full ``O·I``, lowrank ``r(I + O)``,
        adapter ``O·I + r(I + O)``."""
        form = form or self.form
        full, low = self.out_features * self.in_features, self.rank * (self.in_features + self.out_features)
        return batch * {"full": full, "lowrank": low, "adapter": full + low}[form]

    @classmethod
    def from_dense(cls, layer: nn.Linear, rank: int, alpha: float = 16.0) -> "DynamicRankLinear":
        new = cls(layer.in_features, layer.out_features, rank, bias=layer.bias is not None, alpha=alpha)
        new.to(device=layer.weight.device, dtype=layer.weight.dtype)
        new._adopt(layer)
        return new


class DynamicRankConv2d(DynamicRankLayer):
    """``nn.Conv2d`` (groups 1, zero padding) with a switchable low-rank form: ``k x k`` conv ``Cin -> r``
    (stride, padding and dilation of the original) then ``1 x 1`` conv ``r -> Cout``."""

    def __init__(self, in_channels, out_channels, kernel_size, rank, stride=1, padding=0, dilation=1, bias=True, alpha=16.0):
        super().__init__()
        pair = nn.modules.utils._pair
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation = pair(kernel_size), pair(stride), pair(dilation)
        self.padding = padding if isinstance(padding, str) else pair(padding)
        self._init_forms(out_channels, (in_channels, *self.kernel_size), rank, bias, alpha)
        self._adopt(nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, bias=bias))

    _adopt = DynamicRankLinear._adopt

    def _conv(self, x, w, bias=None):
        return F.conv2d(x, w, bias, self.stride, self.padding, self.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        form = self.form
        if form == "lowrank":
            return F.conv2d(self._conv(x, self.v), self.u[:, :, None, None], self.bias)
        if form == "full":
            return self._conv(x, self.dense_weight, self.bias)
        return self._conv(x, self.dense_weight.detach(), self.bias) + self.adapter_scale * F.conv2d(
            self._conv(x, self.adapter_down), self.adapter_up[:, :, None, None]
        )

    def macs(self, form: str | None = None, batch: int = 1, out_hw: tuple[int, int] = (1, 1)) -> int:
        """Multiply-accumulates for ``batch`` images with an ``out_hw`` output map:
        per output position full ``O·Cin·k²``, lowrank ``r·Cin·k² + O·r``, adapter their sum."""
        form = form or self.form
        kk = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        full, low = self.out_channels * kk, self.rank * kk + self.out_channels * self.rank
        return batch * out_hw[0] * out_hw[1] * {"full": full, "lowrank": low, "adapter": full + low}[form]

    @classmethod
    def from_dense(cls, layer: nn.Conv2d, rank: int, alpha: float = 16.0) -> "DynamicRankConv2d":
        if layer.groups != 1 or layer.padding_mode != "zeros":
            raise MarlxError(f"{layer} has groups={layer.groups}, padding_mode={layer.padding_mode!r}: only groups=1 "
                             "with zero padding can be made low-rank")
        new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, rank, layer.stride, layer.padding,
                  layer.dilation, bias=layer.bias is not None, alpha=alpha)
        new.to(device=layer.weight.device, dtype=layer.weight.dtype)
        new._adopt(layer)
        return new


def layer_rank(layer: nn.Module, rank: int | None = None, rank_ratio: float = 0.5) -> int:
    """``rank`` if given, else ``floor(rank_ratio * out)`` (the paper's ``r = floor(0.5 Cout)``), capped at
    ``min(out, in)``."""
    out = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    fan_in = layer.weight[0].numel()
    r = int(rank) if rank is not None else int(math.floor(rank_ratio * out))
    return min(r, out, fan_in)


def convert_to_lowrank(
    model: nn.Module,
    rank: int | None = None,
    rank_ratio: float = 0.5,
    include: list[str] | tuple[str, ...] | None = None,
    exclude: list[str] | tuple[str, ...] = (),
    min_rank: int = 8,
    only_if_cheaper: bool = True,
    alpha: float = 16.0,
) -> list[str]:
    """Replace chosen ``nn.Linear``/``nn.Conv2d`` layers of ``model`` in place by dynamic-rank layers in the
    ``lowrank`` form (initialised from the truncated SVD of their weights). Returns the converted names.

    ``include``/``exclude`` are ``fnmatch`` patterns on the layer's qualified name (``include=None``: all).
    A layer stays dense when its rank would be below ``min_rank`` (output heads), or, with
    ``only_if_cheaper``, when ``r (I + O) >= O I`` (low rank would not save parameters or FLOPs).
    """
    converted = []
    for name, layer in list(model.named_modules()):
        if type(layer) not in (nn.Linear, nn.Conv2d):
            continue
        if include is not None and not any(fnmatch.fnmatchcase(name, p) for p in include):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in exclude):
            continue
        if isinstance(layer, nn.Conv2d) and (layer.groups != 1 or layer.padding_mode != "zeros"):
            continue
        r = layer_rank(layer, rank, rank_ratio)
        o, i = layer.weight.shape[0], layer.weight[0].numel()
        if r < max(1, min_rank) or (only_if_cheaper and r * (i + o) >= o * i):
            continue
        cls = DynamicRankLinear if isinstance(layer, nn.Linear) else DynamicRankConv2d
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, cls.from_dense(layer, r, alpha))
        converted.append(name)
    return converted


def dynamic_rank_layers(model: nn.Module) -> dict[str, DynamicRankLayer]:
    """The model's dynamic-rank layers by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, DynamicRankLayer)}


def switch_form(
    model: nn.Module,
    form: str,
    deflation: str = "adapter",
    optimizers: list[torch.optim.Optimizer] = (),
    reset_optimizer_state: bool = True,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Switch every dynamic-rank layer of ``model`` to ``form`` (``full``, or ``lowrank`` meaning "deflate
    with ``deflation``"). The optimiser state of every switched layer's weights is dropped when
    ``reset_optimizer_state``: momentum/Adam moments of tensors that were idle or just overwritten describe
    another function, so the new form starts its moments (and Adam's bias correction) afresh; the bias and
    all other layers keep theirs. Returns the names of the layers that changed."""
    target = "full" if form == "full" else ("lowrank" if deflation == "svd" else "adapter")
    if form not in ("full", "lowrank"):
        raise MarlxError(f"switch_form takes 'full' or 'lowrank', got {form!r}")
    changed = []
    for name, layer in dynamic_rank_layers(model).items():
        if layer.set_form(target, generator=generator):
            changed.append(name)
            if reset_optimizer_state:
                for opt in optimizers:
                    for p in layer.switched_parameters():
                        opt.state.pop(p, None)
    return changed
