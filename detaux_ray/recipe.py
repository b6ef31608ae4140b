"""The recipe: disentangle -> discover an auxiliary task -> STL vs multi-task learning, with a report.

`detaux(p)` is the sequence of stages over a `Pipeline` (tuning trials run it too); `main` is the command line
behind `jobs/full_pipeline.py` and the `detaux-ray` console script:

    python jobs/full_pipeline.py [--preset NAME_OR_YAML] [--run-dir DIR] [--set section.key=value ...] [--stage-store DIR]
    ray job submit --working-dir . -- python jobs/full_pipeline.py --preset quick

This module imports no Ray; the stages' Ray side (`detaux_ray.distributed.pipeline`) is imported once the config is
valid.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .artifacts import write_json
from .cli import run_cli
from .config import load_config
from .errors import ConstantLatentError
from .report import summary_line
from .results import DiscoverResult, DisentangleResult, MTLResult, Report, control_keys  # what each stage returns
from .statistics import seed_statistics


def detaux(p) -> Report:
    """The recipe over a `Pipeline` p: each stage is skipped when its artifacts exist for the same config."""
    cfg, m = p.cfg, p.cfg.mtl
    p.start()  # run dir checked, Ray started or joined
    try:
        s1, s2 = disentangle_and_discover(p)
    except ConstantLatentError as exc:  # stage 1 left nothing outside alpha: once more with the remedy formulation
        p.fall_back(exc)
        s1, s2 = disentangle_and_discover(p)

    def multitask(out: Path) -> MTLResult:  # 3. STL vs multi-task models on (image, principal, auxiliary)
        train, n_classes = p.labels()
        kinds = {"stl": "stl"} if m.baseline else {}
        kinds |= {"mtl": m.model} | {k: k for k in m.compare if k != m.model}  # result key -> model
        controls = control_keys(kinds) if m.controls else {}  # e.g. "mtl" -> "nddr_alone": NDDR on the principal alone
        kinds |= {c: c.removesuffix("_alone") for c in controls.values()}
        seeds = [cfg.seed + i for i in range(m.seeds)]  # > 1: every model again with seeds seed+1, ... (same labels)
        runs = [(key, kind, seed) for seed in seeds for key, kind in kinds.items()]

        def fit(key: str, kind: str, seed: int) -> dict:  # fit_many's keywords for one run
            f = {"kind": kind, "seed": None if seed == cfg.seed else seed, "tune_reports": key == "mtl" and seed == cfg.seed}
            if key.endswith("_alone"):  # a control: its own tasks, checkpoints and TensorBoard folder
                f |= {"n_classes": {"principal": n_classes["principal"]}, "tag": "alone",
                      "tb": f"{kind}_alone" + ("" if seed == cfg.seed else f"_seed{seed}")}
            return f

        fits = p.fit_many([fit(*r) for r in runs], train, n_classes)  # as many at once as Ray holds
        res = MTLResult({key: f for (key, _, seed), f in zip(runs, fits) if seed == cfg.seed}, n_classes)
        if m.seeds > 1:  # per model, its accuracy at each seed
            acc = {key: [f.test_principal_accuracy for (k, _, _), f in zip(runs, fits) if k == key] for key in kinds}
            res.seeds = seed_statistics(seeds, acc, m.model, controls)
        if m.entangled_ablation:  # paper Sec. 5.3: labels from a plain autoencoder's latent instead
            res.entangled_ablation = p.entangled_ablation(out, n_classes)
            res.results["entangled"] = res.entangled_ablation.result
        write_json(out / "results.json", res.to_dict())
        return res

    return p.finish(s1, s2, p.stage("mtl", multitask))  # report.md / report.json, config.yaml


def disentangle_and_discover(p) -> tuple[DisentangleResult, DiscoverResult]:
    """Stages 1 and 2 once per restart (disentangle.restarts), each stage 1 with its own seed, side by side on as
    many as the cluster holds; the run keeps the restart whose discovered classes score highest. Raises
    ConstantLatentError when every restart's nuisance latent was constant."""
    restarts = [p.for_restart(r) for r in range(p.cfg.disentangle.restarts)]
    # 1. product-manifold autoencoder + principal oracle -> model.pt
    s1 = p.disentangle_side_by_side(restarts)
    found = []
    for q, s in zip(restarts, s1):
        try:
            found.append((s, q.stage("discover", q.discover)))  # 2. cluster the nuisance latent -> labels.parquet
        except ConstantLatentError as exc:
            found.append((s, exc))
    return p.keep(found)


_USAGE = "Detaux end to end: disentangle -> discover an auxiliary task -> STL vs multi-task learning, with a report."


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=_USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="quick", help="preset name in detaux_ray/presets/ or a path to a YAML file (default: quick)")
    ap.add_argument("--run-dir", default=None, help="where every stage writes its artifacts (default: runs/<preset>)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. --set disentangle.epochs=10 (repeatable)")
    ap.add_argument("--stage-store", metavar="DIR", help="a tune run's <run-dir>/stages: reuse the stages computed there")
    args = ap.parse_args(argv)
    t0, run_dir, pipe = time.time(), Path(args.run_dir or Path("runs") / Path(args.preset).stem), []

    def body() -> int:
        cfg = load_config(args.preset, args.overrides)
        from .distributed.pipeline import Pipeline  # Ray is imported only once the config is valid

        pipe.append(Pipeline(cfg, run_dir, stage_store=args.stage_store))
        try:
            print(f"{summary_line(detaux(pipe[0]))} | {time.time() - t0:.0f}s")
        finally:
            pipe[0].close()
        return 0

    def interrupted() -> str:  # where it stopped and how to resume
        return pipe[0].stopped() if pipe else f"stopped before any stage ran (run directory {run_dir})."

    return run_cli(body, interrupted)

