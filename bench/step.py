"""Stage-1 training step: ours vs a reference written the way the authors' public code computes it.

Reference: k projector MLPs in a Python loop (nn.ModuleList), oracle / L_dist / L_spar as loops over subspaces,
and L_cons built from all k*bs swapped latents of which a random 2*bs subset is decoded, re-encoded and projected
by a loop over projectors. Ours: detaux_ray.disentangle.objective.detaux_loss (all k projectors as one batched einsum,
vectorised terms, channels_last). Both start from the same weights, see the same batches and the same swapped
(pair, subspace) couples; the script asserts they compute the same loss (relative 1e-5) before timing.

Timing alternates blocks of steps of each (forward, backward, AdamW step) so machine load hits both alike, and
reports pairs per second and the ratio. The last output line is a JSON object of the figures.

    python bench/step.py                      # 32x32 and 64x64, k=10, d=10, batch 32
    python bench/step.py --compile            # ours under torch.compile
    python bench/step.py --device cuda --amp bf16
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from detaux_ray.config import DisentangleConfig  # noqa: E402
from detaux_ray.data.shapes import N_COMBINATIONS, ShapesRenderer  # noqa: E402
from detaux_ray.disentangle.objective import Betas, detaux_loss  # noqa: E402
from detaux_ray.disentangle.models import DisentangleAE  # noqa: E402
from detaux_ray.tensors import autocast, to_device, to_float_images  # noqa: E402


class ReferenceAE(nn.Module):
    """The authors' layout: the same encoder and decoder, k separate projector MLPs."""

    def __init__(self, ours: DisentangleAE):
        super().__init__()
        self.k = ours.k
        self.encoder = copy.deepcopy(ours.encoder)
        self.decoder = copy.deepcopy(ours.decoder)
        d = ours.latent_dim
        self.projectors = nn.ModuleList()
        p = ours.projectors
        for i in range(ours.k):
            mlp = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
            with torch.no_grad():  # einsum weights are (in, out); nn.Linear's are (out, in)
                mlp[0].weight.copy_(p.w1[i].T)
                mlp[0].bias.copy_(p.b1[i])
                mlp[2].weight.copy_(p.w2[i].T)
                mlp[2].bias.copy_(p.b2[i])
            self.projectors.append(mlp)


def reference_loss(m: ReferenceAE, x1, x2, same, betas: Betas, cfg: DisentangleConfig, swaps) -> torch.Tensor:
    k, alpha = m.k, cfg.principal_subspace
    x = torch.cat([x1, x2])
    z = m.encoder(x)
    s = torch.stack([p(z) for p in m.projectors], dim=1)
    rec = m.decoder(s.sum(1))
    l_rec = (x - rec).pow(2).mean()
    b = x1.shape[0]
    s1, s2 = s[:b], s[b:]
    dists, logits = [], []
    for i in range(k):
        d_i = (s1[:, i] - s2[:, i]).pow(2).sum(-1)
        both = torch.cat([s1[:, i], s2[:, i]])
        norm_i = (2.0 * (both - both.mean(0)).pow(2).sum(-1).mean()).clamp_min(1e-8)
        dists.append(d_i)
        logits.append(d_i / norm_i / cfg.oracle_temperature)
    logits = torch.stack(logits, 1)
    mask = torch.zeros(k, dtype=torch.bool, device=x.device)
    mask[alpha] = True
    soft = torch.softmax(logits.masked_fill(mask, float("-inf")), -1)
    lam = torch.where(same.view(b, 1), soft, mask.float().expand(b, k))
    lam_d = lam.detach()
    l_dist = 0.0
    for i in range(k):
        delta = torch.sqrt(dists[i] + 1e-12)
        l_dist = l_dist + (1 - lam_d[:, i]) * dists[i] + lam_d[:, i] * torch.relu(cfg.margin - delta) ** 2
    l_dist = l_dist.mean() / k  # mean over (pair, subspace)
    l_spar = 0.0
    total_s = s.sum(1)
    for i in range(k):
        l_spar = l_spar + (s[:, i] * (total_s - s[:, i])).abs()
    l_spar = l_spar.mean()  # summed over subspaces, mean over images and coordinates
    l_reg = ((lam.mean(0) - 1.0 / k) ** 2).mean()
    # L_cons: all k*bs swapped latents, then the chosen subset decoded, re-encoded, projected by a loop.
    rows, idx = swaps
    total2 = s2.sum(1)
    swapped = torch.cat([total2 - s2[:, i] + s1[:, i] for i in range(k)])  # row i*b + n
    z_hat = m.encoder(m.decoder(swapped[idx * b + rows]))
    s_back = torch.zeros_like(z_hat)
    for i in range(k):
        sel = idx == i
        s_back = s_back.index_put((sel.nonzero(as_tuple=True)[0],), m.projectors[i](z_hat[sel]))
    l_cons = (s_back - s1[rows, idx]).pow(2).mean()
    return (l_rec + betas.beta1 * (cfg.w_dist * l_dist + cfg.w_spar * l_spar) + betas.beta3 * cfg.w_reg * l_reg
            + betas.beta2 * cfg.w_cons * l_cons)


