"""Labelling every point after fitting HDBSCAN on a subsample: KD-tree neighbour vote vs hdbscan.approximate_predict.

Data: 10-d Gaussian blobs (10 centres) + 5% uniform noise, as in ../shared/notes/clustering.md. Fit on a seeded
subsample with min_cluster_size = 1% of it and min_samples = 10, then label all N points both ways in the same run.
Prints the timings, the ratio and the adjusted Rand index between the two labellings; the last line is JSON.

    python bench/label.py                 # N = 480,000, fit on 50,000 (the paper's 3D Shapes size)
    python bench/label.py --n 20000 --fit 5000   # smoke size
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from detaux_ray.discover.clustering import label_by_neighbours  # noqa: E402


def blobs(n: int, d: int = 10, centres: int = 10, noise_frac: float = 0.05, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.uniform(-10, 10, size=(centres, d))
    n_noise = int(noise_frac * n)
    x = c[rng.integers(0, centres, n - n_noise)] + rng.normal(0, 0.6, size=(n - n_noise, d))
    x = np.concatenate([x, rng.uniform(-12, 12, size=(n_noise, d))])
    return x[rng.permutation(n)].astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=480_000)
    ap.add_argument("--fit", type=int, default=50_000)
    ap.add_argument("--k", type=int, default=10, help="neighbours voting")
    args = ap.parse_args()
    import hdbscan

    x = blobs(args.n)
    fit_idx = np.sort(np.random.default_rng(1).choice(args.n, args.fit, replace=False))
    t0 = time.perf_counter()
    clf = hdbscan.HDBSCAN(min_cluster_size=max(2, args.fit // 100), min_samples=10, prediction_data=True)
    clf.fit(x[fit_idx])
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    approx, _ = hdbscan.approximate_predict(clf, x)
    t_approx = time.perf_counter() - t0
    t0 = time.perf_counter()
    knn = label_by_neighbours(x[fit_idx], clf.labels_.astype(np.int64), x, args.k)
    t_knn = time.perf_counter() - t0
    ari = adjusted_rand_score(approx, knn)
    figures = {
        "bench": "label", "n_points": args.n, "n_fit": args.fit, "dim": 10, "knn_k": args.k,
        "n_clusters": int(clf.labels_.max()) + 1, "fit_s": round(t_fit, 2),
        "approximate_predict_s": round(t_approx, 2), "knn_label_s": round(t_knn, 2),
        "speedup": round(t_approx / t_knn, 1), "ari_knn_vs_approximate": round(float(ari), 4),
        "target_knn_s": 20.0, "target_ari": 0.99,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    print(f"fit on {args.fit}: {t_fit:.1f}s, {figures['n_clusters']} clusters")
    print(f"approximate_predict on {args.n}: {t_approx:.1f}s | KD-tree vote (k={args.k}): {t_knn:.1f}s "
          f"({figures['speedup']}x) | ARI between them {ari:.4f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
