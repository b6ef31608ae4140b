"""report.md / report.json of a pipeline run (no Ray), from its typed `results.Report`."""

from __future__ import annotations

from pathlib import Path

from .artifacts import write_json, write_text
from .results import Report, control_keys


def _label_use(ds) -> list[str]:
    """With unlabelled training images (data.labelled_frac): what each stage used."""
    if ds.n_labelled is None or ds.n_labelled == ds.n_train:
        return []
    return ["", f"**{ds.n_labelled} of the {ds.n_train} training images have their principal label.** Stage 1 drew its "
            f"pairs from those {ds.n_labelled} and reconstructed the other {ds.n_train - ds.n_labelled} too; discovery embedded and labelled all {ds.n_train}; the multi-task models "
            f"trained the auxiliary task on all {ds.n_train} images and the principal task on the {ds.n_labelled} "
            f"labels; STL, MAXL, AuxiLearn and the principal-only controls trained on the {ds.n_labelled} labelled "
            f"images, repeated in each epoch to as many steps as the models on every image."]


def _fallback(r: Report) -> list[str]:
    """Stage 1 trained a second time with the remedy formulation (Pipeline.fall_back): why, and with what."""
    if not r.fallback:
        return []
    sets = " ".join(f"`{o}`" for o in r.fallback["overrides"])
    return ["", f"**Stage 1 ran twice.** After the first, discovery stopped: {r.fallback['reason']}. "
            f"Stage 1 was trained again with {sets}; every result below is from that second run (its stages are in "
            f"`fallback/`, the first stage 1 in `{r.fallback['first_stage_1']}/`)."]


def _restarts(r: Report) -> list[str]:
    """Stage 1 trained disentangle.restarts times, discovery on each: the table, and which one the run kept."""
    if not r.restarts:
        return []
    def num(v, fmt=".3f"):
        return "-" if v is None else format(v, fmt)
    lines = ["", f"**Stage 1 ran {len(r.restarts)} times** (`disentangle.restarts`), each with its own seed, and "
             "discovery on each; the run kept the restart whose discovered classes score highest (level separation x "
             "entropy x (1 - NMI with the principal); no hidden factor is read). Everything below is from the kept one.",
             "", "| restart | seed | principal in alpha / best other | auxiliary classes | NMI(principal, aux) | score | folder |",
             "|---|---|---|---|---|---|---|"]
    for x in r.restarts:
        what = (f"{num(x.get('principal_in_alpha'))} / {num(x.get('principal_best_other'))} | {x.get('n_classes', '-')} | "
                f"{num(x.get('nmi_principal_aux'))} | {num(x.get('score'))}" if "stopped" not in x else
                "constant nuisance latent | - | - | -")
        lines.append(f"| {x['restart']}{' (kept)' if x['kept'] else ''} | {x['seed']} | {what} | "
                     f"{'`' + x['folder'] + '/`' if x.get('folder') else 'stage store'} |")
    return lines


def _placement(r: Report) -> list[str]:
    """Where the training stages ran, when on more than one node or after a restart (a lost worker or node)."""
    workers = r.config.get("resources", {}).get("num_workers", 1)
    fits = {"stage 1": r.disentangle, **{f"stage 3 `{k}`": m for k, m in r.mtl.results.items()}}
    said = [f"{name} on {f.nodes} node{'s' if f.nodes != 1 else ''}" + (f", its worker group restarted {f.restarts} time(s) from the newest "
                                            "checkpoint" if f.restarts else "")
            for name, f in fits.items() if f.nodes > 1 or f.restarts]
    if not said:
        return []
    return ["", f"Training ran on {workers} worker(s) per model: " + "; ".join(said) + ". A restart means a worker or "
            "its node was lost; training went on from the last epoch saved."]