def bench_size(size: int, args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = DisentangleConfig(k=args.k, latent_dim=args.d, batch_size=args.batch, variant="paper")  # no principal head
    betas = Betas(1.0, 1.0, 0.5)  # every term on (after the warm-up)
    ours = DisentangleAE(size, args.k, args.d)
    ref = ReferenceAE(ours).to(device)
    ours = ours.to(device, memory_format=torch.channels_last)
    rng = np.random.default_rng(0)
    n_batches = 4
    render = ShapesRenderer(size=size, noise=0.15)
    imgs = torch.from_numpy(render.render(rng.choice(N_COMBINATIONS, 2 * args.batch * n_batches, replace=False)))
    batches = []
    for i in range(n_batches):
        xs = imgs[2 * args.batch * i: 2 * args.batch * (i + 1)]
        same = torch.from_numpy(rng.random(args.batch) < 0.5).to(device)
        rows = torch.from_numpy(rng.integers(0, args.batch, 2 * args.batch)).to(device)
        idx = torch.from_numpy(rng.integers(0, args.k, 2 * args.batch)).to(device)
        batches.append((xs[: args.batch], xs[args.batch:], same, (rows, idx)))

    def prep(x):
        return to_float_images(to_device(x, device))

    amp = autocast(device, args.amp)
    ours_loss = torch.compile(detaux_loss) if args.compile else detaux_loss

    # Same weights, same batch, same swaps: the same loss.
    x1, x2, same, swaps = batches[0]
    with torch.no_grad():
        a = detaux_loss(ours, prep(x1), prep(x2), same, betas, cfg, swaps)[0].item()
        b = reference_loss(ref, prep(x1), prep(x2), same, betas, cfg, swaps).item()
    if abs(a - b) > 1e-5 * max(1.0, abs(a)):
        raise AssertionError(f"ours and the reference disagree at {size}px: {a} vs {b}")

    opt_o = torch.optim.AdamW(ours.parameters(), lr=5e-4, fused=True)  # as stage 1 trains (objective.optimizer)
    opt_r = torch.optim.AdamW(ref.parameters(), lr=5e-4)  # the authors': one update per parameter

    def step_ours(i):
        x1, x2, same, swaps = batches[i % n_batches]
        with amp:
            loss = ours_loss(ours, prep(x1), prep(x2), same, betas, cfg, swaps)[0]
        opt_o.zero_grad(set_to_none=True)
        loss.backward()
        opt_o.step()

    def step_ref(i):
        x1, x2, same, swaps = batches[i % n_batches]
        with amp:
            loss = reference_loss(ref, prep(x1), prep(x2), same, betas, cfg, swaps)
        opt_r.zero_grad(set_to_none=True)
        loss.backward()
        opt_r.step()

    def timed(fn, n):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(n):
            fn(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / n

    for i in range(args.warmup):  # includes torch.compile's first compilation
        step_ours(i)
        step_ref(i)
    t_o, t_r = [], []
    for _ in range(args.rounds):
        t_o.append(timed(step_ours, args.steps))
        t_r.append(timed(step_ref, args.steps))
    ours_ps, ref_ps = args.batch / statistics.median(t_o), args.batch / statistics.median(t_r)
    return {"size": size, "ours_pairs_per_s": round(ours_ps, 1), "reference_pairs_per_s": round(ref_ps, 1),
            "ratio": round(ours_ps / ref_ps, 3), "loss_ours": a, "loss_reference": b}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--d", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10, help="steps per timed block")
    ap.add_argument("--rounds", type=int, default=5, help="alternating blocks per model")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", choices=["none", "bf16"], default="none")
    args = ap.parse_args()
    rows = []
    for size in args.size:
        r = bench_size(size, args)
        rows.append(r)
        print(f"{size}x{size}: ours {r['ours_pairs_per_s']} pairs/s, reference {r['reference_pairs_per_s']} pairs/s, "
              f"ratio {r['ratio']}x (loss {r['loss_ours']:.6g} vs {r['loss_reference']:.6g})", flush=True)
    print(json.dumps({"bench": "step", "results": rows, "k": args.k, "d": args.d, "batch": args.batch,
                      "compile": args.compile, "device": args.device, "amp": args.amp, "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                      "target_ratio": 2.0}))


if __name__ == "__main__":
    main()
