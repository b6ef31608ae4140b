"""The principal-task oracle and the Detaux losses (docs/method.md, Eq. 2-10), one small function each.

Shapes: s1, s2 are the pair's subspace projections (B, k, d); lam is the oracle's weight vector (B, k).

One loss scale: every term is a *mean* (the reductions of the authors' code, models/dis_basic_model.py), so the
published multipliers (w_dist = w_spar = 0.1, w_cons = 100, w_reg ~ 1e-4 x 1e2) keep the balance they had in the
authors' runs. Each docstring states its reduction.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


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
    """L_rec = mean over every pixel value of (x - g(sum_i p_i(f(x))))^2 (MSE, the authors' reduction)."""
    return (x - x_rec).pow(2).mean()


PULLS = ("all", "same", "principal", "alpha")


def pull_weights(lam: Tensor, same: Tensor, principal: int, pulls: str) -> Tensor:
    """w[n, i]: which (pair, subspace) L_dist pulls together, (B, k).

    all (the paper): every subspace but the oracle's, w = 1 - lam.
    same: as `all` for pairs sharing the principal label; pairs whose labels differ are not pulled anywhere.
    principal: a pair sharing its label is pulled in alpha only; a pair whose labels differ in every subspace but
      alpha. With relative distances a pull is a contrastive statement about what a subspace encodes ("these two
      are closer than a typical pair"): pulling same-label pairs in the other subspaces teaches them the principal
      label (measured: it leaks back into every subspace once L_dist is on), pulling differing pairs there teaches
      them to ignore it, and pulling same-label pairs in alpha teaches alpha to ignore the nuisance factors.
    alpha: a pair sharing its label is pulled in alpha only; a pair whose labels differ is pulled nowhere (the
      other subspaces are left to the reconstruction, the sparsity and consistency terms, and the adversary).
    """
    if pulls == "all":
        return 1.0 - lam
    same_f = same.view(-1, 1).to(lam.dtype)
    if pulls == "same":
        return (1.0 - lam) * same_f
    if pulls in ("principal", "alpha"):
        is_alpha = torch.zeros(lam.shape[1], dtype=lam.dtype, device=lam.device)
        is_alpha[principal] = 1.0
        return same_f * is_alpha + (0.0 if pulls == "alpha" else (1.0 - same_f) * (1.0 - is_alpha))
    raise ValueError(f"unknown pulls '{pulls}'; one of {', '.join(PULLS)}")


def distance_loss(s1: Tensor, s2: Tensor, lam: Tensor, margin: float, pull: Tensor | None = None,
                  relative: bool = False) -> Tensor:
    """L_dist = mean over (n, i) of  w_ni D_i + lam_i max(m - delta_i, 0)^2,  delta_i = sqrt(D_i).

    Pulls the pair together where w (`pull_weights`; default the paper's 1 - lam: every subspace but the
    oracle's) says, and pushes it at least m apart in the oracle's subspace (Eq. 4).
    relative=True: D_i is divided by the subspace's mean pairwise squared distance over the batch (both images of
    every pair), so m is in units of a typical pair's distance and the term cannot be lowered by shrinking the
    latent (the absolute form shrinks it: measured total variance 0.002-0.2).
    lam is the oracle's decision and is not differentiated here (L_reg is where the oracle gets its gradient).
    """
    lam = lam.detach()
    d2 = subspace_sq_distances(s1, s2)
    if relative:
        d2 = d2 / mean_pairwise_sq_distance(torch.cat([s1, s2], dim=0)).clamp_min(1e-8)
    delta = torch.sqrt(d2 + 1e-12)
    w = 1.0 - lam if pull is None else pull.detach()
    return (w * d2 + lam * torch.relu(margin - delta) ** 2).mean()


def sparsity_loss(s: Tensor) -> Tensor:
    """L_spar = sum over subspaces i, mean over images and coordinates c, of |s_i[c] * sum_{j != i} s_j[c]|.

    Zero iff the subspaces use disjoint coordinates."""
    others = s.sum(dim=1, keepdim=True) - s
    return (s * others).abs().sum(dim=1).mean()


def consistency_loss(s_reencoded: Tensor, s_target: Tensor) -> Tensor:
    """L_cons = mean over swapped couples and coordinates of (p_i(f(x^_i)) - s_i^1)^2 (MSE), (B, d) inputs.

    x^_i = g(s_i^1 + sum_{j != i} s_j^2): subspace i of x1 swapped into x2, decoded and re-encoded; projector i
    must give s_i^1 back. Absolute: shrinking a subspace lowers it (docs/studies/2026-12-02-dataset-suite.md, 8)."""
    return (s_reencoded - s_target).pow(2).mean()


def oracle_balance_loss(lam: Tensor) -> Tensor:
    """L_reg = mean_j (mean_n lam[n, j] - 1/k)^2: the oracle's choices spread evenly over the k subspaces.

    lam must carry its gradient (the authors' code detached it, which made L_reg a constant)."""
    k = lam.shape[-1]
    return ((lam.mean(dim=0) - 1.0 / k) ** 2).mean()


def principal_loss(logits: Tensor, y1: Tensor, y2: Tensor) -> Tensor:
    """L_prin = mean cross-entropy of a linear classifier on s_alpha over both images of every pair.

    Not in the paper: stage 1 knows the principal labels (the oracle compares them), and this is their most
    direct use. Measured: without it the encoder does not encode the principal factor at all at CPU budgets."""
    return F.cross_entropy(logits, torch.cat([y1, y2]))


def adversary_loss(logits: Tensor, y1: Tensor, y2: Tensor) -> Tensor:
    """Classifier side of L_adv: mean over the subspaces j != alpha and both images of the cross-entropy of a
    classifier predicting the principal label from s_j (detached), logits (k - 1, 2B, C)."""
    y = torch.cat([y1, y2]).repeat(logits.shape[0])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y)