def render_markdown(r: Report) -> str:
    ds, models, diag = r.dataset, r.mtl.results, r.diagnostics
    lines = [
        "# Detaux run report",
        "",
        f"Dataset `{ds.name}`, principal task `{ds.principal}` ({ds.n_principal_classes} classes), "
        f"{ds.n_train} training / {ds.n_val} validation / {ds.n_test} held-out test images.",
        *_label_use(ds),
        *_placement(r),
        *_fallback(r),
        *_restarts(r),
        "",
        "## Principal-task accuracy on the held-out split (Table 1 style)",
        "",
        "| model | tasks | principal accuracy | validation accuracy | parameters | training time (s) |",
        "|---|---|---|---|---|---|",
    ]
    order = ["stl", "mtl"] + sorted(k for k in models if k not in ("stl", "mtl", "entangled")) + ["entangled"]
    trained = {k: m.model for k, m in models.items() if k != "entangled" and not k.endswith("_alone")}
    controls = {k: c for k, c in control_keys(trained).items() if c in models}  # mtl.controls: model key -> control
    for key in [k for k in order if k in models]:  # STL, the MTL model, the compared ones, the ablation
        m = models[key]
        val = f"{m.val_principal_accuracy:.4f}" if m.val_principal_accuracy is not None else "-"
        how = f" (`{m.aux_gradient}` auxiliary gradient)" if m.aux_gradient != "sum" else ""
        lines.append(f"| {model_name(key, m.model)}{how} | {', '.join(m.tasks)} | {m.test_principal_accuracy:.4f} | {val} | "
                     f"{m.parameters:,} | {m.wall_time_s} |")
    mc = r.config.get("mtl", {})
    if "optimizer" in mc:  # how every model above trained (a report written before the key existed has no line)
        lines += ["", f"Every model trained {mc['epochs']} epochs in batches of {mc['batch_size']} with "
                  f"`{mc['optimizer']}` at learning rate {mc['lr']:g} ({mc['lr_schedule']}); loss weights: principal "
                  f"{mc['principal_weight']:g}, auxiliary {mc['auxiliary_weight']:g} (`{mc['loss_weighting']}`)."]
    if controls:  # mtl.controls: what the auxiliary task adds to its architecture (HPS's control is STL)
        lines += ["", "The discovered task's own effect, each architecture against itself trained on the principal alone "
                  "(`mtl.controls`): " + "; ".join(
                      f"{model_name(k, models[k].model)} {models[k].test_principal_accuracy:.4f} vs "
                      f"{model_name(c, models[c].model)} {models[c].test_principal_accuracy:.4f} "
                      f"({models[k].test_principal_accuracy - models[c].test_principal_accuracy:+.4f})"
                      for k, c in controls.items()) + "."]
    seeds = r.mtl.seeds
    if seeds:
        lines += ["", f"Over {len(seeds.seeds)} seeds ({', '.join(map(str, seeds.seeds))}): mean +/- sample std of "
                  "the principal test accuracy, and a Welch t-test of each model against STL"
                  + (" and against its own architecture on the principal alone" if controls else "") + ":", "",
                  "| model | accuracy | t | p |" + (" vs control: t | p |" if controls else ""),
                  "|---|---|---|---|" + ("---|---|" if controls else "")]
        for key in [k for k in order if k in seeds.models]:
            row = seeds.models[key]
            test = f"{row['t_statistic']:.3f} | {row['p_value']:.3g}" if "p_value" in row else "- | -"
            if controls:
                test += f" | {row['t_vs_control']:.3f} | {row['p_vs_control']:.3g}" if "p_vs_control" in row else " | - | -"
            lines.append(f"| {model_name(key, models[key].model)} | {row['mean']:.4f} +/- {row['std']:.4f} | {test} |")
    abl = r.mtl.entangled_ablation
    if abl:
        d = abl.diagnostics
        lines.append(f"\nEntangled ablation: the plain autoencoder's latent clustered by `{abl.clusterer}` into "
                     f"{d.n_aux_classes} classes, NMI(principal, aux) {d.nmi_principal_aux:.4f}"
                     + (f", best factor {d.best_factor} (V-measure {d.best_scores()['v_measure']:.4f})"
                        if d.best_factor else "") + ".")
    tasks = r.discover.auxiliary_tasks
    if len(tasks) > 1:
        lines += ["", "## Auxiliary tasks", "", "| task | subspace | classes | NMI(principal, aux) | best factor |",
                  "|---|---|---|---|---|"]
        for t in tasks:
            lines.append(f"| {t.task} | {_where(t)} | {t.diagnostics.n_aux_classes} | "
                         f"{t.diagnostics.nmi_principal_aux:.4f} | {t.diagnostics.best_factor} |")
    card = r.discover.scorecard
    if card:
        from .disentangle.scorecard import Scorecard

        sc = Scorecard.from_dict(card)
        sep = sc.principal_separation()
        lines += ["", "## Stage 1 scorecard: which subspace holds which factor", "",
                  f"kNN probe of every subspace (and of the whole latent) for each known factor, scored "
                  f"(accuracy - majority) / (1 - majority): 0 = chance, 1 = perfect ({sc.n_fit} images to fit, "
                  f"{sc.n_eval} to score). The principal factor should be high in alpha = subspace {sc.alpha} and low "
                  f"elsewhere; the chosen subspace should hold one other factor.", "",
                  f"![scorecard]({r.scorecard_png})", ""]
        lines += sc.markdown()
        if r.traversal_png:
            lines += ["", "Latent traversals (the paper's Figure 3): each row moves one subspace from one training image "
                      "to another of a different principal class, the rest held; the principal should change only "
                      "in alpha's row.", "", f"![traversals]({r.traversal_png})"]
        ratio = "inf" if sep["ratio"] == float("inf") else f"{sep['ratio']:.1f}"
        lines += ["", f"Principal `{sc.principal}` in alpha: **{sep['in_alpha']:.3f}**; best other subspace "
                  f"{sep['best_other']:.3f} (ratio {ratio})."]
        if sc.skipped:
            lines.append("Not factors: " + "; ".join(f"`{k}` ({v})" for k, v in sc.skipped.items()) + ".")
    first = r.discover.first
    lines += [
        "",
        "## Discovered auxiliary task (Table 3 style)",
        "",
        _chosen(r.discover, first) + _dead(r),
        f"- clusterer: `{first.clusterer}` {first.clusterer_params}",
        f"- auxiliary classes: {diag.n_aux_classes}, sizes {diag.cluster_sizes}",
        f"- NMI(principal, auxiliary) = {diag.nmi_principal_aux:.4f}, AMI = {diag.ami_principal_aux:.4f}, "
        f"chi-square independence p-value = {diag.chi2_p_value:.3g}",
        "",
    ]
    if diag.factor_scores:
        lines += ["| hidden factor | homogeneity | completeness | V-measure |", "|---|---|---|---|"]
        for f, s in diag.factor_scores.items():
            mark = " (best match)" if f == diag.best_factor else ""
            lines.append(f"| {f}{mark} | {s['homogeneity']:.4f} | {s['completeness']:.4f} | {s['v_measure']:.4f} |")
        lines.append("")
    sc = r.discover.subspace_scores
    meaning = {"l_dist": "smaller wins", "dot": "|<s_j, s_alpha>|, closer to 0 wins",
               "cluster": "silhouette x (1 - NMI with the principal), larger wins",
               "calinski": "between / within sum of squares of the same clusters x (1 - NMI), larger wins"}
    shown = [c for c in meaning if c in sc]  # cluster and calinski: only where they choose (discover.space=subspace)
    lines += ["Per-subspace criteria (" + "; ".join(f"{c}: {meaning[c]}" for c in shown) + "):", "",
              "| subspace | " + " | ".join(shown) + " | variance |", "|---" * (len(shown) + 2) + "|"]
    for j in range(len(sc["variance"])):
        lines.append(f"| {j} | " + " | ".join(f"{sc[c][j]:.4g}" for c in shown) + f" | {sc['variance'][j]:.4g} |")
    comp = r.discover.component_scores
    if comp and "score" in comp:
        lines += ["", "Independent components of the nuisance latent (`discover.space=ica`), each the start of the "
                  "clusterer, refined in all of them; the classes of largest score (level separation x the entropy of "
                  "the classes x (1 - NMI with the principal)) are the task:", "",
                  "| component | kurtosis | classes | level separation | score |", "|---|---|---|---|---|"]
        for c, (ku, n, lv, sc) in enumerate(zip(comp["kurtosis"], comp["classes"], comp["level_separation"], comp["score"])):
            lines.append(f"| {c} | {ku:.3f} | {n or '-'} | {lv:.3f} | {sc:.4g} |")
    lines += ["", "## Stages", "", "| stage | wall time (s) | this run |", "|---|---|---|"]
    for name, s in r.stages.items():
        lines.append(f"| {name} | {s.wall_time_s} | {'reused' if s.reused else 'ran'} |")
    lines.append("")
    return "\n".join(lines)


