"""report.md / report.json of a pipeline run (no Ray)."""

from __future__ import annotations

from pathlib import Path

from .artifacts import write_json, write_text


def build_report(cfg_dict: dict, dataset: dict, stage1: dict, stage2: dict, stage3: dict, stages: dict) -> dict:
    diag = stage2["diagnostics"]
    mtl = stage3["results"]
    return {
        "stl_accuracy": mtl["stl"]["test_principal_accuracy"] if "stl" in mtl else None,
        "mtl_accuracy": mtl["mtl"]["test_principal_accuracy"],
        "mtl_model": mtl["mtl"]["model"],
        "models": mtl,
        "nmi_principal_aux": diag["nmi_principal_aux"],
        "ami_principal_aux": diag["ami_principal_aux"],
        "chi2_p_value": diag["chi2_p_value"],
        "n_aux_classes": diag["n_aux_classes"],
        "cluster_sizes": diag["cluster_sizes"],
        "factor_scores": diag["factor_scores"],
        "best_factor": diag.get("best_factor"),
        "scorecard": stage2.get("scorecard"),
        "chosen_subspace": stage2["chosen_subspace"],
        "subspace_criterion": stage2["criterion"],
        "subspace_scores": stage2["subspace_scores"],
        "clusterer": stage2["clusterer"],
        "clusterer_params": stage2["clusterer_params"],
        "disentangle_final_losses": stage1.get("metrics", {}),
        "auxiliary_tasks": [{k: v for k, v in t.items() if k != "diagnostics"} | {
            "n_classes": t["diagnostics"]["n_aux_classes"], "nmi_principal_aux": t["diagnostics"]["nmi_principal_aux"],
            "best_factor": t["diagnostics"].get("best_factor")} for t in stage2.get("auxiliary_tasks", [])],
        "seeds": stage3.get("seeds"),
        "entangled_ablation": {k: v for k, v in stage3["entangled_ablation"].items() if k != "result"}
        if "entangled_ablation" in stage3 else None,
        "dataset": dataset,
        "stages": stages,
        "config": cfg_dict,
    }


