import numpy as np
import pytest

from detaux_ray.errors import DataError
from detaux_ray.disentangle.pairs import sample_pairs


def test_pairs_follow_oracle_probability_and_labels():
    labels = np.random.default_rng(0).integers(0, 8, size=3000)
    i1, i2, same = sample_pairs(labels, 20000, p_differ=0.3, seed=1, epoch=0)
    assert np.array_equal(same, labels[i1] == labels[i2])
    assert abs((~same).mean() - 0.3) < 0.02
    assert (i1 != i2).all()  # a same-label partner is another image


def test_pairs_are_deterministic_per_seed_and_epoch():
    labels = np.arange(100) % 5
    a = sample_pairs(labels, 500, 0.5, seed=3, epoch=2)
    b = sample_pairs(labels, 500, 0.5, seed=3, epoch=2)
    c = sample_pairs(labels, 500, 0.5, seed=3, epoch=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_pairs_need_two_classes():
    with pytest.raises(DataError, match="at least 2 principal classes"):
        sample_pairs(np.zeros(10, dtype=int), 5, 0.5, 0, 0)
