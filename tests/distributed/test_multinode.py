"""The pipeline on a real two-node Ray cluster (a head and a worker node, both on this machine), submitted with
`ray job submit`: a plain run, the training workers on different nodes, a worker node lost mid-training, a
diverged loss on the other node. Each node holds one training worker (0.75 of its 1 CPU), so a two-worker run must
use both."""

import json
import re
import sys
import threading
from pathlib import Path

import pytest

from ray_nodes import LocalCluster

ROOT = Path(__file__).resolve().parents[2]
SETS = ["data.n_images=800", "data.image_size=16", "disentangle.k=3", "disentangle.batch_size=32",
        "disentangle.scorecard_every=0", "discover.clusterer=kmeans++", "discover.n_clusters=3", "mtl.epochs=1",
        "mtl.width=8", "mtl.baseline=false", "resources.num_workers=2", "resources.cpus_per_worker=0.75",
        "resources.placement=spread"]


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster(head_cpus=1)
    try:
        c.worker = c.add_node(cpus=1)
        c.wait_for_nodes(2)
        yield c
    finally:
        c.stop()


def pipeline(run_dir: Path, *sets: str) -> list[str]:
    return [sys.executable, "jobs/full_pipeline.py", "--run-dir", str(run_dir)] + sum(
        (["--set", s] for s in SETS + list(sets)), [])


@pytest.mark.slow
def test_ray_job_submit_runs_the_pipeline(cluster, tmp_path):
    run_dir = tmp_path / "run"
    proc = cluster.submit(pipeline(run_dir, "resources.num_workers=1", "resources.cpus_per_worker=0.5",
                                   "disentangle.epochs=1", "disentangle.pairs_per_epoch=128", "mtl.baseline=true"), ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout.lower()  # "Job ... succeeded"
    report = json.loads((run_dir / "report.json").read_text())
    assert 0.0 <= report["mtl_accuracy"] <= 1.0 and 0.0 <= report["stl_accuracy"] <= 1.0 and report["n_aux_classes"] == 3


@pytest.mark.slow
def test_a_diverged_loss_on_the_other_node_stops_the_run(cluster, tmp_path):
    # Only the rank on the worker node sees the NaN; its record reaches the driver through Ray, not a file.
    code, out = cluster.submit_watching(pipeline(tmp_path / "run", "disentangle.epochs=3", "disentangle.pairs_per_epoch=256",
                                                 "debug.nan_epoch=1", "debug.nan_node=other"), ROOT, lambda line: None)
    assert code != 0, out[-3000:]
    assert re.search(r"error: stage 1 loss became non-finite in epoch 1 .*seen first on rank [01], host ", out), out[-3000:]
    assert not (tmp_path / "run" / "disentangle").exists()


@pytest.mark.slow
def test_losing_the_worker_node_mid_training_restarts_from_the_checkpoint_when_a_node_is_back(cluster, tmp_path):
    run_dir = tmp_path / "run"
    events = []

    def on_line(line: str) -> None:
        if not events and re.search(r"\[disentangle\] epoch 2/6", line):
            events.append("killed")
            cluster.kill_node(cluster.worker)  # its raylet, object store and training worker, as a lost machine
            # a replacement joins while the head still waits for the lost node's heartbeats
            threading.Thread(target=lambda: setattr(cluster, "worker", cluster.add_node(cpus=1)), daemon=True).start()

    # Epochs of ~1.5 s reach this test in chunks ~3 s apart: the pause keeps stage 1 training when the line arrives
    code, out = cluster.submit_watching(pipeline(run_dir, "disentangle.epochs=6", "disentangle.pairs_per_epoch=512",
                                                 "debug.epoch_pause_s=3"), ROOT, on_line)
    assert events == ["killed"], out[-3000:]
    assert code == 0 and "succeeded" in out.lower(), out[-3000:]
    stage1 = json.loads((run_dir / "disentangle" / "manifest.json").read_text())
    assert stage1["epochs"] == 6 and stage1["nodes"] == 2 and stage1["restarts"] >= 1, stage1
    assert stage1["steps"] == 6 * (512 // 2 // 32)  # every epoch trained once: the restart went on, it did not redo
    fits = json.loads((run_dir / "mtl" / "results.json").read_text())
    md = (run_dir / "report.md").read_text()
    assert re.search(r"stage 1 on 2 nodes, its worker group restarted \d time\(s\)", md), md[:2000]
    assert all(f["nodes"] == 2 for f in fits["results"].values()), fits
