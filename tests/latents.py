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


def oblique_factor(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(u (n, 3), level (n,)): a 6-level factor whose levels lie 1.0 apart (spread 0.12) along a line turned 35 degrees
    in directions (0, 1), a uniform factor (width 5) across it in the same plane, and a uniform factor along 2. On
    direction 0 alone the levels are blurred by the factor across them (a Gaussian mixture's BIC counts 3 there);
    along the line they stand apart."""
    rng = np.random.default_rng(seed)
    level = rng.integers(0, 6, n)
    along, across = (level - 2.5) + 0.12 * rng.standard_normal(n), rng.uniform(-2.5, 2.5, n)
    a = np.deg2rad(35.0)
    plane = np.column_stack([along * np.cos(a) - across * np.sin(a), along * np.sin(a) + across * np.cos(a)])
    return np.column_stack([plane, rng.uniform(-1.7, 1.7, n)]), level


def as_subspaces(u: np.ndarray) -> np.ndarray:
    """A stage-1 latent s (n, 3, 3) around a factor latent u (n, 3): alpha (subspace 0) standard normal noise,
    u's directions (0, 1) in subspace 1 and direction 2 in subspace 2."""
    n = len(u)
    s = np.zeros((n, 3, 3))
    s[:, 0] = np.random.default_rng(1).standard_normal((n, 3))
    s[:, 1, :2], s[:, 2, 0] = u[:, :2], u[:, 2]
    return s
