"""Every independent component as discovery's start, on saved stage-1 embeddings: what each start ends with.

For each `.npz` of `bench/suite.py --embeddings` and each independent component c of its nuisance latent, the
product's chain from c (`auxiliary.component_starts`: the clusterer on c, refined and recounted) and, for the
classes it ends with: J (between- over within-class sum of squares on their first discriminant), the level separation
(`auxiliary.level_separation`), NMI with the principal, the component's kurtosis, and the best-matching known
factor's min(homogeneity, completeness). Then each start rule's pick per file and its mean per dataset, and one JSON
line. Stage 1 is not retrained.

    python bench/discovery_starts.py /tmp/emb/*.npz --out bench/results/suite/starts/starts.json
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
from sklearn import metrics

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detaux_ray.config import load_config  # noqa: E402
from detaux_ray.discover.auxiliary import component_starts, diagnostics, nuisance_components  # noqa: E402
from detaux_ray.discover.clustering import choose_n_clusters, cluster  # noqa: E402
from detaux_ray.errors import DetauxError  # noqa: E402
from discovery_rules import finish  # noqa: E402  (this folder: the same JSON line)


def calinski_rule(u: np.ndarray, principal: np.ndarray, seed: int, max_clusters: int, n_points: int = 3000) -> int:
    """The start before 2026-12-07: the sub-Gaussian component (excess kurtosis < 0) of largest B/W of its own
    KMeans clusters x (1 - NMI with the principal); the others after it, by the same score."""
    from scipy.stats import kurtosis
    from sklearn.cluster import KMeans

    sub = np.random.default_rng([seed, 13]).permutation(len(u))[:n_points]
    cal = np.zeros(u.shape[1])
    for i in range(u.shape[1]):
        x = u[sub, i : i + 1]
        km = KMeans(max(2, choose_n_clusters(x, seed, max_clusters)[0]), n_init=2, random_state=seed).fit(x)
        total = float(((x - x.mean(0)) ** 2).sum())
        within = max(float(km.inertia_), 1e-12 * total)
        cal[i] = (total - within) / within * (1.0 - metrics.normalized_mutual_info_score(principal[sub], km.labels_))
    kurt = kurtosis(u, axis=0)
    return int(min(range(len(kurt)), key=lambda c: (kurt[c] >= 0, -cal[c])))


def separation_j(u: np.ndarray, labels: np.ndarray) -> float:
    """B / W of the classes on their first discriminant direction."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    z = LinearDiscriminantAnalysis(n_components=1).fit(u, labels).transform(u)[:, 0]
    total = float(((z - z.mean()) ** 2).sum())
    within = sum(float(((z[labels == i] - z[labels == i].mean()) ** 2).sum()) for i in np.unique(labels))
    return (total - within) / max(within, 1e-12 * total)


# Each rule: a key over one start's row (largest wins), or "calinski" (the rule on the component alone before
# 2026-12-07, `calinski_rule`). "SH" is the product's (`auxiliary.start_score`).
RULES = {
    "calinski": None,
    "J": lambda r: r["J"] * (1 - r["nmi"]),
    "S": lambda r: r["S"] * (1 - r["nmi"]),
    "JS": lambda r: r["J"] * r["S"] * (1 - r["nmi"]),
    "SlogC": lambda r: r["S"] * np.log(r["classes"]) * (1 - r["nmi"]),
    "SH": lambda r: r["S"] * r["entropy"] * (1 - r["nmi"]),
    "best": lambda r: r["min_hc"] or 0.0,  # the known factors: the ceiling, not a rule
}
SUB_GAUSSIAN = ("J", "S", "JS")  # also as "<rule>_sub": among the sub-Gaussian components only (all where none is)


def starts(path: Path, preset: str, overrides: list[str]) -> dict:
    data = np.load(path)
    s, principal = data["s"], data["principal"]
    factors = {k[len("factor_"):]: data[k] for k in data.files if k.startswith("factor_")}
    cfg = load_config(preset, overrides)
    d, disc = cfg.disentangle, cfg.discover
    try:
        u, _ = nuisance_components(s, d.principal_subspace, disc, cfg.seed)
        found = component_starts(u, principal, slice(None), disc, cfg.seed, cluster, lambda m: None)
    except DetauxError as e:
        return {"error": str(e).split(":")[0]}
    from scipy.stats import kurtosis
    kurt = kurtosis(u, axis=0)
    rows = []
    for st in sorted(found, key=lambda st: st.component):
        lab = st.result.labels
        diag = diagnostics(lab, principal, factors)
        best = diag.best_factor
        rows.append({"component": st.component, "kurtosis": round(float(kurt[st.component]), 3),
                     "classes": st.result.n_clusters, "J": round(separation_j(u, lab), 3), "S": round(st.levels, 3),
                     "entropy": round(float(-(p := np.unique(lab, return_counts=True)[1] / len(lab)) @ np.log(p)), 4),
                     "nmi": round(st.nmi, 4), "score": round(st.score, 4), "factor": best,
                     "min_hc": round(min(diag.best_scores()[m] for m in ("homogeneity", "completeness")), 3) if best else None})
    return {"components": int(u.shape[1]), "calinski_start": calinski_rule(u, principal, cfg.seed, disc.max_clusters),
            "starts": rows}


def pick(run: dict, rule: str) -> dict | None:
    ok = [r for r in run.get("starts", []) if "error" not in r]
    if not ok:
        return None
    if rule.endswith("_sub"):
        rule, ok = rule[:-4], [r for r in ok if r["kurtosis"] < 0] or ok
    if RULES[rule] is None:
        return next((r for r in ok if r["component"] == run.get("calinski_start", run.get("product_start"))), None)
    return max(ok, key=RULES[rule])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("embeddings", nargs="+", help=".npz files (dataset_seedN.npz)")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--out", default=None, help="JSON to write")
    ap.add_argument("--from-json", action="store_true", help="the arguments are earlier --out files: rules only")
    args = ap.parse_args(argv)
    t0 = time.time()
    if args.from_json:
        runs = [r for p in args.embeddings for r in json.loads(Path(p).read_text())["runs"]]
    else:
        runs = []
        for path in map(Path, args.embeddings):
            run = {"file": path.name, "dataset": re.sub(r"_seed\d+$", "", path.stem), **starts(path, args.preset, args.overrides)}
            runs.append(run)
            for r in run.get("starts", []):
                print(f"| {path.stem} | {r['component']} | " + " | ".join(f"{k} {v}" for k, v in r.items() if k != "component"), flush=True)
    means: dict[str, dict[str, float]] = defaultdict(dict)
    for dataset in sorted({r["dataset"] for r in runs}):
        of = [r for r in runs if r["dataset"] == dataset]
        for rule in [*RULES, *(f"{r}_sub" for r in SUB_GAUSSIAN)]:
            picks = [pick(r, rule) for r in of]
            vals = [(p or {}).get("min_hc") or 0.0 for p in picks]
            means[dataset][rule] = round(float(np.mean(vals)), 3)
            print(f"{dataset} {rule}: mean {np.mean(vals):.3f}, >= 0.7 at {sum(v >= 0.7 for v in vals)} of {len(vals)} "
                  f"({', '.join(f'{v:.2f}' for v in vals)})")
    out = {"bench": "discovery_starts", "preset": args.preset, "overrides": args.overrides, "means": means, "runs": runs,
           "wall_s": round(time.time() - t0, 1), "host": platform.node(), "date": time.strftime("%Y-%m-%d")}
    return finish(out, args.out)


if __name__ == "__main__":
    main()
