"""Generated datasets of other kinds than `shapes`, each with known factors, to judge every default on more than one.

Nothing is downloaded: `sprites` is drawn by our own code, the two digit sets start from the 1,797 real
handwritten digits that scikit-learn ships (`sklearn.datasets.load_digits`, 8x8 greyscale, 0-16).

- `sprites` (dSprites / XYObject kind): one small flat sprite on a plain black background. Factors shape (3:
  square, ellipse, heart), scale (6), rotation (6, 0-75 degrees: no two values alike for any shape), pos_x (8),
  pos_y (8), colour (6 hues). 41,472 combinations, indexed row-major like `shapes`.
- `colour_digits` (a real image base with added factors): a real digit drawn in one of 6 ink hues on one of 4
  background colours at one of 4 x 4 positions. Factors ink, background, pos_x, pos_y (the class is `label`); the
  writer's style is real and unannotated. The test split holds out 20% of the handwritten originals (seeded), so
  no test digit's strokes are seen in training under another colour.
- `digits` (a real labelled set with no factor annotations): the handwritten digits themselves, grey on black,
  upscaled; only the class is known (judged by NMI(principal, auxiliary) and the MTL comparison).

Every image is a pure function of its index (and data.noise / seed for the salt-and-pepper noise, as `shapes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..errors import DataError
from .formats import Loaded, salt_and_pepper

SUITE_VERSION = 1  # bump when these pictures change: it is these datasets' fingerprint, so old stages are not reused
DATASETS = ("sprites", "colour_digits", "digits")

SPRITE_FACTORS: tuple[str, ...] = ("shape", "scale", "rotation", "pos_x", "pos_y", "colour")
SPRITE_SIZES: tuple[int, ...] = (3, 6, 6, 8, 8, 6)
SPRITE_SHAPES = ("square", "ellipse", "heart")
SPRITE_HUES = np.linspace(0.0, 5.0 / 6.0, 6)

DIGIT_FACTORS: tuple[str, ...] = ("ink", "background", "pos_x", "pos_y")  # added to each real digit
DIGIT_SIZES: tuple[int, ...] = (6, 4, 4, 4)
INK_HUES = np.linspace(0.0, 5.0 / 6.0, 6)
BACKGROUNDS = np.array([[0, 0, 0], [70, 70, 70], [20, 40, 90], [90, 50, 20]], dtype=np.float32)  # dark, so ink reads
N_DIGITS = 1797  # sklearn's digits


def _hue_rgb(h: np.ndarray) -> np.ndarray:
    """Fully saturated, full-brightness RGB (N, 3) in [0, 1] of hues h (N,) in [0, 1)."""
    k = (np.asarray(h, dtype=np.float64)[:, None] * 6.0 + np.array([5.0, 3.0, 1.0])) % 6.0
    return (1.0 - np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)).astype(np.float32)


def _noise(img: np.ndarray, index: np.ndarray, noise: float, seed: int) -> np.ndarray:
    if noise > 0:
        salt_and_pepper(img, index, noise, seed)
    return img


@dataclass
class _Generated:
    """A reader that draws images from their index: side `size`, salt-and-pepper `noise` seeded by `seed`."""

    size: int
    noise: float
    seed: int
    renders = True  # generated, not read from files (the pipeline says "rendered")


# sprites -----------------------------------------------------------------------------------------------------

@dataclass
class SpritesReader(_Generated):
    """`sprites` images drawn on demand from their combination index (2x supersampled, box-filtered)."""

    def read(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        out = np.empty((len(index), self.size, self.size, 3), dtype=np.uint8)
        for start in range(0, len(index), 512):
            part = index[start : start + 512]
            out[start : start + len(part)] = self._draw(part)
        return _noise(out, index, self.noise, self.seed)

    def _draw(self, index: np.ndarray) -> np.ndarray:
        f = np.stack(np.unravel_index(index, SPRITE_SIZES), axis=1)
        b, ss = len(index), 2
        r = self.size * ss
        c = (np.arange(r, dtype=np.float32) + 0.5) / r * 2.0 - 1.0  # pixel centres in [-1, 1]
        half = (0.16 + 0.05 * f[:, 1]).astype(np.float32)  # half-size 0.16-0.41 of half the image
        room = 0.92 - half  # the centre range that keeps the sprite inside
        cx = (-1 + 2 * f[:, 3] / (SPRITE_SIZES[3] - 1)) * room
        cy = (-1 + 2 * f[:, 4] / (SPRITE_SIZES[4] - 1)) * room
        t = np.deg2rad(15.0 * f[:, 2]).astype(np.float32)
        du = c[None, None, :] - cx[:, None, None]
        dv = c[None, :, None] - cy[:, None, None]
        cos, sin = np.cos(t)[:, None, None], np.sin(t)[:, None, None]
        x = (cos * du + sin * dv) / half[:, None, None]  # sprite coordinates, unit half-size
        y = (-sin * du + cos * dv) / half[:, None, None]
        square = (np.abs(x) <= 0.85) & (np.abs(y) <= 0.85)
        ellipse = x**2 + (y / 0.55) ** 2 <= 1.0
        hy = -y * 1.1 + 0.25  # heart: (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, point up
        heart = (x**2 + hy**2 - 1.0) ** 3 - x**2 * hy**3 <= 0.0
        mask = np.stack([square, ellipse, heart])[f[:, 0], np.arange(b)]
        colour = _hue_rgb(SPRITE_HUES[f[:, 5]])
        img = mask[..., None] * colour[:, None, None, :]
        img = img.reshape(b, self.size, ss, self.size, ss, 3).mean(axis=(2, 4))
        return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def load_sprites(size: int, noise: float, seed: int):
    """All combinations; no split of their own (the pipeline draws a seeded data.test_frac)."""
    _check_size(size, "sprites")
    n = int(np.prod(SPRITE_SIZES))
    fac = np.stack(np.unravel_index(np.arange(n), SPRITE_SIZES), axis=1).astype(np.int64)
    factors = {name: fac[:, i] for i, name in enumerate(SPRITE_FACTORS)}
    return Loaded(np.zeros(n, np.int64), [], np.zeros(n, bool), SpritesReader(size, noise, seed), factors,
                  fingerprint=f"sprites-v{SUITE_VERSION}")


# digits ------------------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _handwriting() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's real handwritten digits: images (1797, 8, 8) float in [0, 1] and their classes (1797,)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # scikit-learn is a dependency; say so if an environment lacks it
        raise DataError(f"the digit datasets need scikit-learn's bundled digits: {e}") from None
    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def _glyphs(rows: np.ndarray, px: int) -> np.ndarray:
    """The handwritten digits `rows` upscaled to px x px (bilinear), intensity in [0, 1]: (N, px, px)."""
    import torch
    from torch.nn import functional as F

    img = torch.from_numpy(_handwriting()[0][rows])[:, None]
    return F.interpolate(img, size=(px, px), mode="bilinear", align_corners=False)[:, 0].clamp(0, 1).numpy()


def _digit_test_split(seed: int, test_frac: float) -> np.ndarray:
    """A seeded test_frac of the 1,797 handwritten originals (bool per original)."""
    return np.random.default_rng([seed, 23]).random(N_DIGITS) < test_frac


@dataclass
class ColourDigitsReader(_Generated):
    """`colour_digits`: a real digit (its original from the combination index) in an ink hue, on a background
    colour, at a position; the glyph spans 5/8 of the image."""

    def read(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        orig, ink, bg, px, py = np.unravel_index(index, (N_DIGITS, *DIGIT_SIZES))
        g = max(5, round(self.size * 5 / 8))
        glyph = _glyphs(orig, g)  # (N, g, g)
        img = np.broadcast_to(BACKGROUNDS[bg][:, None, None, :] / 255.0, (len(index), self.size, self.size, 3)).copy()
        colour = _hue_rgb(INK_HUES[ink])
        step = (self.size - g) / (DIGIT_SIZES[2] - 1)
        for n in range(len(index)):  # paste each glyph at its position: ink over background by the glyph's intensity
            x0, y0 = int(round(px[n] * step)), int(round(py[n] * step))
            a = glyph[n][..., None]
            patch = img[n, y0 : y0 + g, x0 : x0 + g]
            img[n, y0 : y0 + g, x0 : x0 + g] = (1 - a) * patch + a * colour[n]
        out = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return _noise(out, index, self.noise, self.seed)


def load_colour_digits(size: int, noise: float, seed: int, test_frac: float):
    _check_size(size, "colour_digits")
    _, digit = _handwriting()
    shape = (N_DIGITS, *DIGIT_SIZES)
    n = int(np.prod(shape))
    fac = np.stack(np.unravel_index(np.arange(n), shape), axis=1).astype(np.int64)
    factors = {name: fac[:, i + 1] for i, name in enumerate(DIGIT_FACTORS)}  # the class is the principal `label`
    is_test = _digit_test_split(seed, test_frac)[fac[:, 0]]
    return Loaded(digit[fac[:, 0]], [str(i) for i in range(10)], is_test, ColourDigitsReader(size, noise, seed),
                  factors, fingerprint=f"colour_digits-v{SUITE_VERSION}")


@dataclass
class DigitsReader:
    """`digits`: the handwritten originals, grey on black, upscaled to the whole image."""

    size: int
    renders = True

    def read(self, index: np.ndarray) -> np.ndarray:
        glyph = _glyphs(np.asarray(index, dtype=np.int64).reshape(-1), self.size)
        return np.repeat(np.clip(glyph * 255.0 + 0.5, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def load_digits(size: int, seed: int, test_frac: float):
    _check_size(size, "digits")
    _, digit = _handwriting()
    return Loaded(digit, [str(i) for i in range(10)], _digit_test_split(seed, test_frac), DigitsReader(size),
                  fingerprint=f"digits-v{SUITE_VERSION}")


def _check_size(size: int, name: str) -> None:
    if not 16 <= size <= 128:
        raise DataError(f"data.image_size must be in [16, 128] for '{name}', got {size}")
