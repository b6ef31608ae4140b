"""Stage 1 core (no Ray): beta schedule, the full Detaux objective for one batch of pairs, latent traversals.

    L = L_rec + w_prin L_prin + L_adv + w_adv L_conf + beta1 (w_dist L_dist + w_spar L_spar) + beta2 w_cons L_cons + beta3 w_reg L_reg
        [+ w_dep L_dep when w_dependence > 0; + L_floor after the warm-up when spread_floor > 0; L_conf only after
        it when confusion_after_warmup]

(Eq. 2 of the paper, plus ours, which variant=paper switches off: L_prin, the principal classifier on s_alpha; the
adversary L_adv / L_conf; L_dep, the kernel dependence of the other subspaces on the principal label; L_floor, the
floor on the other subspaces' width.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from . import losses
from ..config import DisentangleConfig
from ..tensors import to_float_images
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
    model: DisentangleAE, x1: Tensor, x2: Tensor, same: Tensor, betas: Betas, cfg: DisentangleConfig,
    swaps: tuple[Tensor, Tensor] | None = None, y1: Tensor | None = None, y2: Tensor | None = None,
    xu: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """Total loss for a batch of pairs, its terms (detached) and the oracle weights lam (B, k).

    x1, x2: float images (B, 3, S, S), or uint8 (B, S, S, 3) as stored (converted here, so that a compiled step
    fuses the conversion); same: bool (B,), True when the pair shares its principal label.
    y1, y2: the pair's principal labels (B,), needed when the principal head is on (w_principal > 0); L_prin
    is on from the first step (the warm-up trains L_rec and L_prin).
    swaps: optional (rows, subspaces) for L_cons instead of drawing them (benchmarks compare steps on it).
    xu: images without a principal label (U, ...), same dtype as x1 (data.labelled_frac < 1): they enter the
    label-free terms, L_rec (the mean over all 2B + U images) and L_spar, and no other, and their s_alpha is
    detached (alpha learns from the labelled images only).
    `model` may be wrapped in DDP; the decoder and the re-encoding are reached through `.module`.
    """
    core: DisentangleAE = getattr(model, "module", model)
    x = torch.cat([x1, x2] if xu is None else [x1, x2, xu], dim=0)
    if x.dtype == torch.uint8:
        x = to_float_images(x)
    s_all = model(x, decode=False)
    b = x1.shape[0]
    s = s_all[: 2 * b]  # the pairs' latents: every term that reads a label or a pair
    if xu is not None:
        # The unlabelled images reach the decoder through every subspace but train alpha's encoder through none:
        # s_alpha learns from labels alone. Measured at 1% labels on shapes: with their gradient, f_alpha carried the
        # whole reconstruction (wall hue 0.63 in alpha) and every other subspace died.
        a = cfg.principal_subspace
        su = s_all[2 * b:]
        s_all = torch.cat([s, torch.cat([su[:, :a], su[:, a:a + 1].detach(), su[:, a + 1:]], dim=1)])
    s1, s2 = s[:b], s[b:]
    with_cons = not betas.warmup and betas.beta2 > 0 and cfg.w_cons > 0
    if with_cons:
        # One decoder call for the reconstructions and the swapped latents of L_cons (fewer, larger kernels).
        rows, idx = swaps if swaps is not None else swap_plan(b, core.k, cfg.cons_swaps, s.device, cfg.cons_fraction)
        decoded = core.decoder(torch.cat([s_all.sum(dim=1), losses.swap_subspace(s1[rows], s2[rows], idx)]))
        x_rec, x_swap = decoded[: len(x)], decoded[len(x):]
    else:
        x_rec = core.decode(s_all)
    rec = losses.reconstruction_loss(x, x_rec)
    lam = losses.oracle_weights(s1, s2, same, cfg.principal_subspace, cfg.oracle_temperature)
    w_principal, pulls, relative = cfg.formulation()
    terms = {"rec": rec}
    total = rec
    if w_principal > 0:
        if y1 is None or y2 is None or core.principal_head is None:
            raise ValueError("disentangle.w_principal > 0 needs the pair's principal labels and a model with a principal head")
        # From the first step, warm-up included (measured: switched on with beta1 instead, it arrives with the
        # other latent terms, the reconstruction jumps back to the mean image and the head stays at chance).
        terms["prin"] = losses.principal_loss(core.principal_head(s[:, cfg.principal_subspace]), y1, y2)
        total = total + w_principal * terms["prin"]
    others = [i for i in range(core.k) if i != cfg.principal_subspace]
    if cfg.w_adversary > 0 and w_principal > 0 and core.adversary is not None:
        s_other = s[:, others]
        terms["adv"] = losses.adversary_loss(core.adversary(s_other.detach()), y1, y2)  # the classifiers learn
        total = total + terms["adv"]
        if not (betas.warmup and cfg.confusion_after_warmup):
            terms["confusion"] = losses.confusion_loss(core.adversary(s_other, frozen=True))  # the subspaces unlearn
            total = total + cfg.w_adversary * terms["confusion"]
    if cfg.w_dependence > 0 and w_principal > 0:
        terms["dep"] = losses.label_dependence(s[:, others], torch.cat([y1, y2]), core.principal_head[-1].out_features)
        total = total + cfg.w_dependence * terms["dep"]
    if betas.warmup:
        return total, {k: v.detach() for k, v in terms.items()}, lam.detach()

    pull = losses.pull_weights(lam.detach(), same, cfg.principal_subspace, pulls)
    terms["dist"] = losses.distance_loss(s1, s2, lam, cfg.margin, pull, relative)
    terms["spar"] = losses.sparsity_loss(s_all)
    terms["reg"] = losses.oracle_balance_loss(lam)
    total = total + betas.beta1 * (cfg.w_dist * terms["dist"] + cfg.w_spar * terms["spar"]) + betas.beta3 * cfg.w_reg * terms["reg"]
    if cfg.spread_floor > 0 and cfg.variant != "paper":
        # At full weight from the end of the warm-up, not ramped with beta1: the terms that shrink a subspace act
        # from there on (measured on `digits`: ramped, the floor came too late); not in the warm-up, where nothing
        # anchors the latent's scale and the floor and alpha grew together (variance 1 -> 3,600 in three epochs).
        terms["floor"] = losses.spread_floor_loss(s, cfg.principal_subspace, cfg.spread_floor)
        total = total + terms["floor"]
    if with_cons:
        terms["cons"] = reencoded_consistency(core, x_swap, s1, rows, idx)
        total = total + betas.beta2 * cfg.w_cons * terms["cons"]
    return total, {k: v.detach() for k, v in terms.items()}, lam.detach()


def build_model(cfg: DisentangleConfig, image_size: int, n_principal: int) -> DisentangleAE:
    """The stage-1 autoencoder `cfg` asks for: the principal head when the formulation has one (n_principal classes),
    the adversary when w_adversary > 0, a private alpha encoder when alpha_encoder=private (never under
    variant=paper)."""
    head, adversary = cfg.formulation()[0] > 0, cfg.w_adversary > 0
    return DisentangleAE(image_size, cfg.k, cfg.latent_dim, cfg.arch, n_principal=n_principal if head else 0,
                         n_adversary=adversary, adversary_hidden=cfg.adversary_hidden,
                         alpha_encoder="shared" if cfg.variant == "paper" else cfg.alpha_encoder, alpha=cfg.principal_subspace)


def optimizer(model: DisentangleAE, cfg: DisentangleConfig, fused: bool = True) -> torch.optim.AdamW:
    """AdamW over the autoencoder (and its principal head) at cfg.lr; the adversary, when there is one, in a group of
    its own at cfg.lr * cfg.adversary_lr_scale (with scale 1, the same steps as one group).

    The adversary must keep up with an encoder that moves to hide the principal: measured, a linear adversary
    trained at the encoder's rate stayed near chance (cross-entropy 2.04 against log 8 = 2.08) while a classifier
    fitted afterwards on the same subspaces reached 1.5 (linear) and 0.5 (one hidden layer).

    fused: one kernel per group updates every parameter; the per-parameter loop was a third of a step's operator
    calls (bench/step_profile.py). fused=False gives the multi-tensor (foreach) form, which torch.compile can trace
    into one generated kernel (the fused kernel is opaque to it): see `compiled_step`.
    """
    adversary = list(model.adversary.parameters()) if model.adversary is not None else []
    ids = {id(p) for p in adversary}
    groups = [{"params": [p for p in model.parameters() if id(p) not in ids]}]
    if adversary:
        groups.append({"params": adversary, "lr": cfg.lr * cfg.adversary_lr_scale})
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **({"fused": True} if fused else {"foreach": True}))


def optimizer_step(opt: torch.optim.Optimizer, loss: Tensor, step: Callable[[], object] | None = None) -> None:
    """One update: backward, then `step` (default opt.step; a compiled one from `compiled_step`)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    (step or opt.step)()


