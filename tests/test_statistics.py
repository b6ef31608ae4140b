"""detaux_ray.statistics: over-seed summaries and the t-test against STL."""

import pytest


def test_seed_statistics_welch_t_test():
    from scipy.stats import ttest_ind

    from detaux_ray.statistics import seed_statistics

    acc = {"stl": [0.80, 0.82, 0.81], "mtl": [0.86, 0.85, 0.88]}
    out = seed_statistics([0, 1, 2], acc, "hps")
    assert out.models["mtl"]["mean"] == pytest.approx(0.8633333) and out.models["stl"]["std"] == pytest.approx(0.01)
    assert out.p_value == pytest.approx(ttest_ind(acc["mtl"], acc["stl"], equal_var=False).pvalue)
    assert out.p_value < 0.05 and "p_value" not in out.models["stl"]
    flat = out.to_dict()  # results.json keeps the flat keys for a quick look
    assert flat["mtl_mean"] == out.models["mtl"]["mean"] and flat["p_value"] == out.p_value
