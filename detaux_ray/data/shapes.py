"""`shapes`: a deterministic, procedural renderer in the spirit of DeepMind's 3D Shapes.

Same six factors and value counts as 3D Shapes (480,000 combinations), indexed row-major with orientation
fastest, exactly like `3dshapes.h5`:

    index = (((((floor_hue*10 + wall_hue)*10 + object_hue)*8 + scale)*4 + shape)*15 + orientation)

A scene is a room corner (two walls of one hue, a floor of another) seen by a camera whose yaw is the
orientation factor, with one object (cube, cylinder, sphere, capsule) of a third hue standing in the middle.
Images are rendered on demand from their index (no files), 2x supersampled then box-filtered so that the
small steps in object scale stay visible at 32x32. Salt-and-pepper noise is seeded by the image index, so an
image is the same every time it is rendered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .formats import Loaded, heldout_hue_split, salt_and_pepper

FACTOR_NAMES: tuple[str, ...] = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
FACTOR_SIZES: tuple[int, ...] = (10, 10, 10, 8, 4, 15)
N_COMBINATIONS = int(np.prod(FACTOR_SIZES))  # 480,000
SHAPE_NAMES = ("cube", "cylinder", "sphere", "capsule")
RENDER_VERSION = 2  # bump when the pictures change: it is the dataset's fingerprint, so old stages are not reused

HUES = np.linspace(0.0, 0.9, 10)
SCALES = np.linspace(0.75, 1.25, 8)
ORIENTATIONS = np.linspace(-30.0, 30.0, 15)  # degrees
# Object half-size at scale 1, in units of half the image: large enough that scale, shape and object hue carry
# real weight in a reconstruction loss at 32x32 (at 0.3 a small autoencoder ignored the object altogether).
OBJECT_SIZE = 0.42


def factors_of(index: np.ndarray) -> np.ndarray:
    """Factor indices (N, 6) of flat combination indices (N,)."""
    index = np.asarray(index, dtype=np.int64)
    if index.size and (index.min() < 0 or index.max() >= N_COMBINATIONS):
        raise ValueError(f"shapes index out of range [0, {N_COMBINATIONS}): {index.min()}..{index.max()}")
    return np.stack(np.unravel_index(index, FACTOR_SIZES), axis=1).astype(np.int64)


def index_of(factors: np.ndarray) -> np.ndarray:
    """Flat combination indices (N,) of factor indices (N, 6)."""
    factors = np.asarray(factors, dtype=np.int64)
    return np.ravel_multi_index(tuple(factors.T), FACTOR_SIZES).astype(np.int64)


def _hsv_to_rgb(h: np.ndarray, s: float, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB; h (B,) in [0, 1), v (B, H, W) brightness; returns (B, H, W, 3)."""
    i = np.floor(h * 6.0).astype(np.int64) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = np.full_like(h, 1.0 - s), 1.0 - s * f, 1.0 - s * (1.0 - f)
    one = np.ones_like(h)
    table = np.stack(
        [
            np.stack([one, t, p], -1),
            np.stack([q, one, p], -1),
            np.stack([p, one, t], -1),
            np.stack([p, q, one], -1),
            np.stack([t, p, one], -1),
            np.stack([one, p, q], -1),
        ],
        axis=1,
    )  # (B, 6, 3)
    base = table[np.arange(len(h)), i]  # (B, 3) colour at full brightness
    return v[..., None] * base[:, None, None, :]