def compiled_step(opt: torch.optim.Optimizer, mode: str) -> tuple[Callable[..., tuple], Callable[[], object]]:
    """(loss function, optimiser update) of stage 1's step under resources.compile=mode: `detaux_loss` and
    `opt.step` as they are for "none", else both through torch.compile (build `opt` with fused=False).

    The loss's graph covers the whole forward pass and every loss term (its backward is compiled with it); the
    update becomes one generated kernel over every parameter. Measured on the paper preset: the eager step's
    ~2,400 operator calls fall to 383 (bench/step_profile.py --set resources.compile=default)."""
    if mode == "none":
        return detaux_loss, opt.step
    return torch.compile(detaux_loss, mode=mode), torch.compile(opt.step, mode=mode)


def compiled_graphs() -> int:
    """Graphs torch.compile has built in this process: the warm-up's and the full objective's loss, the update
    (and their backward); a graph break or a recompilation adds more, each paid again at its first step."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def swap_plan(b: int, k: int, n_swaps: int, device, fraction: float = 1.0) -> tuple[Tensor, Tensor]:
    """(rows, subspaces) swapped for L_cons: every subspace of every pair when n_swaps >= k, else n_swaps
    subspaces per pair drawn at random (their mean is an unbiased estimate of the mean over all k).

    fraction < 1: only that share of the batch's pairs (drawn at random) is swapped, also unbiased; the swaps cost
    one decode and one encode each (measured: 65% of the step at 32 px with every pair swapped once)."""
    pairs = torch.arange(b, device=device)
    if fraction < 1.0:
        pairs = torch.randperm(b, device=device)[: max(1, round(fraction * b))].sort().values
    if n_swaps >= k:
        return pairs.repeat_interleave(k), torch.arange(k, device=device).repeat(len(pairs))
    return pairs.repeat_interleave(n_swaps), torch.randint(0, k, (len(pairs) * n_swaps,), device=device)


def consistency_term(model: DisentangleAE, s1: Tensor, s2: Tensor, n_swaps: int,
                     swaps: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """L_cons = mean over i, pairs and coordinates of (p_i(f(g(s_i^1 + sum_{j!=i} s_j^2))) - s_i^1)^2.

    With n_swaps = k every subspace is swapped (the exact sum); with fewer, see `swap_plan`.
    `swaps` = (rows, subspaces) gives the swapped (pair, subspace) couples explicitly.
    """
    b, k, _ = s1.shape
    rows, idx = swaps if swaps is not None else swap_plan(b, k, n_swaps, s1.device)
    x_swap = model.decoder(losses.swap_subspace(s1[rows], s2[rows], idx))
    return reencoded_consistency(model, x_swap, s1, rows, idx)


def reencoded_consistency(model: DisentangleAE, x_swap: Tensor, s1: Tensor, rows: Tensor, idx: Tensor) -> Tensor:
    """L_cons over the swapped couples, given the decoded swaps x^."""
    s_back = model.subspace(x_swap, idx)
    return losses.consistency_loss(s_back, s1[rows, idx])


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


def traversal_figure(grid: Tensor, k: int, alpha: int, path) -> None:
    """The latent-traversal grid as a PNG with its rows labelled: row i interpolates subspace i (alpha marked).

    grid: (k * steps, 3, S, S) floats in [0, 1], as `latent_traversal` returns them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = grid.shape[0] // k
    img = grid.detach().float().clamp(0, 1).cpu().view(k, steps, *grid.shape[1:]).permute(0, 3, 1, 4, 2)
    img = img.reshape(k * grid.shape[2], steps * grid.shape[3], 3).numpy()  # rows of images, side by side
    fig, ax = plt.subplots(figsize=(0.6 * steps + 1.6, 0.6 * k + 0.6))
    ax.imshow(img, interpolation="nearest")
    ax.set_yticks([(i + 0.5) * grid.shape[2] for i in range(k)],
                  [f"subspace {i}" + (" (alpha)" if i == alpha else "") for i in range(k)], fontsize=8)
    ax.set_xticks([])
    ax.set_title("each row moves one subspace from image a (left) to image b (right)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