def render_markdown(r: dict) -> str:
    ds = r["dataset"]
    lines = [
        "# Detaux run report",
        "",
        f"Dataset `{ds['name']}`, principal task `{ds['principal']}` ({ds['n_principal_classes']} classes), "
        f"{ds['n_train']} training / {ds.get('n_val', 0)} validation / {ds['n_test']} held-out test images.",
        "",
        "## Principal-task accuracy on the held-out split (Table 1 style)",
        "",
        "| model | tasks | principal accuracy | validation accuracy | parameters | training time (s) |",
        "|---|---|---|---|---|---|",
    ]
    order = ["stl", "mtl"] + sorted(k for k in r["models"] if k not in ("stl", "mtl", "entangled")) + ["entangled"]
    for key in [k for k in order if k in r["models"]]:  # STL, the MTL model, the compared ones, the ablation
        m = r["models"][key]
        name = model_name(key, m["model"])
        val = f"{m['val_principal_accuracy']:.4f}" if "val_principal_accuracy" in m else "-"
        lines.append(f"| {name} | {', '.join(m['tasks'])} | {m['test_principal_accuracy']:.4f} | {val} | {m['parameters']:,} | {m['wall_time_s']} |")
    seeds = r.get("seeds")
    if seeds:
        lines += ["", f"Over {len(seeds['seeds'])} seeds ({', '.join(map(str, seeds['seeds']))}): mean +/- sample std of "
                  "the principal test accuracy, and a Welch t-test of each model against STL:", "",
                  "| model | accuracy | t | p |", "|---|---|---|---|"]
        for key in [k for k in order if k in seeds.get("models", {})]:
            row = seeds["models"][key]
            test = f"{row['t_statistic']:.3f} | {row['p_value']:.3g}" if "p_value" in row else "- | -"
            lines.append(f"| {model_name(key, r['models'][key]['model'])} | {row['mean']:.4f} +/- {row['std']:.4f} | {test} |")
    abl = r.get("entangled_ablation")
    if abl:
        d = abl["diagnostics"]
        lines.append(f"\nEntangled ablation: the plain autoencoder's latent clustered by `{abl['clusterer']}` into "
                     f"{d['n_aux_classes']} classes, NMI(principal, aux) {d['nmi_principal_aux']:.4f}"
                     + (f", best factor {d['best_factor']} (V-measure {d['factor_scores'][d['best_factor']]['v_measure']:.4f})"
                        if d.get("best_factor") else "") + ".")
    if len(r.get("auxiliary_tasks") or []) > 1:
        lines += ["", "## Auxiliary tasks", "", "| task | subspace | classes | NMI(principal, aux) | best factor |",
                  "|---|---|---|---|---|"]
        for t in r["auxiliary_tasks"]:
            lines.append(f"| {t['task']} | {t['subspace']} | {t['n_classes']} | {t['nmi_principal_aux']:.4f} | {t['best_factor']} |")
    card = r.get("scorecard")
    if card:
        from .scorecard import Scorecard

        sc = Scorecard.from_dict(card)
        sep = sc.principal_separation()
        lines += ["", "## Stage 1 scorecard: which subspace holds which factor", "",
                  f"kNN probe of every subspace (and of the whole latent) for each known factor, scored "
                  f"(accuracy - majority) / (1 - majority): 0 = chance, 1 = perfect ({sc.n_fit} images to fit, "
                  f"{sc.n_eval} to score). The principal factor should be high in alpha = subspace {sc.alpha} and low "
                  f"elsewhere; the chosen subspace should hold one other factor.", "",
                  f"![scorecard]({r.get('scorecard_png', 'discover/scorecard.png')})", ""]
        lines += sc.markdown()
        ratio = "inf" if sep["ratio"] == float("inf") else f"{sep['ratio']:.1f}"
        lines += ["", f"Principal `{sc.principal}` in alpha: **{sep['in_alpha']:.3f}**; best other subspace "
                  f"{sep['best_other']:.3f} (ratio {ratio})."]
        if sc.skipped:
            lines.append("Not factors: " + "; ".join(f"`{k}` ({v})" for k, v in sc.skipped.items()) + ".")
    lines += [
        "",
        "## Discovered auxiliary task (Table 3 style)",
        "",
        f"- chosen subspace: **{r['chosen_subspace']}** by criterion `{r['subspace_criterion']}`",
        f"- clusterer: `{r['clusterer']}` {r['clusterer_params']}",
        f"- auxiliary classes: {r['n_aux_classes']}, sizes {r['cluster_sizes']}",
        f"- NMI(principal, auxiliary) = {r['nmi_principal_aux']:.4f}, AMI = {r['ami_principal_aux']:.4f}, "
        f"chi-square independence p-value = {r['chi2_p_value']:.3g}",
        "",
    ]
    if r["factor_scores"]:
        lines += ["| hidden factor | homogeneity | completeness | V-measure |", "|---|---|---|---|"]
        for f, s in r["factor_scores"].items():
            mark = " (best match)" if f == r.get("best_factor") else ""
            lines.append(f"| {f}{mark} | {s['homogeneity']:.4f} | {s['completeness']:.4f} | {s['v_measure']:.4f} |")
        lines.append("")
    lines += ["Per-subspace criteria (l_dist: smaller wins; dot: |<s_j, s_alpha>|, closer to 0 wins; cluster: "
              "silhouette x (1 - NMI with the principal), larger wins):", "",
              "| subspace | l_dist | dot | cluster | variance |", "|---|---|---|---|---|"]
    sc = r["subspace_scores"]
    for j in range(len(sc["variance"])):
        cl = f"{sc['cluster'][j]:.4g}" if "cluster" in sc else "-"
        lines.append(f"| {j} | {sc['l_dist'][j]:.4g} | {sc['dot'][j]:.4g} | {cl} | {sc['variance'][j]:.4g} |")
    lines += ["", "## Stages", "", "| stage | wall time (s) | this run |", "|---|---|---|"]
    for name, s in r["stages"].items():
        lines.append(f"| {name} | {s['wall_time_s']} | {'reused' if s['reused'] else 'ran'} |")
    lines.append("")
    return "\n".join(lines)


def write_report(run_dir: Path, report: dict) -> None:
    write_json(Path(run_dir) / "report.json", report)
    write_text(Path(run_dir) / "report.md", render_markdown(report))


def model_name(key: str, kind: str) -> str:
    """A report row's name: STL, the Detaux models, the peers that learn their own labels, the ablation."""
    if key == "stl":
        return "STL"
    if key == "entangled":
        return f"MTL-{kind.upper()} + entangled-AE labels (ablation)"
    if kind in ("maxl", "auxilearn"):
        return {"maxl": "MAXL (learned labels)", "auxilearn": "AuxiLearn (learned labels)"}[kind]
    return f"MTL-{kind.upper()} + Detaux"


def summary_line(r: dict) -> str:
    """One line for the terminal: the principal accuracies and what the discovered task is."""
    best = r.get("best_factor")
    fs = r["factor_scores"].get(best, {}) if best else {}
    stl = f"STL accuracy {r['stl_accuracy']:.4f} | " if r["stl_accuracy"] is not None else ""
    return (f"{stl}MTL-{r['mtl_model'].upper()} accuracy {r['mtl_accuracy']:.4f} | {r['n_aux_classes']} auxiliary "
            f"classes, NMI(principal, aux) {r['nmi_principal_aux']:.4f}"
            + (f" | best factor {best}: homogeneity {fs['homogeneity']:.3f}, completeness {fs['completeness']:.3f}" if fs else ""))
