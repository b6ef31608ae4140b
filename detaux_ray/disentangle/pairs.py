"""Pair sampling from principal labels alone (no Ray): deterministic for (seed, epoch)."""

from __future__ import annotations

import numpy as np

from ..errors import DataError


def sample_pairs(labels: np.ndarray, n_pairs: int, p_differ: float, seed: int, epoch: int,
                 mode: str = "oracle_prob") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions (i1, i2) into `labels` and same (bool): with probability p_differ the two labels differ.

    i1 is uniform; i2 is uniform among the other images of i1's class (same) or among all images of other
    classes (differ). mode="random": i2 uniform over all images (what the authors' code ran; p_differ ignored).
    Returns int64, int64, bool arrays of length n_pairs.
    """
    labels = np.asarray(labels)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if len(classes) < 2:
        raise DataError(f"pairs need at least 2 principal classes, found {len(classes)} ({classes.tolist()})")
    n = len(labels)
    order = np.argsort(inverse, kind="stable")  # positions grouped by class
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)

    rng = np.random.default_rng([seed, epoch])
    i1 = rng.integers(0, n, size=n_pairs)
    differ = rng.random(n_pairs) < p_differ
    c = inverse[i1]
    u = rng.random(n_pairs)
    # Same class, excluding i1 itself where the class has another image.
    cnt = counts[c]
    r_same = np.floor(u * np.maximum(cnt - 1, 1)).astype(np.int64)
    pos_same = start[c] + r_same
    pos_same = np.where((cnt > 1) & (pos_same >= rank[i1]), pos_same + 1, pos_same)
    # Other classes: a position among the n - cnt others, skipping class c's block.
    r_diff = np.floor(u * (n - cnt)).astype(np.int64)
    pos_diff = np.where(r_diff < start[c], r_diff, r_diff + cnt)
    i2 = order[np.where(differ, pos_diff, pos_same)]
    if mode == "random":
        i2 = rng.integers(0, n, size=n_pairs)
    return i1.astype(np.int64), i2.astype(np.int64), labels[i1] == labels[i2]


def unlabelled_walk(unlabelled: np.ndarray, n_pairs: int, seed: int, epoch: int) -> np.ndarray:
    """The unlabelled image reconstructed beside each of an epoch's n_pairs pairs: `unlabelled` in a seeded order
    for (seed, epoch), cycled when there are fewer of them than pairs."""
    order = np.random.default_rng([seed, epoch, 3]).permutation(len(unlabelled))
    return unlabelled[order[np.arange(n_pairs) % len(order)]]
