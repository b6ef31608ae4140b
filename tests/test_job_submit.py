"""`ray job submit` end to end against a real Ray head started (and stopped) by this test."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ray_nodes import RAY, LocalCluster

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ray_head():
    """A token-authenticated head of its own (`ray_nodes.LocalCluster`); only it is stopped afterwards."""
    cluster = LocalCluster(head_cpus=2)
    try:
        yield cluster.address, cluster.env
    finally:
        cluster.stop()


@pytest.mark.slow
def test_ray_job_submit_runs_the_pipeline(ray_head, tmp_path):
    address, env = ray_head
    run_dir = tmp_path / "run"
    sets = ["data.n_images=800", "data.image_size=16", "disentangle.k=3", "disentangle.epochs=1",
            "disentangle.pairs_per_epoch=128", "discover.clusterer=kmeans++", "discover.n_clusters=3",
            "mtl.epochs=1", "mtl.width=8", "resources.cpus_per_worker=0.5"]
    cmd = [RAY, "job", "submit", "--address", address, "--working-dir", str(ROOT), "--",
           sys.executable, "jobs/full_pipeline.py", "--run-dir", str(run_dir)] + sum((["--set", s] for s in sets), [])
    deadline = time.time() + 120
    while True:  # `ray job list` answers from the head before the node's job agent has registered
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent to submit job" not in proc.stderr or time.time() > deadline:
            break
        time.sleep(3)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout.lower()  # "Job ... succeeded"
    report = json.loads((run_dir / "report.json").read_text())
    assert 0.0 <= report["mtl_accuracy"] <= 1.0 and report["n_aux_classes"] == 3
