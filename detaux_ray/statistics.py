"""Statistics of repeated runs (no Ray): per-model mean / std over seeds and Welch's t-test against STL."""

from __future__ import annotations

import numpy as np

from .results import SeedStatistics


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """Welch's two-sample t-test of a against b: (t, p).

    t = (mean_a - mean_b) / sqrt(s_a^2 / n_a + s_b^2 / n_b), with Welch-Satterthwaite degrees of freedom.
    """
    from scipy.stats import ttest_ind

    if np.ptp(a) == 0 and np.ptp(b) == 0 and a[0] == b[0]:
        return 0.0, 1.0  # the same accuracy at every seed (e.g. both at 1.0): no difference, not "undefined"
    t, p = ttest_ind(a, b, equal_var=False)  # zero variance with different means: scipy's limit, |t| = inf and p = 0
    return float(t), float(p)


def seed_statistics(seeds: list[int], acc: dict[str, list[float]], model: str,
                    controls: dict[str, str] | None = None) -> SeedStatistics:
    """Mean and sample std per model and Welch's t-test (`welch`) of each model against STL on the per-seed
    accuracies ("mtl" is mtl.model's row); with `controls` (model key -> its control's key, e.g. "mtl" ->
    "nddr_alone"), also of each model against its own architecture trained on the principal alone.
    """
    rows = {}
    for key, values in acc.items():
        if not values:
            continue
        row = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}
        if key != "stl" and len(acc.get("stl", [])) > 1 and len(values) > 1:
            row["t_statistic"], row["p_value"] = welch(values, acc["stl"])
        ctrl = (controls or {}).get(key)
        if ctrl and len(acc.get(ctrl, [])) > 1 and len(values) > 1:
            row["control"] = ctrl
            row["t_vs_control"], row["p_vs_control"] = welch(values, acc[ctrl])
        rows[key] = row
    return SeedStatistics(seeds, model, acc, rows)
