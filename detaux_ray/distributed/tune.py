"""Ray Tune + Optuna over the whole pipeline.

A trial is a plain function (Ray 2.60's Train V2 trainers cannot be handed to `Tuner`): it runs the Detaux
recipe (`detaux_ray/recipe.py`) on its config with a stage store that all trials share, so a trial whose upstream config equals an
earlier trial's reuses that stage. The multi-task model's Ray Train run reports every epoch to Tune
(TuneReportCallback), where ASHA stops weak trials on the validation accuracy; Optuna proposes the configs.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import ray
import yaml
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from ..artifacts import write_json, write_text
from ..config import Config, config_from_dict
from ..errors import ConfigError, DetauxError, NonFiniteLossError, SingleClusterError
from ..results import Report
from ..search import METRIC, SearchSpec, apply_params, start_points
from .pipeline import Pipeline, ensure_ray
from .trainer import fits_held

EXPERIMENT = "tune"  # <run-dir>/tune: Tune's experiment (per-trial results, TensorBoard + HParams, --resume state)
STAGES = "stages"  # <run-dir>/stages: the shared stage store
# <run-dir>/trials/<trial id>: each trial's pipeline (config, report, stage TensorBoard, Ray Train checkpoints)


class DetauxOptunaSearch(OptunaSearch):
    """OptunaSearch that accepts a trial result without the objective: a trial that ends unsuccessfully (single
    cluster, divergence) reports its outcome instead, and Optuna records it as a failed trial."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.metric in result:
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        super().on_trial_complete(trial_id, result, error=error or not (result and self.metric in result))


def _domain(kind: str, args: list) -> Any:
    if kind == "choice":
        return tune.choice(args)
    if kind == "uniform":
        return tune.uniform(*args)
    if kind == "loguniform":
        return tune.loguniform(*args)
    return tune.randint(*args)


def param_space(spec: SearchSpec) -> dict:
    """Nested {section: {key: domain}}; Optuna names the parameters section/key."""
    out: dict[str, dict] = {}
    for key, domain in spec.space.items():
        section, _, name = key.partition(".")
        (kind, args), = domain.items()
        out.setdefault(section, {})[name] = _domain(kind, args)
    return out


def trial_fn(params: dict, base: dict, store: str, recipe: Callable[[Pipeline], Report]) -> None:
    """One trial: the recipe (`detaux_ray.recipe.detaux`) on base + params. Unsuccessful outcomes are
    reported, not raised."""
    # The trial's pipeline writes beside the stage store, at a path that survives a restart of the trial (Tune's
    # own trial dir is a session-local staging copy), so a resumed trial picks up its Ray Train checkpoints.
    trial_dir = Path(store).parent / "trials" / tune.get_context().get_trial_id()
    ray.data.DataContext.get_current().enable_progress_bars = False
    pipe = None
    write_json(trial_dir / "trial.json", {"trial_id": tune.get_context().get_trial_id(), "params": params,
                                          "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    try:
        cfg = apply_params(base, params)
        pipe = Pipeline(cfg, trial_dir, stage_store=Path(store), mtl_callbacks=[TuneReportCallback()])
        report = recipe(pipe)
    except (SingleClusterError, NonFiniteLossError, ConfigError) as exc:
        outcome = {SingleClusterError: "single_cluster", NonFiniteLossError: "diverged", ConfigError: "invalid_config"}
        print(f"[tune] trial unsuccessful ({outcome[type(exc)]}): {exc}", flush=True)
        tune.report({"outcome": outcome[type(exc)], "reason": str(exc), **_stage_counts(pipe)})
        return
    finally:
        if pipe is not None:
            pipe.close()
    mtl, diag = report.multitask, report.diagnostics
    tune.report({METRIC: mtl.val_principal_accuracy, "test_principal_accuracy": mtl.test_principal_accuracy,
                 "n_aux_classes": diag.n_aux_classes, "nmi_principal_aux": diag.nmi_principal_aux,
                 "mtl_epochs": mtl.epochs, "outcome": "ok", "reason": "", "pipeline_dir": str(trial_dir),
                 **_stage_counts(pipe)})


def _stage_counts(pipe: Pipeline | None) -> dict:
    stages = pipe.stages.values() if pipe else []
    return {"stages_reused": sum(s.reused for s in stages), "stages_run": sum(not s.reused for s in stages)}


def run_search(spec: SearchSpec, base_cfg: Config, run_dir: Path, num_samples: int, recipe: Callable[[Pipeline], Report],
               seed: int = 0, max_concurrent: int = 0, resume: bool = False) -> dict:
    """Run (or resume) the search, each trial running `recipe` on a `Pipeline`; write the trial table and the best
    config as a preset. Returns a summary."""
    run_dir = Path(run_dir).resolve()
    exp_dir = run_dir / EXPERIMENT
    if resume and (run_dir / "search.yaml").is_file():  # resume with the spec and base the run started with
        saved = yaml.safe_load((run_dir / "search.yaml").read_text())
        spec, base_cfg = SearchSpec(**saved["spec"]), config_from_dict(saved["base_config"])
    # A trial that ends without the objective (single cluster, diverged) reports why instead of the metric.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    ensure_ray(base_cfg.resources.address)
    module = sys.modules.get(recipe.__module__)
    if module is not None and not recipe.__module__.startswith("detaux_ray"):  # a script's recipe: ship its code
        ray.cloudpickle.register_pickle_by_value(module)
    trainable = tune.with_resources(tune.with_parameters(trial_fn, base=base_cfg.to_dict(), store=str(run_dir / STAGES),
                                                         recipe=recipe),
                                    {"cpu": spec.trial_cpus})
    if resume:
        if not tune.Tuner.can_restore(str(exp_dir)):
            raise ConfigError(f"nothing to resume at {exp_dir}: run without --resume first")
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_errored=True)
    else:
        if exp_dir.exists():
            raise ConfigError(f"a tuning run already exists at {exp_dir}: pass --resume to continue it, or choose "
                              f"another --run-dir")
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "search.yaml", yaml.safe_dump({"spec": dataclasses.asdict(spec), "base_config": base_cfg.to_dict(),
                                                            "num_samples": num_samples, "seed": seed}, sort_keys=False))
        sched = ASHAScheduler(time_attr="training_iteration", max_t=base_cfg.mtl.epochs + 2,
                              grace_period=int(spec.scheduler.get("grace_period", 2)),
                              reduction_factor=float(spec.scheduler.get("reduction_factor", 2)))
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(spec),
            tune_config=tune.TuneConfig(metric=METRIC, mode="max", num_samples=num_samples,
                                        search_alg=DetauxOptunaSearch(seed=seed, points_to_evaluate=[
                                            {k.replace(".", "/"): v for k, v in p.items()}
                                            for p in start_points(spec, base_cfg.to_dict())] or None), scheduler=sched,
                                        max_concurrent_trials=max_concurrent or fits_held(base_cfg.resources, spec.trial_cpus)),
            run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(run_dir), verbose=1),
        )
    t0 = time.time()
    grid = tuner.fit()
    return summarise(grid, spec, base_cfg, run_dir, time.time() - t0)