def write_report(run_dir: Path, report: Report) -> None:
    write_json(Path(run_dir) / "report.json", report.to_dict())
    write_text(Path(run_dir) / "report.md", render_markdown(report))


def model_name(key: str, kind: str) -> str:
    """A report row's name: STL, the Detaux models, the controls, the peers that learn their own labels, the ablation."""
    if key == "stl":
        return "STL"
    if key == "entangled":
        return f"MTL-{kind.upper()} + entangled-AE labels (ablation)"
    if key.endswith("_alone"):
        return f"{kind.upper()} on the principal alone (control)"
    if kind in ("maxl", "auxilearn"):
        return {"maxl": "MAXL (learned labels)", "auxilearn": "AuxiLearn (learned labels)"}[kind]
    return f"MTL-{kind.upper()} + Detaux"


def summary_line(r: Report) -> str:
    """One line for the terminal: the principal accuracies and what the discovered task is."""
    diag, m = r.diagnostics, r.multitask
    fs = diag.best_scores()
    stl = f"STL accuracy {r.stl.test_principal_accuracy:.4f} | " if r.stl else ""
    return (f"{stl}MTL-{m.model.upper()} accuracy {m.test_principal_accuracy:.4f} | {diag.n_aux_classes} auxiliary "
            f"classes, NMI(principal, aux) {diag.nmi_principal_aux:.4f}"
            + (f" | best factor {diag.best_factor}: homogeneity {fs['homogeneity']:.3f}, completeness "
               f"{fs['completeness']:.3f}" if fs else ""))


