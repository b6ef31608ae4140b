"""Smoke runs of the benchmarks at tiny sizes: they run, check themselves, and end with a JSON line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*argv: str) -> dict:
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_step_bench_losses_agree_and_ratio_is_reported():
    out = _run("bench/step.py", "--size", "16", "--steps", "1", "--rounds", "1", "--warmup", "1", "--k", "4")
    (r,) = out["results"]
    assert r["ratio"] > 0 and abs(r["loss_ours"] - r["loss_reference"]) <= 1e-5 * max(1, abs(r["loss_ours"]))


def test_label_bench_small():
    out = _run("bench/label.py", "--n", "4000", "--fit", "1000")
    assert out["n_points"] == 4000 and 0 <= out["ari_knn_vs_approximate"] <= 1 and out["knn_label_s"] > 0


@pytest.mark.slow
def test_ray_overhead_bench_small():
    out = _run("bench/ray_overhead.py", "--n-images", "500", "--image-size", "16", "--batch", "32")
    assert out["plain_epoch_s"] > 0 and out["ray_epoch_s"] > 0 and out["n_train_pairs"] > 0


@pytest.mark.slow
def test_stream_bench_small():
    out = _run("bench/stream.py", "--n", "600", "--pairs", "256", "--steps", "1")
    assert out["x1"]["n_images"] == 600 and out["x10"]["n_images"] == 6000
    assert out["x1"]["stream_pairs_per_s"] > 0 and out["step_pairs_per_s"] > 0
    assert out["stream_over_step"] == pytest.approx(out["x1"]["stream_pairs_per_s"] / out["step_pairs_per_s"], rel=0.02)