@dataclass(frozen=True)
class ShapesRenderer:
    """Renders `shapes` images from combination indices.

    size: output side in pixels; noise: fraction of pixels hit by salt-and-pepper noise (paper: 0.15);
    noise_seed: mixes into each image's noise generator together with the image index.
    """

    size: int = 64
    noise: float = 0.0
    noise_seed: int = 0
    supersample: int = 2

    def __post_init__(self) -> None:
        if not 8 <= self.size <= 256:
            raise ValueError(f"shapes image size must be in [8, 256], got {self.size}")
        if not 0.0 <= self.noise < 1.0:
            raise ValueError(f"noise fraction must be in [0, 1), got {self.noise}")

    def render(self, index: np.ndarray, chunk: int = 512) -> np.ndarray:
        """uint8 images (N, size, size, 3) for combination indices (N,)."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        out = np.empty((len(index), self.size, self.size, 3), dtype=np.uint8)
        for start in range(0, len(index), chunk):
            part = index[start : start + chunk]
            out[start : start + len(part)] = self._render_chunk(part)
        return out

    def _render_chunk(self, index: np.ndarray) -> np.ndarray:
        fac = factors_of(index)
        b = len(index)
        r = self.size * self.supersample
        # Pixel centres in [-1, 1]; u to the right, v downwards.
        c = (np.arange(r, dtype=np.float32) + 0.5) / r * 2.0 - 1.0
        u = c[None, None, :]
        v = c[None, :, None]
        theta = np.deg2rad(ORIENTATIONS[fac[:, 5]]).astype(np.float32)[:, None, None]
        scale = SCALES[fac[:, 3]].astype(np.float32)[:, None, None]

        # Room: the far corner moves sideways with the camera yaw; floor edges recede towards it.
        corner = 0.9 * np.sin(theta) / np.sin(np.deg2rad(30.0))
        boundary = -0.05 + 0.3 * np.abs(u - corner)
        floor = v > boundary
        wall_v = np.where(u < corner, 0.72, 0.95) + 0.0 * v
        floor_v = 0.75 + 0.25 * np.clip((v - boundary) / 1.2, 0.0, 1.0)
        img = np.where(
            floor[..., None],
            _hsv_to_rgb(HUES[fac[:, 0]], 0.85, floor_v.astype(np.float32)),
            _hsv_to_rgb(HUES[fac[:, 1]], 0.85, wall_v.astype(np.float32)),
        )

        # Object: half-size a, resting on the floor at v = base, centred at u = 0.
        a = OBJECT_SIZE * scale
        base = 0.74
        cy = base - a
        shape = fac[:, 4][:, None, None]
        du, dv = u - 0.0, v - cy
        sin_t, cos_t = np.sin(theta), np.cos(theta)
        # Cube: front face 2a*cos(t) wide, side face 2a*|sin(t)| on the side the camera turns to, thin top.
        front_w = a * cos_t
        side_w = 2 * a * np.abs(sin_t)
        left = -front_w - np.where(sin_t < 0, side_w, 0.0)
        right = front_w + np.where(sin_t > 0, side_w, 0.0)
        top_h = 0.35 * a
        in_cube = (u >= left) & (u <= right) & (v <= base) & (v >= base - 2 * a - top_h)
        cube_side = ((u > front_w) | (u < -front_w)) & in_cube
        cube_top = (v < base - 2 * a) & in_cube
        cube_v = np.where(cube_top, 1.0, np.where(cube_side, 0.6, 0.85))
        # Cylinder: a 2a x 2a body with an elliptical lid; shading follows the light, which turns with t.
        ell = (du / a) ** 2 + ((v - (base - 2 * a)) / (0.3 * a)) ** 2 <= 1.0
        in_cyl = ((np.abs(du) <= a) & (v <= base) & (v >= base - 2 * a)) | ell
        cyl_v = np.where(ell, 1.0, 0.55 + 0.45 * np.cos(np.clip(du / a - sin_t, -1.5, 1.5)))
        # Sphere: radius a, highlight offset by the yaw.
        rr = (du**2 + dv**2) / a**2
        in_sph = rr <= 1.0
        hl = ((du / a - 0.6 * sin_t) ** 2 + (dv / a + 0.4) ** 2)
        sph_v = np.clip(1.05 - 0.45 * hl, 0.35, 1.0)
        # Capsule: a pill lying along the camera axis, its visible length shrinking as the yaw grows.
        half_len = a * (0.35 + 0.65 * cos_t)
        rad = 0.55 * a
        ccy = base - rad
        dx = np.clip(np.abs(du) - half_len, 0.0, None)
        in_cap = dx**2 + (v - ccy) ** 2 <= rad**2
        cap_v = np.clip(1.0 - 0.5 * ((v - ccy + 0.4 * rad) / rad) ** 2 - 0.2 * sin_t * du / a, 0.35, 1.0)

        masks = np.stack([in_cube, in_cyl, in_sph, in_cap], 0)  # (4, B, r, r)
        shades = np.stack([cube_v, cyl_v, sph_v, cap_v], 0).astype(np.float32)
        pick = np.arange(b)
        obj_mask = masks[shape[:, 0, 0], pick]
        obj_v = shades[shape[:, 0, 0], pick]
        obj = _hsv_to_rgb(HUES[fac[:, 2]], 0.95, obj_v)
        img = np.where(obj_mask[..., None], obj, img)

        # Box filter down to the output size.
        s = self.supersample
        img = img.reshape(b, self.size, s, self.size, s, 3).mean(axis=(2, 4))
        img = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
        if self.noise > 0:
            img = salt_and_pepper(img, index, self.noise, self.noise_seed)
        return img


def factor_grid(renderer: ShapesRenderer, n_cols: int = 10, base: tuple[int, ...] = (0, 3, 6, 4, 0, 7)) -> np.ndarray:
    """One row per factor, varying that factor over evenly spaced values from a base scene: (6, n_cols, H, W, 3)."""
    rows = []
    for f, size in enumerate(FACTOR_SIZES):
        values = np.round(np.linspace(0, size - 1, n_cols)).astype(np.int64)
        combos = np.tile(np.asarray(base, dtype=np.int64), (n_cols, 1))
        combos[:, f] = values
        rows.append(renderer.render(index_of(combos)))
    return np.stack(rows)


@dataclass
class ShapesReader:
    """`shapes` images rendered on demand from their combination index: the generated dataset's reader."""

    size: int
    noise: float
    seed: int
    renders = True  # generated, not read from files (the pipeline says "rendered")

    def read(self, index: np.ndarray) -> np.ndarray:
        return ShapesRenderer(self.size, self.noise, self.seed).render(index)


def load_shapes(size: int, noise: float, seed: int, heldout_hues: list[int]):
    """All 480,000 combinations as a loaded dataset: the six factors, the held-out-hue split, the renderer."""
    if size not in (16, 32, 64):
        raise DataError(f"data.image_size must be 16, 32 or 64 for 'shapes', got {size}")
    bad = [h for h in heldout_hues if not 0 <= h < FACTOR_SIZES[0]]
    if bad:
        raise DataError(f"data.heldout_hues must be hue indices in [0, {FACTOR_SIZES[0]}), got {bad}")
    fac = factors_of(np.arange(N_COMBINATIONS))
    factors = {name: fac[:, i] for i, name in enumerate(FACTOR_NAMES)}
    return Loaded(np.zeros(N_COMBINATIONS, np.int64), [], heldout_hue_split(factors, heldout_hues),
                  ShapesReader(size, noise, seed), factors, fixed_split=True,
                  fingerprint=f"shapes-render-v{RENDER_VERSION}")

