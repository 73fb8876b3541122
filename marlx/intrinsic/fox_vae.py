"""FoX's formation VAE and the formation-awareness bonus (spec: shared/specs/fox.md §3-4).

Three parts, each with its own Adam optimiser (lr 1e-3, grad-norm clip 1.0 per part, or jointly as released):

* ``encoder``: q(z | h): GRU state h (64) -> 128 -> 128 (ReLU) -> mu, log sigma^2 (latent 64);
* ``decoder``: [z_i, z_far, z_near] -> 128 -> 128 -> sigmoid -> 4n, reconstructing F / ``key_scale``;
* ``decoder_tau``: z_i -> 128 -> 128 -> sigmoid -> 64, reconstructing h_i.

Losses: ``L1 = MSE(F) + KL_i + KL_far + KL_near``, ``L2 = MSE(h_i) + KL_i``; the encoder minimises
``L1 - tau_weight * L2`` (keeps formation information, strips the rest), the decoder ``L1``, decoder_tau ``L2``.
The released code calls backward three times before stepping, so gradients accumulate and the sign flip is
not realised; ``released_grad_accumulation=True`` reproduces that, the default implements the intended losses.
"""

from __future__ import annotations

import torch
from torch import nn


def _mlp(inp: int, hidden: int, out: int, sigmoid: bool) -> nn.Sequential:
    layers = [nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out)]
    if sigmoid:
        layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)), summed over the latent, averaged over the batch."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)).mean()


