"""Label efficiency: STL against the multi-task model on Detaux's labels, at several fractions of labelled images.

For each fraction f (`data.labelled_frac`), one pipeline run: stage 1 and discovery once (seed 0), then STL and
the multi-task model (and any `mtl.compare` models) over `--seeds` seeds on those labels (`mtl.seeds`); the stage
store reuses stages 1 and 2 when the same fraction is run again. STL trains on the f labelled images, the multi-task
model on every training image with the principal loss on the labelled ones (docs/method.md, "Few labels"). Principal
accuracy on the held-out test split; a table (mean +/- std, Welch p), a plot (accuracy against f, log x), one JSON line:

    python bench/label_efficiency.py --fractions 0.01 0.03 0.1 0.3 1 --seeds 5 --out bench/results/labels/shapes
    python bench/label_efficiency.py --set data.dataset=colour_digits --set data.principal=label --set data.noise=0 \\
        --out bench/results/labels/colour_digits
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]


def commit() -> str:
    """The tree's commit; from a copy without git (e.g. a tar of the tree, so a long bench survives edits), the
    environment's DETAUX_COMMIT names it."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        sha = ""
    return sha or os.environ.get("DETAUX_COMMIT", "")


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    fr = [r["labelled_frac"] for r in rows]
    for key, name in (("stl", "STL (labelled images only)"), ("mtl", "MTL + Detaux (every image)")):
        mean = [r[key]["mean"] for r in rows]
        std = [r[key]["std"] for r in rows]
        ax.errorbar(fr, mean, yerr=std, marker="o", capsize=3, label=name)
    for key in sorted({k for r in rows for k in r.get("others", {})}):
        at = [r for r in rows if key in r["others"]]
        ax.errorbar([r["labelled_frac"] for r in at], [r["others"][key]["mean"] for r in at],
                    yerr=[r["others"][key]["std"] for r in at], marker="s", capsize=3, linestyle="--", label=f"{key} (labelled images only)")
    ax.set_xscale("log")
    ax.set_xlabel("fraction of training images with their principal label")
    ax.set_ylabel("principal accuracy (held-out test)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3, 1.0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", required=True, help="folder for the runs, table.md, label_efficiency.png and the JSON")
    args = ap.parse_args(argv)

    from detaux_ray.recipe import main as pipeline

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows, t0 = [], time.time()
    for f in args.fractions:
        run_dir = out / f"frac_{f:g}"
        sets = [*args.overrides, f"data.labelled_frac={f:g}", f"mtl.seeds={args.seeds}"]
        argv = ["--preset", args.preset, "--run-dir", str(run_dir), "--stage-store", str(out / "stages")]
        code = pipeline(argv + [a for s in sets for a in ("--set", s)])
        if code != 0:
            raise SystemExit(f"the run at labelled_frac={f:g} exited {code}: see {run_dir}")
        rep = json.loads((run_dir / "report.json").read_text())
        seeds = rep["seeds"]
        row = {"labelled_frac": f, "n_labelled": rep["dataset"]["n_labelled"], "n_train": rep["dataset"]["n_train"],
               "labels_best_factor": rep["best_factor"], "nmi_principal_aux": rep["nmi_principal_aux"],
               "labels_min_hc": min(rep["factor_scores"][rep["best_factor"]][m] for m in ("homogeneity", "completeness"))
               if rep["best_factor"] else None,
               "principal_in_alpha": rep["scorecard"]["principal_separation"]["in_alpha"],  # on labelled images
               "principal_best_other": rep["scorecard"]["principal_separation"]["best_other"],
               "stage1_ran_twice": bool(rep.get("fallback"))}
        for key in ("stl", "mtl"):
            m = seeds["models"][key]
            row[key] = {"mean": m["mean"], "std": m["std"], "accuracy": seeds["accuracy"][key]}
        # mtl.compare's models (e.g. MAXL, AuxiLearn: labelled images only, their own auxiliary labels), against STL
        row["others"] = {k: {"mean": m["mean"], "std": m["std"], "accuracy": seeds["accuracy"][k], "p_value": m.get("p_value")}
                         for k, m in seeds["models"].items() if k not in ("stl", "mtl")}
        row["p_value"] = seeds["models"]["mtl"].get("p_value")
        row["mtl_minus_stl"] = row["mtl"]["mean"] - row["stl"]["mean"]
        rows.append(row)
        print(f"[labels] f={f:g}: STL {row['stl']['mean']:.4f} +/- {row['stl']['std']:.4f}, MTL "
              f"{row['mtl']['mean']:.4f} +/- {row['mtl']['std']:.4f}, p = {row['p_value']}", flush=True)
    dataset = next((s.split("=", 1)[1] for s in args.overrides if s.startswith("data.dataset=")), "shapes")
    others = sorted({k for r in rows for k in r["others"]})
    lines = ["| labelled fraction | labelled images | STL | MTL + Detaux | MTL - STL | Welch p | principal in alpha / other | "
             "labels: best factor, min(H, C) |" + "".join(f" {k} (p vs STL) |" for k in others),
             "|---|---|---|---|---|---|---|---|" + "---|" * len(others)]
    for r in rows:
        lab = f"{r['labels_best_factor']} {r['labels_min_hc']:.2f}" if r["labels_best_factor"] else f"NMI {r['nmi_principal_aux']:.3f}"
        twice = " (stage 1 ran twice)" if r["stage1_ran_twice"] else ""
        lines.append(f"| {r['labelled_frac']:g} | {r['n_labelled']} of {r['n_train']} | {r['stl']['mean']:.4f} +/- "
                     f"{r['stl']['std']:.4f} | {r['mtl']['mean']:.4f} +/- {r['mtl']['std']:.4f} | "
                     f"{100 * r['mtl_minus_stl']:+.2f} points | {r['p_value']:.3g} | {r['principal_in_alpha']:.2f} / "
                     f"{r['principal_best_other']:.2f}{twice} | {lab} |"
                     + "".join(f" {r['others'][k]['mean']:.4f} +/- {r['others'][k]['std']:.4f} ({_p(r['others'][k]['p_value'])}) |"
                               if k in r["others"] else " - |" for k in others))
    (out / "table.md").write_text("\n".join(lines) + "\n")
    plot(rows, out / "label_efficiency.png", f"{dataset}, {args.preset} preset, {args.seeds} seeds")
    result = {"bench": "label_efficiency", "dataset": dataset, "preset": args.preset, "seeds": args.seeds,
              "overrides": args.overrides, "rows": rows, "wall_s": round(time.time() - t0, 1),
              "machine": f"{platform.machine()}, {platform.processor() or platform.node()}",
              "date": time.strftime("%Y-%m-%d"), "commit": commit()}
    (out / "label_efficiency.json").write_text(json.dumps(result, indent=1))
    print("\n".join(lines))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
