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


def test_identical_accuracies_at_every_seed_are_no_difference_not_nan():
    """Both models at 1.0 on every seed (measured: `data.principal=shape`): Welch's t is 0/0; report t = 0, p = 1."""
    import math

    from detaux_ray.statistics import seed_statistics

    same = seed_statistics([0, 1, 2], {"stl": [1.0, 1.0, 1.0], "mtl": [1.0, 1.0, 1.0]}, "hps").models["mtl"]
    assert (same["t_statistic"], same["p_value"]) == (0.0, 1.0)
    # zero variance with different means keeps scipy's limit: p = 0
    apart = seed_statistics([0, 1], {"stl": [0.9, 0.9], "mtl": [1.0, 1.0]}, "hps").models["mtl"]
    assert apart["p_value"] == 0.0 and not math.isnan(apart["t_statistic"])