class FormationEncoder(nn.Module):
    def __init__(self, hidden_dim: int = 64, vae_hidden: int = 128, latent_dim: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(hidden_dim, vae_hidden), nn.ReLU(), nn.Linear(vae_hidden, vae_hidden), nn.ReLU()
        )
        self.mu = nn.Linear(vae_hidden, latent_dim)
        self.logvar = nn.Linear(vae_hidden, latent_dim)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.body(h)
        return self.mu(x), self.logvar(x)

    @staticmethod
    def sample(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mu + torch.randn_like(mu) * (0.5 * logvar).exp()


class FormationVAE(nn.Module):
    """Encoder, formation decoder and hidden-state decoder, trained on (h_i, h_far, h_near, F) samples.

    Args:
        n_agents: number of agents (the key has 4n entries).
        hidden_dim: GRU state size of the agent network (64).
        vae_hidden: hidden width of all three MLPs (128).
        latent_dim: latent size (64).
        key_scale: the key is reconstructed as F / key_scale (1000 in the paper) through a sigmoid.
        tau_weight: weight of L2 in the encoder loss (0.1).
        lr: Adam learning rate of each part (1e-3).
        grad_clip: grad-norm clip of each part (1.0).
        released_grad_accumulation: reproduce the released code's accumulated gradients.
        joint_clip: clip the three parts' gradients together (released ``FNet.py``) instead of each part alone.
        kl_weight: weight of every KL term [marlx option; the paper's losses use 1.0]. With keys scaled by
            1/1000 the reconstruction errors are small, and at 1.0 the KL terms can dominate so that the latent
            carries little formation information; a smaller weight (a beta-VAE) lets it carry more.
        encoder: an existing encoder to train (FoX's RLModule owns it); a new one when ``None``.
    """

    def __init__(
        self,
        n_agents: int,
        hidden_dim: int = 64,
        vae_hidden: int = 128,
        latent_dim: int = 64,
        key_scale: float = 1000.0,
        tau_weight: float = 0.1,
        lr: float = 1e-3,
        grad_clip: float = 1.0,
        released_grad_accumulation: bool = False,
        kl_weight: float = 1.0,
        encoder: FormationEncoder | None = None,
        joint_clip: bool = False,
    ):
        super().__init__()
        self.n_agents = n_agents
        self.latent_dim = latent_dim
        self.key_scale = key_scale
        self.tau_weight = tau_weight
        self.grad_clip = grad_clip
        self.released_grad_accumulation = released_grad_accumulation
        self.kl_weight = kl_weight
        self.joint_clip = joint_clip
        self.steps_taken = 0
        # FoX's agents read the encoder at action time: the RLModule owns it and passes it in.
        self.encoder = encoder if encoder is not None else FormationEncoder(hidden_dim, vae_hidden, latent_dim)
        self.decoder = _mlp(3 * latent_dim, vae_hidden, 4 * n_agents, sigmoid=True)
        self.decoder_tau = _mlp(latent_dim, vae_hidden, hidden_dim, sigmoid=True)
        self.optimizers = {
            "encoder": torch.optim.Adam(self.encoder.parameters(), lr=lr),
            "decoder": torch.optim.Adam(self.decoder.parameters(), lr=lr),
            "decoder_tau": torch.optim.Adam(self.decoder_tau.parameters(), lr=lr),
        }

    # -- losses ------------------------------------------------------------------------------------
    def losses(self, h_i, h_far, h_near, keys) -> dict[str, torch.Tensor]:
        """``h_*`` (B, hidden), ``keys`` (B, 4n) raw formation keys -> L1, L2, encoder loss and parts."""
        target = keys / self.key_scale
        mu_i, lv_i = self.encoder(h_i)
        mu_f, lv_f = self.encoder(h_far)
        mu_n, lv_n = self.encoder(h_near)
        z_i, z_f, z_n = (FormationEncoder.sample(m, v) for m, v in ((mu_i, lv_i), (mu_f, lv_f), (mu_n, lv_n)))
        recon_f = self.decoder(torch.cat([z_i, z_f, z_n], -1))
        recon_h = self.decoder_tau(z_i)
        kl_i, kl_f, kl_n = (self.kl_weight * kl_standard_normal(m, v) for m, v in ((mu_i, lv_i), (mu_f, lv_f), (mu_n, lv_n)))
        mse_f = nn.functional.mse_loss(recon_f, target)
        mse_h = nn.functional.mse_loss(recon_h, h_i)
        l1 = mse_f + kl_i + kl_f + kl_n
        l2 = mse_h + kl_i
        return {"L1": l1, "L2": l2, "encoder": l1 - self.tau_weight * l2, "mse_formation": mse_f, "mse_hidden": mse_h}

    def train_step(self, h_i, h_far, h_near, keys) -> dict[str, float]:
        """One update of all three parts on a batch of samples (inputs are detached here)."""
        h_i, h_far, h_near = h_i.detach(), h_far.detach(), h_near.detach()
        keys = keys.detach().float()
        parts = {"encoder": self.encoder, "decoder": self.decoder, "decoder_tau": self.decoder_tau}
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        loss = self.losses(h_i, h_far, h_near, keys)
        if self.released_grad_accumulation:
            # Released behaviour: three backward passes into the same .grad buffers, then three steps.
            loss["encoder"].backward(retain_graph=True)
            loss["L1"].backward(retain_graph=True)
            loss["L2"].backward()
        else:
            targets = {"encoder": loss["encoder"], "decoder": loss["L1"], "decoder_tau": loss["L2"]}
            for name, module in parts.items():
                params = list(module.parameters())
                grads = torch.autograd.grad(targets[name], params, retain_graph=True, allow_unused=True)
                for p, g in zip(params, grads):
                    p.grad = g
        if self.joint_clip:  # released FNet.py: one clip over encoder + decoder + decoder_tau
            nn.utils.clip_grad_norm_([p for m in parts.values() for p in m.parameters()], self.grad_clip)
        for name, module in parts.items():
            if not self.joint_clip:
                nn.utils.clip_grad_norm_(module.parameters(), self.grad_clip)
            self.optimizers[name].step()
        self.steps_taken += 1
        return {k: float(v.detach()) for k, v in loss.items()}

    # -- awareness bonus ---------------------------------------------------------------------------
    @torch.no_grad()
    def awareness_log_ratio(self, h_i, h_far, h_near, keys, n_samples: int = 20, target: str = "raw",
                            per_sample: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``b = log q - (log p_i + log p_far + log p_near) / 3`` and ``log q``, per latent sample or averaged.

        ``log q = -||Dec(z_i, z_far, z_near) - F||^2``; ``log p_x`` keeps only z_x and replaces the two other
        latents by N(0, I) noise. ``target="raw"`` compares the decoder's output with the raw key F (the spec's
        formula and the released ``get_log_pi`` on ``batch["formation"]``); ``"scaled"`` with F / key_scale
        (the VAE's own training target). Shapes: ``h_*`` (..., hidden), ``keys`` (..., 4n) -> (...,) each, or
        (n_samples, ...) with ``per_sample``.
        """
        if target not in ("raw", "scaled"):
            raise ValueError(f"awareness target must be 'raw' or 'scaled', got {target!r}")
        goal = keys.float() if target == "raw" else keys.float() / self.key_scale
        stats = [self.encoder(h) for h in (h_i, h_far, h_near)]
        err = lambda parts: -((self.decoder(torch.cat(parts, -1)) - goal) ** 2).sum(-1)  # noqa: E731
        log_q, log_p = [], []
        for _ in range(n_samples):
            z = [FormationEncoder.sample(m, v) for m, v in stats]
            noise = [torch.randn_like(zz) for zz in z]
            log_q.append(err(z))
            log_p.append((err([z[0], noise[1], noise[2]]) + err([noise[0], z[1], noise[2]])
                          + err([noise[0], noise[1], z[2]])) / 3)
        log_q, log_p = torch.stack(log_q), torch.stack(log_p)
        if per_sample:
            return log_q - log_p, log_q
        return (log_q - log_p).mean(0), log_q.mean(0)


class AwarenessNormaliser:
    """Min-max normalisation of per-agent awareness bonuses over the batch, scaled by |mean log q| relative to
    its running max (spec §4). ``mode="grf"`` maps to [0, 1], ``"smac"`` to [-1, 0].

    Args:
        mode: ``"grf"`` or ``"smac"``.
        per_agent: a separate min-max and running max for each agent (the last axis), as the released
            ``FOX_QMIX.py`` loops over agents; False: one over all agents (marlx's earlier choice).
        before_mean: the inputs carry a leading axis of latent samples; min-max over them too, then average
            (released: normalised per sample, so the averages need not span [0, 1]); False: the inputs are
            already averaged over samples.

    Padded steps (``mask`` 0) never enter the min, max or mean (the released code includes them; marlx keeps
    its fix).
    """

    def __init__(self, mode: str = "grf", per_agent: bool = False, before_mean: bool = False):
        if mode not in ("grf", "smac"):
            raise ValueError(f"normalisation must be 'grf' or 'smac', got {mode!r}")
        self.mode = mode
        self.per_agent = per_agent
        self.before_mean = before_mean
        self.running_max: float | list[float] = 0.0

    def __call__(self, b: torch.Tensor, log_q: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``b``, ``log_q``: ``[(S,) ..., n]``; ``mask``: ``[..., n]`` -> normalised ``[..., n]``."""
        shape = b.shape[1:] if self.before_mean else b.shape
        valid = torch.ones(shape, dtype=torch.bool, device=b.device) if mask is None else mask.bool()
        if self.before_mean:
            valid = valid.unsqueeze(0).expand_as(b)
        if not valid.any():
            return torch.zeros(shape, device=b.device)
        # reduce over every axis but the agents' (per_agent) or over all
        flat_b = b.reshape(-1, b.shape[-1]) if self.per_agent else b.reshape(-1, 1)
        flat_q = log_q.reshape(flat_b.shape)
        flat_v = valid.reshape(flat_b.shape)
        inf = torch.tensor(float("inf"), device=b.device)
        lo = torch.where(flat_v, flat_b, inf).min(0).values
        hi = torch.where(flat_v, flat_b, -inf).max(0).values
        count = flat_v.sum(0).clamp(min=1)
        mean_abs = (torch.where(flat_v, flat_q, 0.0).sum(0) / count).abs()
        lo, hi = torch.where(torch.isfinite(lo), lo, 0.0), torch.where(torch.isfinite(hi), hi, 0.0)
        scaled = (b - lo) / (hi - lo).clamp_min(1e-8) if self.per_agent else (b - lo[0]) / (hi - lo).clamp_min(1e-8)[0]
        if self.mode == "smac":
            scaled = scaled - 1.0
        if self.before_mean:
            scaled = scaled.mean(0)
        values = mean_abs.tolist()
        if self.per_agent:
            prev = self.running_max if isinstance(self.running_max, list) and len(self.running_max) == len(values) \
                else [float(self.running_max)] * len(values)
            self.running_max = [max(p, v) for p, v in zip(prev, values)]
            factor = torch.tensor([v / max(m, 1e-8) for v, m in zip(values, self.running_max)], device=b.device)
        else:
            self.running_max = max(float(self.running_max if not isinstance(self.running_max, list)
                                         else max(self.running_max)), values[0])
            factor = torch.tensor(values[0] / max(self.running_max, 1e-8), device=b.device)
        return scaled * factor

    def get_state(self) -> dict:
        return {"running_max": self.running_max}

    def set_state(self, state: dict) -> None:
        rm = state["running_max"]
        self.running_max = [float(v) for v in rm] if isinstance(rm, (list, tuple)) else float(rm)
