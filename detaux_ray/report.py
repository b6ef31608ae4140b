"""report.md / report.json of a pipeline run (no Ray)."""

from __future__ import annotations

from pathlib import Path

from .artifacts import write_json, write_text


def build_report(cfg_dict: dict, dataset: dict, stage1: dict, stage2: dict, stage3: dict, stages: dict) -> dict:
    diag = stage2["diagnostics"]
    mtl = stage3["results"]
    return {
        "stl_accuracy": mtl["stl"]["test_principal_accuracy"],
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
        "chosen_subspace": stage2["chosen_subspace"],
        "subspace_criterion": stage2["criterion"],
        "subspace_scores": stage2["subspace_scores"],
        "clusterer": stage2["clusterer"],
        "clusterer_params": stage2["clusterer_params"],
        "disentangle_final_losses": stage1.get("metrics", {}),
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
        f"{ds['n_train']} training / {ds['n_test']} held-out test images.",
        "",
        "## Principal-task accuracy on the held-out split (Table 1 style)",
        "",
        "| model | tasks | principal accuracy | parameters | training time (s) |",
        "|---|---|---|---|---|",
    ]
    for key, m in r["models"].items():
        name = "STL" if key == "stl" else f"MTL-{m['model'].upper()} + Detaux"
        lines.append(f"| {name} | {', '.join(m['tasks'])} | {m['test_principal_accuracy']:.4f} | {m['parameters']:,} | {m['wall_time_s']} |")
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
    lines += ["Per-subspace scores (l_dist: smaller is more disentangled; dot: |<s_j, s_alpha>|, closer to 0 wins):", "",
              "| subspace | l_dist | dot | variance |", "|---|---|---|---|"]
    sc = r["subspace_scores"]
    for j in range(len(sc["variance"])):
        lines.append(f"| {j} | {sc['l_dist'][j]:.4g} | {sc['dot'][j]:.4g} | {sc['variance'][j]:.4g} |")
    lines += ["", "## Stages", "", "| stage | wall time (s) | this run |", "|---|---|---|"]
    for name, s in r["stages"].items():
        lines.append(f"| {name} | {s['wall_time_s']} | {'reused' if s['reused'] else 'ran'} |")
    lines.append("")
    return "\n".join(lines)


def write_report(run_dir: Path, report: dict) -> None:
    write_json(Path(run_dir) / "report.json", report)
    write_text(Path(run_dir) / "report.md", render_markdown(report))