def summarise(grid, spec: SearchSpec, base_cfg: Config, run_dir: Path, wall_s: float) -> dict:
    rows = []
    for r in grid:
        m = r.metrics or {}
        outcome = m.get("outcome") or ("error" if r.error else "stopped early (ASHA)")
        rows.append({
            "trial": m.get("trial_id") or Path(r.path or "?").name,
            "outcome": outcome,
            METRIC: m.get(METRIC),
            "test_principal_accuracy": m.get("test_principal_accuracy"),
            "mtl_epochs": m.get("mtl_epochs") or (m["epoch"] + 1 if "epoch" in m else None),
            "stages_reused": m.get("stages_reused"), "stages_run": m.get("stages_run"),
            "time_s": round(m.get("time_total_s", 0.0), 1),
            "reason": m.get("reason") or (str(r.error).splitlines()[0] if r.error else ""),
            "config": _flat(r.config), "path": r.path,
        })
    rows.sort(key=lambda x: x["trial"])
    ok = [x for x in rows if x["outcome"] == "ok" and x[METRIC] is not None and math.isfinite(x[METRIC])]
    if not ok:
        write_tables(rows, spec, run_dir)
        raise DetauxError(f"no trial finished successfully ({', '.join(x['outcome'] for x in rows)}); "
                          f"see {run_dir / 'trials.md'}")
    best = max(ok, key=lambda x: x[METRIC])
    best_cfg = apply_params(base_cfg.to_dict(), best["config"])
    preset = export_preset(best_cfg, best, run_dir)
    write_tables(rows, spec, run_dir)
    stored = [x for x in rows if x["stages_reused"] is not None]
    return {"best": best, "best_preset": str(preset), "trials": rows, "wall_s": round(wall_s, 1),
            "stages_reused": sum(x["stages_reused"] for x in stored),
            "stages_run": sum(x["stages_run"] for x in stored)}


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in (config or {}).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def export_preset(cfg: Config, best: dict, run_dir: Path) -> Path:
    """The best trial's config as a preset for jobs/full_pipeline.py, with the STL baseline switched back on."""
    values = cfg.to_dict()
    values["mtl"]["baseline"] = True
    values.pop("debug")
    header = (f"# Best trial of the tuning run in {run_dir} (trial {best['trial']}): validation principal accuracy "
              f"{best[METRIC]:.4f}.\n"
              f"# Run it:  python jobs/full_pipeline.py --preset {run_dir / 'best.yaml'} --stage-store {run_dir / STAGES}\n"
              f"# (the stage store reuses the trial's disentanglement and discovery). The budget (epochs) is the\n"
              f"# search's; raise disentangle.epochs / mtl.epochs for a final model.\n")
    path = run_dir / "best.yaml"
    config_from_dict(values)  # never export a preset the pipeline would refuse
    write_text(path, header + yaml.safe_dump(values, sort_keys=False))
    return path


def write_tables(rows: list[dict], spec: SearchSpec, run_dir: Path) -> None:
    keys = list(spec.space)
    cols = ["trial", "outcome", METRIC, "test_principal_accuracy", "mtl_epochs", "stages_reused", "stages_run",
            "time_s"] + keys + ["reason"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for x in rows:
        w.writerow([x.get(c, x["config"].get(c)) for c in cols])
    write_text(run_dir / "trials.csv", buf.getvalue())

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v).replace("|", "/")

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for x in rows:
        lines.append("| " + " | ".join(fmt(x.get(c, x["config"].get(c))) for c in cols) + " |")
    write_text(run_dir / "trials.md", "# Tuning trials\n\nObjective: principal accuracy on the validation split "
               "(higher is better).\n\n" + "\n".join(lines) + "\n")
