"""Stage-1 restarts chosen by discovery's own score, simulated on the suite's seeds (no retraining).

Stage 1's outcome varies most from seed to seed (the same formulation gives `shapes` labels of 0.64 at one seed and
0.97 at the next). If stage 1 were trained n times and the run kept whose discovery scores highest (the kept start's
`auxiliary.start_score`: level separation x entropy x (1 - NMI with the principal); no hidden factor is read), how
good would the labels be? Every n-subset of a dataset's seeds is one such restart set; for each, the run of largest
score is kept. Per dataset and n: the kept labels' mean min(homogeneity, completeness), the share of sets whose kept
labels reach 0.7 and 0.8, and how often the score kept the better run of the set. A run whose discovery found no
start (a constant nuisance latent) is kept last, its labels 0. Ends with one JSON line.

    python bench/restarts.py bench/results/suite/starts/recount_*.json --max 3
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
from pathlib import Path


def runs_by_dataset(paths: list[str]) -> dict[str, list[tuple[float, float]]]:
    """(score, labels min(H, C)) of each run's kept start, per dataset, from `bench/discovery_starts.py` outputs."""
    out: dict[str, list[tuple[float, float]]] = {}
    for p in paths:
        for run in json.loads(Path(p).read_text())["runs"]:
            dataset = run.get("dataset") or re.sub(r"_seed\d+\.npz$", "", run["file"])
            starts = run.get("starts") or []
            kept = max(starts, key=lambda s: s["score"]) if starts else {"score": float("-inf"), "min_hc": 0.0}
            out.setdefault(dataset, []).append((float(kept["score"]), float(kept["min_hc"] or 0.0)))
    return out


def restarts(runs: list[tuple[float, float]], n: int) -> dict:
    """Every n-subset of runs: the labels of its largest-score run, summarised."""
    sets = list(itertools.combinations(runs, n))
    kept = [max(s, key=lambda r: r[0])[1] for s in sets]
    better = [k == max(r[1] for r in s) for k, s in zip(kept, sets)]
    return {"sets": len(sets), "mean_labels": round(sum(kept) / len(kept), 3),
            "at_least_0.7": round(sum(k >= 0.7 for k in kept) / len(kept), 3),
            "at_least_0.8": round(sum(k >= 0.8 for k in kept) / len(kept), 3),
            "score_kept_the_better": round(sum(better) / len(better), 3)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("starts", nargs="+", help="bench/discovery_starts.py --out files")
    ap.add_argument("--max", type=int, default=3, help="largest number of restarts simulated")
    args = ap.parse_args(argv)
    table: dict[str, dict[int, dict]] = {}
    for dataset, runs in sorted(runs_by_dataset(args.starts).items()):
        table[dataset] = {n: restarts(runs, n) for n in range(1, min(args.max, len(runs)) + 1)}
        for n, r in table[dataset].items():
            print(f"| {dataset} ({len(runs)} seeds) | {n} | {r['mean_labels']:.3f} | {r['at_least_0.7']:.2f} | "
                  f"{r['at_least_0.8']:.2f} | {r['score_kept_the_better']:.2f} |", flush=True)
    out = {"bench": "restarts", "inputs": args.starts, "restarts": table}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
