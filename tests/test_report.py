"""detaux_ray/report.py: row names of the Table-1 style table and the terminal's one-line summary."""

from detaux_ray.report import model_name, summary_line
from test_results import report


def test_row_names_tell_detaux_models_peers_and_the_ablation_apart():
    assert model_name("stl", "stl") == "STL"
    assert model_name("mtl", "hps") == "MTL-HPS + Detaux" and model_name("nddr", "nddr") == "MTL-NDDR + Detaux"
    assert model_name("maxl", "maxl") == "MAXL (learned labels)"
    assert model_name("auxilearn", "auxilearn") == "AuxiLearn (learned labels)"
    assert model_name("entangled", "hps") == "MTL-HPS + entangled-AE labels (ablation)"


def test_summary_line_names_the_accuracies_and_the_best_matching_factor():
    assert summary_line(report()) == ("STL accuracy 0.9500 | MTL-NDDR accuracy 0.9675 | 10 auxiliary classes, NMI(principal, "
                                      "aux) 0.0023 | best factor wall_hue: homogeneity 0.827, completeness 0.818")
    # no baseline, no known factors
    assert summary_line(report(stl=False, best=None)) == "MTL-NDDR accuracy 0.9675 | 10 auxiliary classes, NMI(principal, aux) 0.0023"


def test_markdown_names_the_auxiliary_gradient_rule_when_it_is_not_the_plain_sum():
    from detaux_ray.report import render_markdown as markdown

    r = report()
    assert "auxiliary gradient" not in markdown(r)
    r.mtl.results["mtl"].aux_gradient = "reverse"
    assert "MTL-NDDR + Detaux (`reverse` auxiliary gradient)" in markdown(r)


def test_markdown_says_how_every_model_trained():
    from detaux_ray.config import Config
    from detaux_ray.report import render_markdown as markdown

    r = report()
    assert "Every model trained" not in markdown(r)  # a report whose config predates the line
    cfg = Config()
    cfg.mtl.optimizer, cfg.mtl.lr, cfg.mtl.lr_schedule, cfg.mtl.epochs, cfg.mtl.auxiliary_weight = "sgd", 0.05, "cosine", 8, 0.5
    r.config = cfg.to_dict()
    assert ("Every model trained 8 epochs in batches of 32 with `sgd` at learning rate 0.05 (cosine); loss weights: "
            "principal 1, auxiliary 0.5 (`fixed`).") in markdown(r)


def test_markdown_sets_each_architecture_against_its_control():
    """mtl.controls: the architecture on the principal alone is named as the control, and the difference is stated."""
    from detaux_ray.report import render_markdown as markdown
    from detaux_ray.statistics import seed_statistics
    from test_results import fit

    assert model_name("nddr_alone", "nddr") == "NDDR on the principal alone (control)"
    r = report()
    assert "control" not in markdown(r)
    r.mtl.results["nddr_alone"] = fit("nddr", 0.9700)
    r.mtl.seeds = seed_statistics([0, 1], {"stl": [0.95, 0.96], "mtl": [0.9675, 0.97], "nddr_alone": [0.97, 0.975]},
                                  "nddr", {"mtl": "nddr_alone"})
    md = markdown(r)
    assert ("(`mtl.controls`): MTL-NDDR + Detaux 0.9675 vs NDDR on the principal alone (control) 0.9700 (-0.0025)." in md)
    assert "| model | accuracy | t | p | vs control: t | p |" in md
    t = r.mtl.seeds.models["mtl"]
    assert f"| MTL-NDDR + Detaux | 0.9688 +/- 0.0018 | {t['t_statistic']:.3f} | {t['p_value']:.3g} | {t['t_vs_control']:.3f} |" in md
    assert "| NDDR on the principal alone (control) | 0.9725 +/- 0.0035 |" in md


def test_the_report_says_when_discovery_used_the_whole_non_alpha_latent():
    from types import SimpleNamespace

    from detaux_ray.report import _dead

    def run(variance):
        return SimpleNamespace(config={"discover": {"dead_subspace_frac": 0.01}, "disentangle": {"principal_subspace": 0}},
                               discover=SimpleNamespace(subspace_scores={"variance": variance}))

    assert "not considered: subspace 2" in _dead(run([1.0, 0.5, 1e-4, 0.2]))
    fell_back = _dead(run([1.0, 1e-4, 1e-4, 1e-5]))  # every nuisance subspace below the cut: all of them were used
    assert "whole non-alpha latent" in fell_back and "not considered" not in fell_back
    assert _dead(run([1.0, 0.5, 0.3])) == ""
