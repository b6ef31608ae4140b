"""jobs/tune.py on a real local Ray: a 2-trial Optuna search at tiny size, killed after its first trial and resumed;
the second trial reuses the first one's stage 1 and ends in a single cluster (recorded, not a crash); a resume of
the finished run redoes nothing; the exported preset runs through jobs/full_pipeline.py on the shared stages."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "jobs"))
import full_pipeline  # noqa: E402
import tune as tune_job  # noqa: E402


TINY = {"data.n_images": 1200, "data.image_size": 16, "data.val_frac": 0.15, "disentangle.k": 3,
        "disentangle.epochs": 2, "disentangle.pairs_per_epoch": 256, "disentangle.batch_size": 32,
        "discover.clusterer": "kmeans", "mtl.epochs": 2, "mtl.width": 8, "mtl.baseline": False,
        "resources.cpus_per_worker": 0.5, "resources.data_cpus": 0.2, "resources.torch_threads": 1}


def write_spec(path: Path, **extra) -> Path:
    spec = {"base": "quick", "fixed": TINY,
            "space": {"discover.n_clusters": {"choice": [1, 4]}, "mtl.principal_weight": {"uniform": [0.5, 2.0]}},
            # trial 1 clusters into 1 (a single cluster: unsuccessful, not a crash), trial 2 into 4
            "start_with": [{"discover.n_clusters": 1, "mtl.principal_weight": 1.5}, {"discover.n_clusters": 4}],
            "scheduler": {"grace_period": 1, "reduction_factor": 2}, **extra}
    path.write_text(yaml.safe_dump(spec))
    return path


def trial_status(exp_dir: Path) -> dict[str, str]:
    """{trial id: status} from Tune's saved experiment state."""
    states = sorted(exp_dir.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
    except json.JSONDecodeError:  # being rewritten
        return {}
    trials = [json.loads(t[0]) if isinstance(t[0], str) else t[0] for t in data["trial_data"]]
    return {t["trial_id"]: t["status"] for t in trials}


def test_absent_dataset_says_how_to_provide_it(tmp_path, capsys):
    assert tune_job.main(["--dataset", "cars", "--run-dir", str(tmp_path / "r")]) == 3
    err = capsys.readouterr().err
    assert "dataset 'cars' is not present" in err and "data.path" in err and "s3://" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_tune_resume_reuse_and_export(ray_session, tmp_path, capsys):
    spec = write_spec(tmp_path / "tiny.yaml")
    run_dir = tmp_path / "tune"
    argv = ["--search", str(spec), "--num-samples", "2", "--concurrent", "1", "--run-dir", str(run_dir)]

    # 1. Start the search in its own driver (on this test session's Ray) and kill it once trial 1 has finished
    #    (its experiment state saved every second), while trial 2 is running.
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "jobs" / "tune.py"), *argv], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 400
        while "TERMINATED" not in trial_status(run_dir / "tune").values():
            assert proc.poll() is None, "the tune driver exited before its first trial finished"
            assert time.time() < deadline, "trial 1 did not finish in time"
            time.sleep(1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (run_dir / "best.yaml").exists() and not list((run_dir / "trials").glob("*/report.json"))
    (first,) = [t for t, status in trial_status(run_dir / "tune").items() if status == "TERMINATED"]
    first_started = (run_dir / "trials" / first / "trial.json").stat().st_mtime_ns

    # 2. Resume: trial 1 is kept, trial 2 runs again, reusing trial 1's stage 1, and completes.
    assert tune_job.main(argv + ["--resume"]) == 0
    out = capsys.readouterr().out
    assert (run_dir / "trials" / first / "trial.json").stat().st_mtime_ns == first_started  # not redone
    table = (run_dir / "trials.csv").read_text().splitlines()
    assert len(table) == 3 and table[0].startswith("trial,outcome,val_principal_accuracy")
    rows = [dict(zip(table[0].split(","), line.split(","))) for line in table[1:]]
    by_outcome = {r["outcome"]: r for r in rows}
    assert set(by_outcome) == {"ok", "single_cluster"}
    assert by_outcome["single_cluster"]["trial"] == first
    assert int(by_outcome["ok"]["stages_reused"]) >= 1  # stage 1 came from trial 1 (discovery too if it finished before the kill)
    assert 0.0 <= float(by_outcome["ok"]["val_principal_accuracy"]) <= 1.0
    import re

    computed, reused = map(int, re.search(r"stage runs: (\d+) computed, (\d+) reused from earlier trials", out).groups())
    assert computed + reused == 4 and reused >= 1 and "best trial" in out
    assert "| single_cluster |" in (run_dir / "trials.md").read_text()

    # TensorBoard: each trial's curves (Tune's logger) and the HParams view, from real event files.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags, plugins = set(), set()
    for f in (run_dir / "tune").glob("*/events.out.tfevents.*"):
        acc = EventAccumulator(str(f))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
        try:
            plugins |= set(acc.PluginTagToContent("hparams"))
        except KeyError:  # this file has no HParams summary
            pass
    assert "ray/tune/val_principal_accuracy" in tags and plugins

    # 3. Resume of the finished run: nothing runs again.
    reports = {p: p.stat().st_mtime for p in (run_dir / "trials").glob("*/report.json")}
    assert tune_job.main(argv + ["--resume"]) == 0
    assert {p: p.stat().st_mtime for p in (run_dir / "trials").glob("*/report.json")} == reports

    # 4. The exported preset runs through the pipeline; stages 1-2 come from the tuning run's store.
    best = run_dir / "best.yaml"
    assert yaml.safe_load(best.read_text())["discover"]["n_clusters"] == 4
    assert full_pipeline.main(["--preset", str(best), "--run-dir", str(tmp_path / "final"),
                               "--stage-store", str(run_dir / "stages")]) == 0
    report = json.loads((tmp_path / "final" / "report.json").read_text())
    assert report["stages"]["disentangle"]["reused"] and report["stages"]["discover"]["reused"]
    assert not report["stages"]["mtl"]["reused"] and report["stl_accuracy"] is not None  # baseline back on
