"""Tune Detaux on a dataset with Ray Tune + Optuna (ASHA early stopping, shared stage reuse, resumable).

    python jobs/tune.py --dataset shapes --num-samples 4
    python jobs/tune.py --dataset shapes --resume                      # continue a killed run
    python jobs/tune.py --dataset cars --data-path /data/stanford_cars  # a dataset read from its files
    python jobs/tune.py --space 'disentangle.k={choice: [4, 6]}' --set mtl.epochs=4

Writes <run-dir>/best.yaml (a preset for jobs/full_pipeline.py), trials.csv / trials.md, and Tune's experiment in
<run-dir>/tune (TensorBoard: tensorboard --logdir <run-dir>/tune).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout / ray job working dir

from detaux_ray.artifacts import check_writable_dir  # noqa: E402
from detaux_ray.cli import run_cli  # noqa: E402
from detaux_ray.config import CONFIG_DIR  # noqa: E402
from detaux_ray.data import DATASETS, build_source  # noqa: E402
from detaux_ray.errors import DataError  # noqa: E402
from detaux_ray.search import METRIC, SEARCH_DIR, load_search_spec  # noqa: E402
from detaux_ray.recipe import detaux  # noqa: E402  (the recipe every trial runs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="shapes", help=f"one of: {', '.join(DATASETS)} (default: shapes)")
    ap.add_argument("--data-path", default=None, help="local path or s3:// / gs:// URI of the dataset's files")
    ap.add_argument("--search", default=None, help="search spec in detaux_ray/presets/search/ or a YAML path (default: the dataset's, "
                                                   "else shapes)")
    ap.add_argument("--num-samples", type=int, default=4, help="trials to run (default: 4)")
    ap.add_argument("--seed", type=int, default=0, help="Optuna's sampler seed (default: 0)")
    ap.add_argument("--concurrent", type=int, default=0, help="trials at once (default 0: as many as the cluster holds)")
    ap.add_argument("--run-dir", default=None, help="default: runs/tune-<dataset>")
    ap.add_argument("--resume", action="store_true", help="continue the run in --run-dir (finished trials are kept)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="fix a config key for every trial, e.g. --set mtl.epochs=4 (repeatable)")
    ap.add_argument("--space", dest="space", action="append", default=[], metavar="KEY={DOMAIN: ARGS}",
                    help="replace one key's search domain, e.g. --space 'disentangle.k={choice: [4, 6]}' (repeatable)")
    args = ap.parse_args(argv)
    if args.num_samples < 1:
        ap.error("--num-samples must be >= 1")
    t0 = time.time()
    run_dir = Path(args.run_dir or Path("runs") / f"tune-{args.dataset}")
    out = {}

    def body() -> int:
        if args.dataset not in DATASETS:
            raise DataError(f"unknown dataset '{args.dataset}'; known: {', '.join(DATASETS)}")
        search = args.search or (args.dataset if (SEARCH_DIR / f"{args.dataset}.yaml").is_file() else "shapes")
        own_preset = (CONFIG_DIR / f"{args.dataset}.yaml").is_file() and args.search is None and args.dataset != "shapes"
        spec = load_search_spec(search, args.space, base=args.dataset if own_preset else "")
        overrides = [f"data.dataset={args.dataset}"] + ([f"data.path={args.data_path}"] if args.data_path else [])
        base = spec.base_config(overrides + args.overrides)
        build_source(base.data, base.seed)  # a missing or unreadable dataset fails here, before Ray starts
        check_writable_dir(run_dir)
        from detaux_ray.distributed.tune import STAGES, run_search  # Ray is imported only once the inputs are valid

        out["stages"] = STAGES
        out["spec"], out["summary"] = spec, run_search(spec, base, run_dir, args.num_samples, detaux, seed=args.seed,
                                                       max_concurrent=args.concurrent, resume=args.resume)
        return 0

    def interrupted() -> str:
        if "stages" in out:
            from detaux_ray.distributed.logs import silence_worker_logs

            silence_worker_logs()
        return f"finished trials are kept in {run_dir}; continue with the same command and --resume."

    code = run_cli(body, interrupted)
    if code:
        return code
    spec, summary, STAGES = out["spec"], out["summary"], out["stages"]
    best = summary["best"]
    counts = {}
    for t in summary["trials"]:
        counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
    print(f"\n{len(summary['trials'])} trials ({', '.join(f'{v} {k}' for k, v in counts.items())}); stage runs: "
          f"{summary['stages_run']} computed, {summary['stages_reused']} reused from earlier trials")
    print(f"best trial {best['trial']}: {METRIC} {best[METRIC]:.4f} (test {best['test_principal_accuracy']:.4f})")
    for key in spec.space:
        print(f"  {key} = {best['config'].get(key)}")
    print(f"trial table: {run_dir / 'trials.md'} (and .csv)\nbest preset: {summary['best_preset']}\n"
          f"run it:      python jobs/full_pipeline.py --preset {summary['best_preset']} --stage-store {run_dir / STAGES}\n"
          f"TensorBoard: tensorboard --logdir {run_dir / 'tune'}\n{time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
