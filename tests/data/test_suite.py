"""detaux_ray/data/suite.py: the generated datasets of other kinds (sprites, colour_digits, digits)."""

import numpy as np
import pytest

from detaux_ray.config import DataConfig
from detaux_ray.data import build_source
from detaux_ray.data.suite import SPRITE_FACTORS, SPRITE_SIZES, N_DIGITS
from detaux_ray.errors import DataError


def test_sprites_factors_each_change_the_picture_and_images_are_pure_functions_of_the_index():
    src = build_source(DataConfig(dataset="sprites", principal="shape", n_images=600, image_size=32, noise=0.0), seed=1)
    assert set(src.factors) == set(SPRITE_FACTORS) and src.n_principal_classes == 3
    rows = src.train_rows()[:8]
    assert np.array_equal(src.images(rows), src.images(rows))  # the same every time it is drawn
    base = np.array([1, 3, 1, 3, 3, 2])  # an ellipse of middle size in the middle
    for f, size in enumerate(SPRITE_SIZES):  # every value of every factor draws a different image
        combos = np.tile(base, (size, 1))
        combos[:, f] = np.arange(size)
        img = src.reader.read(np.ravel_multi_index(tuple(combos.T), SPRITE_SIZES)).astype(int)
        assert all(np.abs(img[i] - img[i + 1]).sum() > 0 for i in range(size - 1)), SPRITE_FACTORS[f]
    img = src.reader.read(np.ravel_multi_index(tuple(base), SPRITE_SIZES).reshape(1))[0]
    assert (img[0] == 0).all() and (img[:, 0] == 0).all() and img.max() > 200  # a bright sprite on plain black


def test_colour_digits_hold_out_whole_handwritten_originals():
    src = build_source(DataConfig(dataset="colour_digits", principal="label", n_images=3000, image_size=32, noise=0.0),
                       seed=0)
    assert set(src.factors) == {"ink", "background", "pos_x", "pos_y"} and src.n_principal_classes == 10
    original = np.unravel_index(src.ids, (N_DIGITS, 6, 4, 4, 4))[0]
    train, test = set(original[src.train_rows()]), set(original[src.test_rows()])
    assert train and test and not train & test  # no test digit's strokes are seen in training
    img = src.images(src.train_rows()[:2])
    assert img.shape == (2, 32, 32, 3) and img.dtype == np.uint8


def test_digits_is_the_real_set_without_factor_annotations():
    src = build_source(DataConfig(dataset="digits", principal="label", image_size=16), seed=0)
    assert len(src) == N_DIGITS and src.factors == {} and src.n_principal_classes == 10
    img = src.images(np.arange(3))
    assert img.shape == (3, 16, 16, 3) and (img[..., 0] == img[..., 1]).all()  # grey
    with pytest.raises(DataError, match="choose data.principal from: label"):
        build_source(DataConfig(dataset="digits", principal="scale"), seed=0)
    with pytest.raises(DataError, match="image_size"):
        build_source(DataConfig(dataset="sprites", image_size=8), seed=0)
