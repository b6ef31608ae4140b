"""KMeans++ and the nearest-neighbour labelling in PyTorch, for `bench/gpu_check.py` on an accelerator without cuML
(tested on the CPU against the package's sklearn path in tests/test_bench.py). Not part of the product: the pipeline
clusters with cuML on a GPU and sklearn / hdbscan on the CPU."""

from __future__ import annotations

import numpy as np


def kmeans_torch(x: np.ndarray, n_clusters: int, seed: int, device: str = "cpu", n_init: int = 10,
                 max_iter: int = 300, tol: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """k-means++ seeding then Lloyd's iterations, best of `n_init` by inertia (sklearn's algorithm).

    k-means++: the first centre uniformly, each next one with probability proportional to D(x)^2, the squared
    distance to the nearest centre chosen so far. Lloyd: assign to the nearest centre, move each centre to its
    points' mean, until the centres move less than tol * mean feature variance. Returns (labels (N,), centres)."""
    import torch

    dev = torch.device(device)
    pts = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=dev)
    n = len(pts)
    gen = torch.Generator(device=dev).manual_seed(seed)
    shift_tol = tol * float(pts.var(0).mean())
    best = (float("inf"), None, None)
    for _ in range(n_init):
        centres = pts[torch.randint(n, (1,), generator=gen, device=dev)]
        d2 = torch.cdist(pts, centres).squeeze(1) ** 2
        for _ in range(1, n_clusters):
            probs = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full_like(d2, 1.0 / n)
            nxt = pts[torch.multinomial(probs, 1, generator=gen)]
            centres = torch.cat([centres, nxt])
            d2 = torch.minimum(d2, (torch.cdist(pts, nxt).squeeze(1)) ** 2)
        for _ in range(max_iter):
            labels = torch.cdist(pts, centres).argmin(1)
            sums = torch.zeros_like(centres).index_add_(0, labels, pts)
            counts = torch.bincount(labels, minlength=n_clusters).unsqueeze(1).to(pts.dtype)
            moved = torch.where(counts > 0, sums / counts.clamp_min(1), centres)  # an empty cluster stays put
            shift = float(((moved - centres) ** 2).sum())
            centres = moved
            if shift <= shift_tol:
                break
        dist = torch.cdist(pts, centres)
        labels = dist.argmin(1)
        inertia = float((dist.gather(1, labels[:, None]) ** 2).sum())
        if inertia < best[0]:
            best = (inertia, labels, centres)
    return best[1].cpu().numpy().astype(np.int64), best[2].cpu().numpy()


def label_by_neighbours_torch(fit_x: np.ndarray, fit_labels: np.ndarray, x: np.ndarray, k: int = 10,
                              device: str = "cpu", chunk: int = 8192) -> np.ndarray:
    """label_by_neighbours by brute force on `device`: the k nearest fitted points of each point of x (exact, in
    chunks of x), a majority vote with ties to the nearest neighbour's label."""
    import torch

    dev = torch.device(device)
    fx = torch.as_tensor(np.ascontiguousarray(fit_x, dtype=np.float32), device=dev)
    fl = torch.as_tensor(np.asarray(fit_labels, dtype=np.int64) + 1, device=dev)  # noise (-1) -> 0
    k = min(k, len(fx))
    n_labels = int(fl.max()) + 1
    out = []
    for start in range(0, len(x), chunk):
        q = torch.as_tensor(np.ascontiguousarray(x[start:start + chunk], dtype=np.float32), device=dev)
        nn = torch.cdist(q, fx).topk(k, largest=False).indices  # sorted: nn[:, 0] is the nearest
        votes = fl[nn]
        counts = torch.zeros(len(q), n_labels, dtype=torch.int32, device=dev).scatter_add_(
            1, votes, torch.ones_like(votes, dtype=torch.int32))
        top = counts.max(1, keepdim=True).values
        tied = (counts == top).sum(1) > 1
        out.append(torch.where(tied, votes[:, 0], counts.argmax(1)) - 1)
    return torch.cat(out).cpu().numpy().astype(np.int64)
