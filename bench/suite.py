"""Judge stage 1 and discovery on the dataset suite, over several seeds: one harness run per (dataset, seed).

Each run is `bench/stage1_study.py` (plain PyTorch, the preset's own settings) with only `data.*` changed for the
dataset, and any `--set` given here added to every run. The table gives, per dataset and seed, the principal in
alpha and the best other subspace, what the whole latent holds (the scorecard's `all` row), the labels' best
hidden factor with min(homogeneity, completeness) under discover.space=ica, and NMI(principal, auxiliary); it
ends with one JSON line.

    python bench/suite.py --seeds 0 1 2 3 4 5 --out bench/results/suite/default
    python bench/suite.py --datasets sprites colour_digits --seeds 0 --set disentangle.detach_alpha=true --out /tmp/x
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# Only data.* differs between datasets. noise: the paper's 15% salt-and-pepper is part of the `shapes` protocol;
# the other kinds are used as they are.
SUITE: dict[str, list[str]] = {
    "shapes": [],
    "sprites": ["data.dataset=sprites", "data.principal=scale", "data.noise=0"],
    "colour_digits": ["data.dataset=colour_digits", "data.principal=label", "data.noise=0"],
    "digits": ["data.dataset=digits", "data.principal=label"],
}


def summary(row: dict) -> dict:
    final = row["final"]
    card = final["scorecard"]
    sep = card["principal_separation"]
    disc = final["discovery"].get("ica") or {}
    all_row = dict(zip(card["factors"], card["scores"][-1]))
    return {"in_alpha": round(sep["in_alpha"], 3), "best_other": round(sep["best_other"], 3),
            "whole_latent": {f: round(v, 2) for f, v in all_row.items()},
            "labels_factor": disc.get("best_factor"),
            "labels_min_hc": (round(min(disc.get("homogeneity", 0), disc.get("completeness", 0)), 3)
                              if disc and disc.get("best_factor") else None),
            "n_aux_classes": disc.get("n_clusters"), "nmi_principal_aux": disc.get("nmi_principal_aux"),
            "discovery_error": final["discovery"].get("error"), "variance": final["variance"],
            "rec_fg": final.get("rec_fg"), "rec_bg": final.get("rec_bg"), "train_time_s": row["train_time_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(SUITE), choices=list(SUITE))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4, 5])
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--harness-arg", action="append", default=[], help="passed to stage1_study.py as it is")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True, help="folder for each run's JSON row and log")
    ap.add_argument("--embeddings", default="", help="also save each run's final embeddings (.npz) in this folder")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.embeddings:
        Path(args.embeddings).mkdir(parents=True, exist_ok=True)
    harness = Path(__file__).resolve().parent / "stage1_study.py"
    results, t0 = {}, time.time()
    for ds in args.datasets:
        for seed in args.seeds:
            name = f"{ds}_seed{seed}"
            row_path = out / f"{name}.json"
            if not row_path.exists():  # a finished run is kept: the suite resumes where it stopped
                sets = [f"seed={seed}", *SUITE[ds], *args.overrides]
                cmd = [sys.executable, str(harness), "--name", name, "--threads", str(args.threads), "--every", "7",
                       "--out", str(row_path), *args.harness_arg,
                       *(["--embeddings", str(Path(args.embeddings) / f"{name}.npz")] if args.embeddings else []), *[a for s in sets for a in ("--set", s)]]
                with open(out / f"{name}.log", "w") as log:
                    if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                        print(f"{name}: failed, see {out / (name + '.log')}", flush=True)
                        continue
            results[name] = summary(json.loads(row_path.read_text()))
            r = results[name]
            print(f"| {ds} | {seed} | {r['in_alpha']:.2f} / {r['best_other']:.2f} | "
                  + ", ".join(f"{f} {v:.2f}" for f, v in r["whole_latent"].items()) + " | "
                  + (r["discovery_error"] if r["discovery_error"] else
                     f"{r['labels_factor']} {r['labels_min_hc']:.2f} ({r['n_aux_classes']} classes)" if r["labels_factor"]
                     else f"no known factor ({r['n_aux_classes']} classes)")
                  + f" | {r['nmi_principal_aux']} |", flush=True)
    print(json.dumps({"bench": "suite", "overrides": args.overrides, "harness_args": args.harness_arg,
                      "wall_s": round(time.time() - t0, 1), "runs": results}))


if __name__ == "__main__":
    main()
