"""Datasets as image sources (no Ray): labels and split known up front, images produced for given rows.

A source is a small picklable object; Ray Data actors build their images from it (render or read) so nothing
large crosses the object store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .shapes import FACTOR_NAMES, FACTOR_SIZES, N_COMBINATIONS, ShapesRenderer, factors_of

DATASETS = ("shapes",)


@dataclass
class ImageSource:
    """Rows 0..N-1 of a dataset: principal labels, known factors (evaluation only), test split, images."""

    name: str
    image_size: int
    principal_name: str
    principal: np.ndarray  # (N,) int64
    is_test: np.ndarray  # (N,) bool
    factors: dict[str, np.ndarray] = field(default_factory=dict)  # ground truth, never used for training
    ids: np.ndarray | None = None  # dataset-native id of each row (shapes: combination index)
    noise: float = 0.0
    noise_seed: int = 0

    def __len__(self) -> int:
        return len(self.principal)

    @property
    def n_principal_classes(self) -> int:
        return int(self.principal.max()) + 1

    def images(self, rows: np.ndarray) -> np.ndarray:
        """uint8 images (len(rows), S, S, 3)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.name == "shapes":
            return ShapesRenderer(self.image_size, self.noise, self.noise_seed).render(self.ids[rows])
        raise DataError(f"no image reader for dataset '{self.name}'")

    def train_rows(self) -> np.ndarray:
        return np.flatnonzero(~self.is_test)

    def test_rows(self) -> np.ndarray:
        return np.flatnonzero(self.is_test)


def build_source(cfg: DataConfig, seed: int) -> ImageSource:
    if cfg.dataset != "shapes":
        raise DataError(f"unknown dataset '{cfg.dataset}'; available: {', '.join(DATASETS)}")
    if cfg.principal not in FACTOR_NAMES:
        raise DataError(f"principal factor '{cfg.principal}' does not exist in 'shapes'; factors: {', '.join(FACTOR_NAMES)}")
    if cfg.image_size not in (16, 32, 64):
        raise DataError(f"data.image_size must be 16, 32 or 64 for 'shapes', got {cfg.image_size}")
    bad = [h for h in cfg.heldout_hues if not 0 <= h < FACTOR_SIZES[0]]
    if bad:
        raise DataError(f"data.heldout_hues must be hue indices in [0, 10), got {bad}")
    n = cfg.n_images or N_COMBINATIONS
    if not 1 <= n <= N_COMBINATIONS:
        raise DataError(f"data.n_images must be in [1, {N_COMBINATIONS}] (0 = all), got {cfg.n_images}")
    ids = np.arange(N_COMBINATIONS) if n == N_COMBINATIONS else np.sort(np.random.default_rng([seed, 1]).choice(N_COMBINATIONS, n, replace=False))
    fac = factors_of(ids)
    factors = {name: fac[:, i] for i, name in enumerate(FACTOR_NAMES)}
    held = np.asarray(cfg.heldout_hues, dtype=np.int64)
    is_test = np.isin(factors["floor_hue"], held) & np.isin(factors["wall_hue"], held)
    principal = factors[cfg.principal]
    src = ImageSource("shapes", cfg.image_size, cfg.principal, principal, is_test, factors, ids, cfg.noise, seed)
    n_cls = len(np.unique(principal[~is_test]))
    if n_cls < 2:
        raise DataError(f"the training split has {n_cls} principal class(es) of '{cfg.principal}' "
                        f"({int((~is_test).sum())} training images): at least 2 are needed; raise data.n_images")
    return src