def confusion_loss(logits: Tensor) -> Tensor:
    """Encoder side of L_adv (domain confusion, Tzeng et al. 2015): mean cross-entropy between the uniform
    distribution and the frozen classifiers' prediction from s_j, minimal (log C) when s_j says nothing about the
    principal label. Unlike a reversed gradient, it cannot be lowered by making s_j confidently misleading
    (measured: with reversal the classifiers went below chance, 3.1 nats vs log 8 = 2.1, and s_j kept the factor)."""
    return -F.log_softmax(logits, dim=-1).mean()


def label_dependence(s: Tensor, y: Tensor, n_classes: int, bandwidths: tuple[float, ...] = (1.0, 0.1, 0.01)) -> Tensor:
    """L_dep = mean over the subspaces j of relu(HSIC_u(K_j, L)) / sqrt(HSIC_u(L, L)): the kernel dependence
    (Gretton et al. 2005) between s_j and the principal label y, 0 in expectation when they are independent.

        K_j[a, b] = mean_f exp(-||s_j^a - s_j^b||^2 / (f * m_j)),  m_j = mean_{a', b'} ||s_j^a' - s_j^b'||^2,
        L[a, b] = [y_a = y_b],  f in `bandwidths`,  HSIC_u the unbiased estimator (Song et al. 2012, `hsic_unbiased`)

    Ours, beside the adversary: a trained adversary can be confused while a fresh kNN probe still reads the label
    from s_j (measured on the two-factor toy of tests/disentangle/test_scorecard.py); a characteristic kernel asks
    every classifier at once. Several bandwidths, so that a label written as small offsets inside wide clusters of
    another factor counts too. The bandwidths follow the subspace's own spread m_j (not detached): K_j, and the term,
    do not change when s_j is scaled. Unbiased, because the usual (biased) estimator is positive for independent
    variables and only a constant subspace brings it to 0: minimised, it collapsed every nuisance subspace of
    `shapes`, `sprites` and `colour_digits` (docs/studies/2026-12-06-label-dependence.md). s: (n, m, d) for m
    subspaces, y: (n,), n >= 4."""
    d2 = (s.unsqueeze(1) - s.unsqueeze(0)).pow(2).sum(-1).permute(2, 0, 1)  # (m, n, n)
    m = d2.mean(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    k = torch.stack([torch.exp(-d2 / (f * m)) for f in bandwidths]).mean(0)
    onehot = F.one_hot(y, n_classes).to(s.dtype)
    lab = onehot @ onehot.T
    return (torch.relu(hsic_unbiased(k, lab)) / hsic_unbiased(lab, lab).clamp_min(1e-12).sqrt()).mean()


def hsic_unbiased(k: Tensor, l: Tensor) -> Tensor:
    """The unbiased HSIC estimator (Song et al. 2012) of kernels k, l (..., n, n), n >= 4, with K~, L~ their
    diagonals set to 0:

        HSIC_u = [tr(K~ L~) + 1'K~1 1'L~1 / ((n - 1)(n - 2)) - 2 / (n - 2) 1'K~ L~1] / (n (n - 3))"""
    n = k.shape[-1]
    off = 1 - torch.eye(n, dtype=k.dtype, device=k.device)
    kt, lt = k * off, l * off
    trace = (kt * lt).sum(dim=(-1, -2))
    sums = kt.sum(dim=(-1, -2)) * lt.sum(dim=(-1, -2)) / ((n - 1) * (n - 2))
    cross = 2.0 / (n - 2) * (kt.sum(-1) * lt.sum(-1)).sum(-1)
    return (trace + sums - cross) / (n * (n - 3))


def spread_floor_loss(s: Tensor, alpha: int, rho: float) -> Tensor:
    """L_floor = mean over i != alpha of relu(rho sg(w_alpha) - w_i)^2 / (rho sg(w_alpha))^2, w_i = sqrt(sum_c Var_batch(s_i[c])).

    Ours: zero once every other subspace is at least rho times as wide as alpha (alpha's width detached), and free
    of the latent's scale. The confusion term is minimal for a constant subspace, and L_cons and L_spar are lowered
    by shrinking one; without a floor a subspace the decoder can do without is shrunk to a constant
    (docs/studies/2026-12-04-spread-floor.md, docs/studies/2026-12-05-nuisance-collapse.md). s: (B, k, d)."""
    width = (mean_pairwise_sq_distance(s) / 2).add(1e-12).sqrt()  # (k,): mean_pair D = 2 sum_c Var(s_i[c])
    target = rho * width[alpha].detach()
    others = torch.cat([width[:alpha], width[alpha + 1:]])
    return (torch.relu(target - others) / target.clamp_min(1e-8)).pow(2).mean()


def swap_subspace(s1: Tensor, s2: Tensor, i: Tensor) -> Tensor:
    """Latent sum of s_i^1 + sum_{j != i} s_j^2 for a per-row subspace index i (B,): (B, d)."""
    rows = torch.arange(s1.shape[0], device=s1.device)
    return s2.sum(dim=1) - s2[rows, i] + s1[rows, i]
