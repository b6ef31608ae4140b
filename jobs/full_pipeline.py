"""Detaux end to end: disentangle -> discover an auxiliary task -> STL vs multi-task learning, with a report.

    python jobs/full_pipeline.py [--preset NAME_OR_YAML] [--run-dir DIR] [--set section.key=value ...]
                                 [--stage-store DIR]   (reuse stages a tuning run already computed)
    ray job submit --working-dir . -- python jobs/full_pipeline.py --preset quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout / ray job working dir

from detaux_ray.cli import run_cli  # noqa: E402
from detaux_ray.config import load_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="quick", help="preset name in configs/ or a path to a YAML file (default: quick)")
    ap.add_argument("--run-dir", default=None, help="where every stage writes its artifacts (default: runs/<preset>)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. --set disentangle.epochs=10 (repeatable)")
    ap.add_argument("--stage-store", default=None, metavar="DIR",
                    help="a shared stage store (a tune run's <run-dir>/stages): stages already computed there for "
                         "this config are reused, new ones are added to it")
    args = ap.parse_args(argv)
    t0 = time.time()
    state = {"run_dir": Path(args.run_dir or Path("runs") / Path(args.preset).stem), "pipeline": None}

    def body() -> int:
        cfg = load_config(args.preset, args.overrides)
        from detaux_ray.distributed.pipeline import Pipeline  # Ray is imported only once the config is valid

        state["pipeline"] = Pipeline(cfg, state["run_dir"], stage_store=args.stage_store)
        _summary(state["pipeline"].run(), t0)
        return 0

    def interrupted() -> str:
        p = state["pipeline"]
        if p is not None:
            from detaux_ray.distributed.pipeline import silence_worker_logs

            silence_worker_logs()
        where = f"during stage '{p.current_stage}'" if p is not None and p.current_stage else "before any stage ran"
        return (f"stopped {where}. Finished stages and the newest checkpoint are kept in {state['run_dir']}; "
                f"run the same command again to resume.")

    return run_cli(body, interrupted)


def _summary(report: dict, t0: float) -> None:
    best = report.get("best_factor")
    fs = report["factor_scores"].get(best, {}) if best else {}
    stl = f"STL accuracy {report['stl_accuracy']:.4f} | " if report["stl_accuracy"] is not None else ""
    print(f"{stl}MTL-{report['mtl_model'].upper()} accuracy {report['mtl_accuracy']:.4f} | "
          f"{report['n_aux_classes']} auxiliary classes, NMI(principal, aux) {report['nmi_principal_aux']:.4f}"
          + (f" | best factor {best}: homogeneity {fs['homogeneity']:.3f}, completeness {fs['completeness']:.3f}" if fs else "")
          + f" | {time.time() - t0:.0f}s")


if __name__ == "__main__":
    sys.exit(main())