def _where(t) -> str:
    """What a task clustered: its subspace, or its independent component and the subspace it loads on most."""
    return str(t.subspace) if t.component is None else f"component {t.component} (mostly subspace {t.subspace})"


def _chosen(disc, first) -> str:
    """The report line saying what discovery clustered: the chosen subspace, or the independent component."""
    if first.component is None:
        return f"- chosen subspace: **{first.subspace}** by criterion `{disc.criterion}`" + _margin(disc)
    load = ", ".join(f"{j}: {v:.0%}" for j, v in enumerate(first.loadings or []) if v > 0)
    return (f"- clustered: **independent component {first.component}** of the live non-alpha subspaces together "
            f"(`discover.space=ica`), the start whose classes stand apart most as levels; its variance per subspace: {load}")


def _dead(r) -> str:
    """The subspaces skipped for their tiny variance (discover.dead_subspace_frac), which the criterion never saw."""
    from .discover.auxiliary import dead_subspaces, nuisance_subspaces  # no sklearn unless there is a stage 2 to describe

    frac = r.config.get("discover", {}).get("dead_subspace_frac", 0.0)
    alpha = r.config.get("disentangle", {}).get("principal_subspace", 0)
    var = r.discover.subspace_scores.get("variance", [])
    dead = dead_subspaces(var, alpha, frac)
    if not dead:
        return ""
    if nuisance_subspaces(var, alpha, frac)[1]:
        return (f"; every subspace but alpha was below {frac:g} x the largest variance (`discover.dead_subspace_frac`), "
                f"so discovery used the whole non-alpha latent")
    return (f"; not considered: subspace{'s' if len(dead) > 1 else ''} {', '.join(map(str, dead))} (variance below "
            f"{frac:g} x the largest, `discover.dead_subspace_frac`; 0 lets the criterion weigh them too)")


def _margin(disc) -> str:
    """How clearly the chosen subspace stood out, and what that meant where it was measured."""
    m = disc.criterion_margin
    if m is None:
        return ""
    text = f", {m:.2f}x the runner-up's score"
    if disc.criterion == "calinski":
        text += (" (on the quick preset's six seeds, >= 1.7 came with labels matching a hidden factor at >= 0.8, "
                 "<= 1.16 with <= 0.52: docs/studies/2026-11-28-stage1-study.md)")
    return text
