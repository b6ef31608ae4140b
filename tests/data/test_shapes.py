import numpy as np
import pytest

from detaux_ray.data import build_source
from detaux_ray.config import DataConfig
from detaux_ray.data.shapes import FACTOR_SIZES, N_COMBINATIONS, ShapesRenderer, factor_grid, factors_of, index_of
from detaux_ray.errors import DataError


def test_index_factor_roundtrip_matches_3dshapes_order():
    assert N_COMBINATIONS == 480_000
    idx = np.array([0, 1, 14, 15, 479_999])
    fac = factors_of(idx)
    assert fac[1].tolist() == [0, 0, 0, 0, 0, 1]  # orientation fastest
    assert fac[3].tolist() == [0, 0, 0, 0, 1, 0]
    assert fac[-1].tolist() == [s - 1 for s in FACTOR_SIZES]
    assert index_of(fac).tolist() == idx.tolist()


def test_render_is_deterministic_and_sized():
    r = ShapesRenderer(size=32, noise=0.15, noise_seed=3)
    idx = np.array([5, 123_456, 479_999])
    a, b = r.render(idx), r.render(idx[::-1])[::-1]
    assert a.shape == (3, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert ShapesRenderer(size=64).render(idx[:1]).shape == (1, 64, 64, 3)


def test_noise_hits_the_given_fraction_of_pixels():
    clean = ShapesRenderer(size=32).render(np.arange(10)).astype(int)
    noisy = ShapesRenderer(size=32, noise=0.15).render(np.arange(10)).astype(int)
    changed = (clean != noisy).any(-1).mean()
    assert 0.10 < changed <= round(0.15 * 1024) / 1024  # a salt or pepper pixel may equal the clean one by chance


@pytest.mark.parametrize("size", [16, 32, 64])
def test_every_factor_is_visible(size):
    grid = factor_grid(ShapesRenderer(size=size)).astype(int)  # (6 factors, 10 values, ...)
    for f in range(6):
        row = grid[f]
        diffs = [np.abs(row[i] - row[i + 1]).sum() for i in range(len(row) - 1) if True]
        # Every distinct value of the factor renders differently from its neighbour.
        values = np.round(np.linspace(0, FACTOR_SIZES[f] - 1, 10)).astype(int)
        distinct = [d for d, (v0, v1) in zip(diffs, zip(values[:-1], values[1:])) if v0 != v1]
        assert min(distinct) > 0, f"factor {f} invisible at {size}px"


def test_source_split_and_bad_inputs():
    src = build_source(DataConfig(n_images=4000, image_size=16), seed=0)
    held = {1, 3, 5, 7, 9}
    test = src.is_test
    assert all(f in held and w in held for f, w in zip(src.factors["floor_hue"][test], src.factors["wall_hue"][test]))
    assert 0.2 < test.mean() < 0.3  # the paper's 75/25 split
    assert np.array_equal(src.principal, src.factors["scale"])
    with pytest.raises(DataError, match="principal factor 'colour'"):
        build_source(DataConfig(principal="colour"), seed=0)
    with pytest.raises(DataError, match="unknown dataset"):
        build_source(DataConfig(dataset="mnist"), seed=0)
    with pytest.raises(DataError, match="principal class"):
        build_source(DataConfig(n_images=1, heldout_hues=[]), seed=0)
    with pytest.raises(ValueError, match="image size"):
        ShapesRenderer(size=4)
