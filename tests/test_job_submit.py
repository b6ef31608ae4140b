"""`ray job submit` end to end against a real Ray head started (and stopped) by this test."""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A token-authenticated head in its own process group; only it is stopped afterwards (never `ray stop`)."""
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    env.pop("RAY_ADDRESS", None)
    gcs, dash, agent, agent_grpc, metrics, runtime_env = (_free_port() for _ in range(6))
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's unix socket paths must fit in 107 bytes
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={gcs}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
         "--num-cpus=2", "--include-dashboard=true", f"--temp-dir={temp_dir}", "--disable-usage-stats",
         # its own agent ports: another Ray on this machine (the test session's) holds the default ones, and a
         # node whose job agent cannot bind refuses submissions ("No available agent to submit job")
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while time.time() < deadline:
        ok = subprocess.run([RAY, "job", "list", "--address", address], env=env, capture_output=True).returncode == 0
        if ok:
            break
        assert head.poll() is None, "ray start --head exited early"
        time.sleep(2)
    else:
        pytest.fail("the Ray head did not come up in 120 s")
    yield address, env
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)


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
