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


def test_a_model_is_also_tested_against_its_control():
    """mtl.controls: NDDR + the discovered task against NDDR on the principal alone, beside the test against STL."""
    from scipy.stats import ttest_ind

    from detaux_ray.results import control_keys
    from detaux_ray.statistics import seed_statistics

    controls = control_keys({"stl": "stl", "mtl": "nddr", "hps": "hps", "mti": "mti", "maxl": "maxl"})
    assert controls == {"mtl": "nddr_alone", "mti": "mti_alone"}  # HPS's control is STL; the peers learn their labels
    acc = {"stl": [0.80, 0.82, 0.81], "mtl": [0.90, 0.91, 0.92], "nddr_alone": [0.90, 0.92, 0.91], "mti": [0.9, 0.9, 0.9]}
    out = seed_statistics([0, 1, 2], acc, "nddr", controls).models
    assert out["mtl"]["p_value"] < 0.01  # far above STL ...
    assert out["mtl"]["control"] == "nddr_alone" and out["mtl"]["t_vs_control"] == 0.0  # ... and level with its control
    assert out["mtl"]["p_vs_control"] == pytest.approx(ttest_ind(acc["mtl"], acc["nddr_alone"], equal_var=False).pvalue)
    assert "p_vs_control" not in out["mti"] and "p_vs_control" not in out["nddr_alone"]  # mti_alone was not trained
