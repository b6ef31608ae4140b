"""Stage 1 core (no Ray): beta schedule, the full Detaux objective for one batch of pairs, latent traversals.

    L = L_rec + beta1 (w_dist L_dist + w_spar L_spar) + beta2 w_cons L_cons + beta3 w_reg L_reg      (Eq. 2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from . import losses
from .config import DisentangleConfig
from .models import DisentangleAE


@dataclass(frozen=True)
class Betas:
    beta1: float
    beta2: float
    beta3: float

    @property
    def warmup(self) -> bool:
        return self.beta1 == 0.0 and self.beta2 == 0.0 and self.beta3 == 0.0


def beta_schedule(epoch: float, cfg: DisentangleConfig) -> Betas:
    """Betas at (fractional) epoch e of E (authors' schedule, METHOD.md):

        e < warmup_frac * E :  all 0 (L_rec alone)
        beta1 = min(exp(rise/E (e - c1 E)), 1),  beta2 = min(exp(rise/E (e - c2 E)), 1),  beta3 = 1 - beta1
    """
    big_e = float(cfg.epochs)
    if epoch < cfg.warmup_frac * big_e:
        return Betas(0.0, 0.0, 0.0)
    b1 = min(math.exp(cfg.beta_rise / big_e * (epoch - cfg.beta1_center * big_e)), 1.0)
    b2 = min(math.exp(cfg.beta_rise / big_e * (epoch - cfg.beta2_center * big_e)), 1.0)
    return Betas(b1, b2, 1.0 - b1)


def detaux_loss(
    model: DisentangleAE, x1: Tensor, x2: Tensor, same: Tensor, betas: Betas, cfg: DisentangleConfig
) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """Total loss for a batch of pairs, its terms (detached) and the oracle weights lam (B, k).

    x1, x2: float images (B, 3, S, S); same: bool (B,), True when the pair shares its principal label.
    `model` may be wrapped in DDP; the terms need its submodules, reached through `.module`.
    """
    core: DisentangleAE = getattr(model, "module", model)
    x = torch.cat([x1, x2], dim=0)
    s, x_rec = model(x)
    rec = losses.reconstruction_loss(x, x_rec)
    b = x1.shape[0]
    s1, s2 = s[:b], s[b:]
    lam = losses.oracle_weights(s1, s2, same, cfg.principal_subspace, cfg.oracle_temperature)
    terms = {"rec": rec}
    if betas.warmup:
        return rec, {k: v.detach() for k, v in terms.items()}, lam.detach()

    terms["dist"] = losses.distance_loss(s1, s2, lam, cfg.margin)
    terms["spar"] = losses.sparsity_loss(s)
    terms["reg"] = losses.oracle_balance_loss(lam)
    total = rec + betas.beta1 * (cfg.w_dist * terms["dist"] + cfg.w_spar * terms["spar"]) + betas.beta3 * cfg.w_reg * terms["reg"]
    if betas.beta2 > 0 and cfg.w_cons > 0:
        terms["cons"] = consistency_term(core, s1, s2, cfg.cons_swaps)
        total = total + betas.beta2 * cfg.w_cons * terms["cons"]
    return total, {k: v.detach() for k, v in terms.items()}, lam.detach()


def consistency_term(model: DisentangleAE, s1: Tensor, s2: Tensor, n_swaps: int) -> Tensor:
    """L_cons = sum_i ||p_i(f(g(s_i^1 + sum_{j!=i} s_j^2))) - s_i^1||^2, averaged over the batch.

    With n_swaps = k every subspace is swapped (the exact sum); with fewer, each pair swaps n_swaps subspaces
    drawn at random and the mean is scaled by k, an unbiased estimate at n_swaps/k of the decoder cost.
    """
    b, k, _ = s1.shape
    if n_swaps >= k:
        idx = torch.arange(k, device=s1.device).repeat(b)
    else:
        idx = torch.randint(0, k, (b * n_swaps,), device=s1.device)
    rows = torch.arange(b, device=s1.device).repeat_interleave(n_swaps if n_swaps < k else k)
    z_swap = losses.swap_subspace(s1[rows], s2[rows], idx)
    s_back = model.projectors.project_one(model.encoder(model.decoder(z_swap)), idx)
    return k * losses.consistency_loss(s_back, s1[rows, idx])


@torch.no_grad()
def latent_traversal(model: DisentangleAE, xa: Tensor, xb: Tensor, steps: int = 8) -> Tensor:
    """Figure-3 grid: row i interpolates subspace i from image a to image b, the others held at a's values.

    xa, xb: (3, S, S). Returns (k * steps, 3, S, S) images, row-major.
    """
    s = model.subspaces(torch.stack([xa, xb]))
    sa, sb = s[0], s[1]
    t = torch.linspace(0, 1, steps, device=s.device).view(steps, 1)
    rows = []
    for i in range(model.k):
        lat = sa.unsqueeze(0).repeat(steps, 1, 1)
        lat[:, i] = (1 - t) * sa[i] + t * sb[i]
        rows.append(model.decode(lat))
    return torch.cat(rows)
