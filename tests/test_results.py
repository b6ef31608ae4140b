"""detaux_ray/results.py: typed stage results survive their manifest's JSON; the report reads them."""

import json

from detaux_ray.report import render_markdown
from detaux_ray.results import (STAGE_RESULTS, Ablation, AuxiliaryTask, DatasetInfo, Diagnostics, DiscoverResult,
                                DisentangleResult, FitResult, MTLResult, Report, StageRun)
from detaux_ray.statistics import seed_statistics


def diagnostics(best: str | None = "wall_hue") -> Diagnostics:
    scores = {"wall_hue": {"homogeneity": 0.8265, "completeness": 0.8183, "v_measure": 0.8224}} if best else {}
    return Diagnostics(10, {0: 500, 1: 480}, 0.0023, 0.001, 70.2, 63, 0.25, scores, best)


def fit(model: str, acc: float, **kw) -> FitResult:
    return FitResult(model, acc, 8, 72_824, "conv", "fixed", ["principal"], 166.2, **kw)


def report(stl: bool = True, best: str | None = "wall_hue") -> Report:
    tasks = [AuxiliaryTask("auxiliary", 3, "kmeans++", {"n_clusters": 10}, False, diagnostics(best))]
    s2 = DiscoverResult("cluster", {k: [0.1, 0.2, 0.3] for k in ("l_dist", "dot", "cluster", "variance")}, tasks)
    results = {"stl": fit("stl", 0.95, val_principal_accuracy=0.94)} if stl else {}
    results |= {"mtl": fit("nddr", 0.9675), "entangled": fit("nddr", 0.9, labels="entangled autoencoder")}
    seeds = seed_statistics([0, 1], {"stl": [0.95, 0.96], "mtl": [0.9675, 0.97]}, "nddr") if stl else None
    s3 = MTLResult(results, {"principal": 8, "auxiliary": 10}, seeds,
                   Ablation(results["entangled"], diagnostics(None), "kmeans++", 1640))
    return Report(DatasetInfo("shapes", "scale", 8, 10496, 0, 2190, 32),
                  DisentangleResult("model.pt", 14, 2296, {"rec": 0.02}, {"k": 3}), s2, s3,
                  {"disentangle": StageRun(353.3, False, "ab12")}, {"seed": 0})


def test_every_stage_result_reads_back_from_its_manifest_json():
    r = report()
    for name, result in (("disentangle", r.disentangle), ("discover", r.discover), ("mtl", r.mtl)):
        manifest = json.loads(json.dumps({"stage": name, "config_hash": "ab12", **result.to_dict()}))
        back = STAGE_RESULTS[name].from_dict(manifest)
        assert json.dumps(back.to_dict(), sort_keys=True) == json.dumps(json.loads(json.dumps(result.to_dict())), sort_keys=True)
    d = r.discover.to_dict()  # diagnostics.json: the first task's fields at the top level too
    assert d["chosen_subspace"] == 3 and d["diagnostics"]["best_factor"] == "wall_hue"
    assert "val_principal_accuracy" not in r.mtl.results["mtl"].to_dict()  # optional fields left out when unset


def test_report_json_and_markdown_from_typed_results():
    r = report()
    j = r.to_dict()
    assert j["stl_accuracy"] == 0.95 and j["mtl_accuracy"] == 0.9675 and j["mtl_model"] == "nddr"
    assert j["chosen_subspace"] == 3 and j["best_factor"] == "wall_hue" and j["seeds"]["p_value"] == r.mtl.seeds.p_value
    assert "result" not in j["entangled_ablation"] and j["models"]["entangled"]["labels"] == "entangled autoencoder"
    md = render_markdown(r)
    assert "| STL | principal | 0.9500 | 0.9400 |" in md and "| MTL-NDDR + Detaux | principal | 0.9675 | - |" in md
    assert "MTL-NDDR + entangled-AE labels (ablation)" in md and "| wall_hue (best match) | 0.8265 |" in md
    assert "| subspace | l_dist | dot | cluster | variance |" in md and "calinski:" not in md  # the criteria computed
    assert render_markdown(report(stl=False, best=None)).count("STL") == 0
    assert "runner-up" not in md and j["criterion_margin"] is None  # no margin recorded: nothing claimed
    r.discover.criterion, r.discover.criterion_margin = "calinski", 1.72
    assert "**3** by criterion `calinski`, 1.72x the runner-up's score (on the quick preset" in render_markdown(r)
    assert r.to_dict()["criterion_margin"] == 1.72
    assert "not considered" not in render_markdown(r)  # no dead_subspace_frac in this config: nothing skipped
    r.config = {"discover": {"dead_subspace_frac": 0.7}, "disentangle": {"principal_subspace": 0}}  # variance 0.1, 0.2, 0.3
    assert "; not considered: subspace 1 (variance below 0.7 x the largest" in render_markdown(r)


def test_the_report_shows_every_start_and_names_the_kept_one():
    r = report()
    r.discover.space = "ica"
    r.discover.auxiliary_tasks[0].component, r.discover.auxiliary_tasks[0].loadings = 1, [0.0, 0.2, 0.8, 0.0]
    r.discover.component_scores = {"kurtosis": [3.1, -1.2], "classes": [0, 10], "level_separation": [0.0, 0.85],
                                   "score": [0.0, 1.95]}  # start 0: one cluster, no start
    md = render_markdown(r)
    assert "| component | kurtosis | classes | level separation | score |" in md
    assert "| 0 | 3.100 | - | 0.000 | 0 |" in md and "| 1 | -1.200 | 10 | 0.850 | 1.95 |" in md
    assert "**independent component 1**" in md and "stand apart most as levels" in md
