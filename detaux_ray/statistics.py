"""Statistics of repeated runs (no Ray): per-model mean / std over seeds and Welch's t-test against STL."""

from __future__ import annotations

import numpy as np

from .results import SeedStatistics


def seed_statistics(seeds: list[int], acc: dict[str, list[float]], model: str) -> SeedStatistics:
    """Mean and sample std per model and Welch's two-sample t-test of each model against STL on the per-seed
    accuracies ("mtl" is mtl.model's row).

    t = (mean_a - mean_b) / sqrt(s_a^2 / n_a + s_b^2 / n_b), with Welch-Satterthwaite degrees of freedom.
    """
    from scipy.stats import ttest_ind

    rows = {}
    for key, values in acc.items():
        if not values:
            continue
        row = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}
        if key != "stl" and len(acc.get("stl", [])) > 1 and len(values) > 1:
            if np.ptp(values) == 0 and np.ptp(acc["stl"]) == 0 and values[0] == acc["stl"][0]:
                t, p = 0.0, 1.0  # the same accuracy at every seed (e.g. both at 1.0): no difference, not "undefined"
            else:  # zero variance with different means: scipy's limit, |t| = inf and p = 0
                t, p = ttest_ind(values, acc["stl"], equal_var=False)
            row.update(t_statistic=float(t), p_value=float(p))
        rows[key] = row
    return SeedStatistics(seeds, model, acc, rows)
