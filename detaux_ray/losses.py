"""The principal-task oracle and the five Detaux losses (METHOD.md, Eq. 2-10), one small function each.

Shapes: s1, s2 are the pair's subspace projections (B, k, d); lam is the oracle's weight vector (B, k).
Every loss returns a scalar averaged over the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor


def subspace_sq_distances(s1: Tensor, s2: Tensor) -> Tensor:
    """D[n, i] = ||s_i^1 - s_i^2||^2, (B, k)."""
    return (s1 - s2).pow(2).sum(dim=-1)


def mean_pairwise_sq_distance(s: Tensor) -> Tensor:
    """Per subspace, the mean of ||s_i^a - s_i^b||^2 over all ordered pairs (a, b) of the batch, (k,).

    Uses mean_{a,b} ||x_a - x_b||^2 = 2 mean_a ||x_a - mean(x)||^2, so it costs O(B), not O(B^2).
    """
    centred = s - s.mean(dim=0, keepdim=True)
    return 2.0 * centred.pow(2).sum(dim=-1).mean(dim=0)


def oracle_weights(s1: Tensor, s2: Tensor, same: Tensor, principal: int, temperature: float) -> Tensor:
    """Differentiable principal-task oracle O (Eq. 3), as a one-hot-like weight vector lam (B, k).

        lam = e_alpha                                            if y1 != y2
            = softmax_{i != alpha}( D_i / (T * mean_pair_D_i) )   otherwise

    D_i is the pair's squared distance in subspace i, normalised by the mean pairwise squared distance inside
    that subspace over the batch (both images of every pair); T is a very low temperature, so the softmax is the
    argmax of Eq. 3 with a gradient.
    """
    b, k, _ = s1.shape
    norm = mean_pairwise_sq_distance(torch.cat([s1, s2], dim=0)).clamp_min(1e-8)
    logits = subspace_sq_distances(s1, s2) / norm / temperature
    mask = torch.zeros(k, dtype=torch.bool, device=s1.device)
    mask[principal] = True
    soft = torch.softmax(logits.masked_fill(mask, float("-inf")), dim=-1)
    hard = mask.to(s1.dtype).expand(b, k)
    return torch.where(same.view(b, 1).bool(), soft, hard)


def reconstruction_loss(x: Tensor, x_rec: Tensor) -> Tensor:
    """L_rec = ||x - g(sum_i p_i(f(x)))||^2: squared error summed over each image's pixels, mean over the batch.

    Summed, not averaged, over pixels (the paper's "squared error"): per-pixel means make L_rec ~1000x smaller at
    32x32 and the latent terms then collapse every subspace to 0.
    """
    return (x - x_rec).pow(2).flatten(1).sum(dim=1).mean()


def distance_loss(s1: Tensor, s2: Tensor, lam: Tensor, margin: float) -> Tensor:
    """L_dist = sum_i (1 - lam_i) delta_i^2 + lam_i max(m - delta_i, 0)^2, delta_i = ||s_i^1 - s_i^2||.

    Pulls the pair together in every subspace but the oracle's and pushes it at least m apart there.
    lam is the oracle's decision and is not differentiated here (L_reg is where the oracle gets its gradient).
    """
    lam = lam.detach()
    d2 = subspace_sq_distances(s1, s2)
    delta = torch.sqrt(d2 + 1e-12)
    per_pair = ((1.0 - lam) * d2 + lam * torch.relu(margin - delta) ** 2).sum(dim=-1)
    return per_pair.mean()


def sparsity_loss(s: Tensor) -> Tensor:
    """L_spar = sum_i || s_i * sum_{j != i} s_j ||_1: zero iff the subspaces use disjoint coordinates."""
    others = s.sum(dim=1, keepdim=True) - s
    return (s * others).abs().sum(dim=(1, 2)).mean()


def consistency_loss(s_reencoded: Tensor, s_target: Tensor) -> Tensor:
    """L_cons term ||p_i(f(x^_i)) - s_i^1||^2 for the swapped subspace i of each row, (B, d) inputs.

    x^_i = g(s_i^1 + sum_{j != i} s_j^2): subspace i of x1 swapped into x2, decoded and re-encoded; projector i
    must give s_i^1 back. The caller sums over swapped subspaces (or scales a sample of them by k/n).
    """
    return (s_reencoded - s_target).pow(2).sum(dim=-1).mean()


def oracle_balance_loss(lam: Tensor) -> Tensor:
    """L_reg = sum_j (mean_n lam[n, j] - 1/k)^2: the oracle's choices spread evenly over the k subspaces.

    lam must carry its gradient (the authors' code detached it, which made L_reg a constant).
    """
    k = lam.shape[-1]
    return ((lam.mean(dim=0) - 1.0 / k) ** 2).sum()


def swap_subspace(s1: Tensor, s2: Tensor, i: Tensor) -> Tensor:
    """Latent sum of s_i^1 + sum_{j != i} s_j^2 for a per-row subspace index i (B,): (B, d)."""
    rows = torch.arange(s1.shape[0], device=s1.device)
    return s2.sum(dim=1) - s2[rows, i] + s1[rows, i]
