"""How much of the principal factor each subspace holds, read by a linear and by a one-hidden-layer classifier.

Input: the `.npz` files that `bench/stage1_study.py --embeddings` writes (final subspaces s (N, k, d), principal
labels). Each subspace is standardised and a classifier is fitted on a seeded 80% of the images, scored on the
other 20% as (accuracy - 1/C) / (1 - 1/C) (0 = chance, 1 = perfect), with its held-out cross-entropy. The stage-1
adversary is such a classifier trained during training, so a subspace where a classifier fitted afterwards does
much better than the adversary's own loss shows an adversary that did not keep up:

    python bench/subspace_probe.py /tmp/E0.npz /tmp/E1.npz --out bench/results/stage1/adversary_probe.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch


def probe(x: torch.Tensor, y: torch.Tensor, hidden: int, seed: int = 0, steps: int = 1500) -> dict:
    """Fit a classifier (linear, or one hidden ReLU layer) on 80% of (x, y); its chance-corrected score and
    cross-entropy on the other 20%."""
    n, c = len(y), int(y.max()) + 1
    perm = np.random.default_rng(seed).permutation(n)
    tr, te = torch.from_numpy(perm[: int(0.8 * n)]), torch.from_numpy(perm[int(0.8 * n):])
    x = (x - x[tr].mean(0)) / (x[tr].std(0) + 1e-5)
    torch.manual_seed(seed)
    d = x.shape[1]
    model = torch.nn.Linear(d, c) if not hidden else torch.nn.Sequential(
        torch.nn.Linear(d, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, c))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = tr[torch.randint(0, len(tr), (256,), generator=gen)]
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits = model(x[te])
        acc = (logits.argmax(1) == y[te]).float().mean().item()
        ce = torch.nn.functional.cross_entropy(logits, y[te]).item()
    return {"score": round((acc - 1 / c) / (1 - 1 / c), 3), "cross_entropy": round(ce, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("npz", nargs="+", help="embeddings saved by bench/stage1_study.py --embeddings")
    ap.add_argument("--hidden", type=int, default=32, help="hidden units of the non-linear probe")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = {"hidden": args.hidden, "runs": {}, "machine": platform.machine(), "date": time.strftime("%Y-%m-%d")}
    for path in args.npz:
        data = np.load(path)
        s, y = torch.from_numpy(data["s"]).float(), torch.from_numpy(data["principal"]).long()
        rows = []
        for i in range(s.shape[1]):
            row = {"subspace": i, "linear": probe(s[:, i], y, 0), "mlp": probe(s[:, i], y, args.hidden)}
            rows.append(row)
            print(f"{Path(path).name} subspace {i}: linear {row['linear']['score']:.3f} "
                  f"(CE {row['linear']['cross_entropy']:.2f}), hidden {row['mlp']['score']:.3f} "
                  f"(CE {row['mlp']['cross_entropy']:.2f})", flush=True)
        out["runs"][Path(path).name] = rows
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
