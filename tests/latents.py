"""Latents with known factors, shared by the discovery tests and the discovery bench's test."""

import numpy as np


def ring_factor(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(u (n, 3), level (n,)): a 6-level factor on a ring (radius 1.5, turned 10 degrees; like six hues) in
    directions (0, 1), spread 0.25 around each level, and a uniform factor along 2. On direction 0 alone neighbouring
    levels are 0.45-0.55 apart and overlap; in the plane they stand 1.5 apart. Not two independent factors (a square's
    corners would be), so no rotation of the plane puts the levels on one axis."""
    rng = np.random.default_rng(seed)
    level = rng.integers(0, 6, n)
    t = np.deg2rad(10.0 + 60.0 * level)
    u = np.column_stack([1.5 * np.cos(t), 1.5 * np.sin(t)]) + 0.25 * rng.standard_normal((n, 2))
    return np.column_stack([u, rng.uniform(-1.7, 1.7, n)]), level
