"""detaux_ray/data: one split rule for every dataset; every dataset (shapes too) is a loader plus a reader."""

import numpy as np
import pytest

from detaux_ray.data import build_source, split
from detaux_ray.errors import DataError


def test_split_keeps_a_datasets_own_test_split_and_carves_validation_from_training_rows():
    own = np.arange(100) >= 80
    is_test, is_val = split(own, fixed=False, test_frac=0.5, val_frac=0.25, seed=0)
    assert np.array_equal(is_test, own) and is_val.sum() == 20 and not (is_val & is_test).any()
    # no split of its own: a seeded test_frac of the rows (the same for the same seed)
    none = np.zeros(1000, bool)
    t1, _ = split(none, fixed=False, test_frac=0.2, val_frac=0.0, seed=3)
    t2, _ = split(none, fixed=False, test_frac=0.2, val_frac=0.0, seed=3)
    assert np.array_equal(t1, t2) and 150 < t1.sum() < 250
    # a split that defines the dataset (held-out hues) stays empty when it is empty: the pipeline says so
    t3, _ = split(none, fixed=True, test_frac=0.2, val_frac=0.0, seed=3)
    assert not t3.any()
    with pytest.raises(DataError, match="empty validation split"):
        split(own, fixed=False, test_frac=0.5, val_frac=0.001, seed=0)


def test_shapes_is_a_loader_and_reader_like_every_dataset():
    from detaux_ray.config import DataConfig
    from detaux_ray.data.shapes import ShapesReader, ShapesRenderer

    src = build_source(DataConfig(n_images=500, image_size=16, noise=0.1), seed=2)
    assert isinstance(src.reader, ShapesReader) and src.reader.renders
    rows = src.train_rows()[:3]
    assert np.array_equal(src.images(rows), ShapesRenderer(16, 0.1, 2).render(src.ids[rows]))
    assert np.array_equal(src.native_ids(rows), src.ids[rows])  # the combination index
    assert np.array_equal(src.factors["scale"], src.principal)  # the principal's own column is a known factor


def test_labelled_frac_keeps_a_seeded_fraction_of_the_training_labels():
    from detaux_ray.config import DataConfig

    src = build_source(DataConfig(n_images=2000, image_size=16, labelled_frac=0.1), seed=0)
    train, known = src.train_rows(), src.is_labelled()
    assert known[train].sum() == round(0.1 * len(train)) and known[src.test_rows()].all()
    assert np.array_equal(src.labelled_train_rows(), train[known[train]])
    again = build_source(DataConfig(n_images=2000, image_size=16, labelled_frac=0.1), seed=0)
    assert np.array_equal(again.labelled_train_rows(), src.labelled_train_rows())  # seeded
    assert build_source(DataConfig(n_images=2000, image_size=16), seed=0).labelled is None  # the default: all


def test_labelled_frac_outside_0_1_is_a_config_error_and_too_few_classes_is_bad_data():
    from detaux_ray.config import load_config
    from detaux_ray.errors import ConfigError

    for bad in ("0", "-0.1", "1.5"):
        with pytest.raises(ConfigError, match=r"data.labelled_frac=.* is out of range: it must be in \(0, 1\]"):
            load_config("quick", [f"data.labelled_frac={bad}"])
    cfg = load_config("quick", ["data.n_images=2000", "data.image_size=16", "data.labelled_frac=0.0001"])
    with pytest.raises(DataError, match="keeps 1 of .* covering 1 principal class: at least 2 are needed"):
        build_source(cfg.data, cfg.seed)
