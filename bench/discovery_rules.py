"""Discovery's rules side by side on saved stage-1 embeddings: the labels each setting gives, against the known factors.

Input: the `.npz` files that `bench/stage1_study.py --embeddings` (or `bench/suite.py --embeddings`) writes (final
subspaces s (N, k, d), the principal labels, every known factor). Each `--rule NAME:key=value,...` gives every file's labels as the product's
`discover()` makes them (discover.space=ica), with those `discover.*` / `seed` overrides on top of the preset (the
rules before 2026-12-07, without the refinement, the recount or the start from every component, are at commit
f31403a: `refine=none`, `recount=none`); stage 1 is not retrained,
so a discovery rule is judged on many runs in minutes. Per file and rule: the best-matching factor's
min(homogeneity, completeness), the number of classes, NMI(principal, auxiliary); then the mean per dataset and
rule, and one JSON line.

    python bench/discovery_rules.py /tmp/emb/*.npz --rule product: --rule hdbscan:discover.clusterer=hdbscan
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detaux_ray.config import load_config  # noqa: E402
from detaux_ray.discover.auxiliary import choose_starts, component_starts, diagnostics, nuisance_components  # noqa: E402
from detaux_ray.discover.clustering import cluster  # noqa: E402
from detaux_ray.errors import DetauxError  # noqa: E402


def run_rule(path: Path, preset: str, overrides: list[str]) -> dict:
    """Discovery's labels (discover.space=ica) on one file's embeddings under `overrides`, through the functions
    `discover()` calls for them (`nuisance_components`, `component_starts`, `choose_starts`), without the scorecard
    and subspace scores it also writes (they do not change the labels and take most of its time)."""
    data = np.load(path)
    s, principal = data["s"], data["principal"]
    factors = {k[len("factor_"):]: data[k] for k in data.files if k.startswith("factor_")}
    cfg = load_config(preset, overrides)
    d, disc = cfg.disentangle, cfg.discover
    if disc.space != "ica":
        raise SystemExit("bench/discovery_rules.py compares discover.space=ica rules")
    try:
        u, _ = nuisance_components(s, d.principal_subspace, disc, cfg.seed)
        start = choose_starts(component_starts(u, principal, slice(None), disc, cfg.seed, cluster, lambda m: None), 1)[0]
    except DetauxError as e:  # a constant latent: a result too
        return {"error": str(e).split(":")[0]}
    diag = diagnostics(start.result.labels, principal, factors)
    best = diag.best_factor
    return {"factor": best, "min_hc": round(min(diag.best_scores()[m] for m in ("homogeneity", "completeness")), 3) if best else None,
            "classes": diag.n_aux_classes, "nmi_principal_aux": round(diag.nmi_principal_aux, 4), "components": int(u.shape[1]),
            "start": start.component}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("embeddings", nargs="+", help=".npz files (dataset_seedN.npz)")
    ap.add_argument("--rule", action="append", required=True, help="NAME:key=value,key=value (empty after ':' = the preset)")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--out", default=None, help="JSON to write")
    args = ap.parse_args(argv)
    rules = {}
    for r in args.rule:
        name, _, sets = r.partition(":")
        rules[name] = [s for s in sets.split(",") if s]
    t0, rows = time.time(), []
    for path in map(Path, args.embeddings):
        dataset = re.sub(r"_seed\d+$", "", path.stem)
        for name, sets in rules.items():
            row = {"file": path.name, "dataset": dataset, "rule": name, **run_rule(path, args.preset, sets)}
            rows.append(row)
            what = row.get("error") or f"{row['factor']} {row['min_hc']} ({row['classes']} classes), NMI {row['nmi_principal_aux']}"
            print(f"| {path.stem} | {name} | {what} |", flush=True)
    means: dict[str, dict[str, float]] = defaultdict(dict)
    for dataset in sorted({r["dataset"] for r in rows}):
        for name in rules:
            vals = [r["min_hc"] or 0.0 for r in rows if r["dataset"] == dataset and r["rule"] == name and "error" not in r]
            if vals:
                means[dataset][name] = round(float(np.mean(vals)), 3)
                print(f"{dataset} {name}: mean min(H, C) {np.mean(vals):.3f} over {len(vals)} runs")
    out = {"bench": "discovery_rules", "rules": rules, "preset": args.preset, "means": means, "runs": rows,
           "wall_s": round(time.time() - t0, 1), "host": platform.node(), "date": time.strftime("%Y-%m-%d")}
    return finish(out, args.out)


def finish(out: dict, path: str | None) -> dict:
    """Write `out` to `path` (if given) and print it without its per-run rows as the one JSON line."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}))
    return out


if __name__ == "__main__":
    main()
