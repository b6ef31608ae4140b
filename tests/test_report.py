"""detaux_ray/report.py: row names of the Table-1 style table and the terminal's one-line summary."""

from detaux_ray.report import model_name, summary_line


def test_row_names_tell_detaux_models_peers_and_the_ablation_apart():
    assert model_name("stl", "stl") == "STL"
    assert model_name("mtl", "hps") == "MTL-HPS + Detaux" and model_name("nddr", "nddr") == "MTL-NDDR + Detaux"
    assert model_name("maxl", "maxl") == "MAXL (learned labels)"
    assert model_name("auxilearn", "auxilearn") == "AuxiLearn (learned labels)"
    assert model_name("entangled", "hps") == "MTL-HPS + entangled-AE labels (ablation)"


def test_summary_line_names_the_accuracies_and_the_best_matching_factor():
    r = {"stl_accuracy": 0.95, "mtl_accuracy": 0.9675, "mtl_model": "nddr", "n_aux_classes": 10,
         "nmi_principal_aux": 0.0023, "best_factor": "wall_hue",
         "factor_scores": {"wall_hue": {"homogeneity": 0.8265, "completeness": 0.8183}}}
    assert summary_line(r) == ("STL accuracy 0.9500 | MTL-NDDR accuracy 0.9675 | 10 auxiliary classes, NMI(principal, "
                               "aux) 0.0023 | best factor wall_hue: homogeneity 0.827, completeness 0.818")
    r.update(stl_accuracy=None, best_factor=None, factor_scores={})  # no baseline, no known factors
    assert summary_line(r) == "MTL-NDDR accuracy 0.9675 | 10 auxiliary classes, NMI(principal, aux) 0.0023"
