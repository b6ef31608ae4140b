"""Smoke runs of the benchmarks at tiny sizes: they run, check themselves, and end with a JSON line."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
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
    out = _run("bench/ray_overhead.py", "--n-images", "500", "--image-size", "16", "--batch", "32", "--rounds", "2",
               "--pairs", "512")
    assert len(out["plain_epoch_s"]) == len(out["ray_epoch_s"]) == 2 and min(out["plain_epoch_s"] + out["ray_epoch_s"]) > 0
    assert out["ratio"] == pytest.approx(float(np.median(out["ratios"])), abs=1e-3) and out["n_train_pairs"] > 0


@pytest.mark.slow
def test_stream_bench_small():
    out = _run("bench/stream.py", "--n", "600", "--pairs", "256", "--steps", "1")
    assert out["x1"]["n_images"] == 600 and out["x10"]["n_images"] == 6000
    assert out["x1"]["stream_pairs_per_s"] > 0 and out["step_pairs_per_s"] > 0
    assert out["stream_over_step"] == pytest.approx(out["x1"]["stream_pairs_per_s"] / out["step_pairs_per_s"], rel=0.02)


@pytest.mark.slow
def test_gpu_check_tiny_on_cpu(tmp_path):
    """bench/gpu_check.py end to end at a tiny size on the CPU: the script the GPU run uses, every part present."""
    out_path = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--tiny", "--device", "cpu", "--out", str(out_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    r = json.loads(out_path.read_text())
    assert r["tiny"] and r["torch"] and r["settings"]["k"] == 3
    p = r["precision"]
    assert p["none"]["pairs_per_s"] > 0 and p["bf16"]["pairs_per_s"] > 0
    assert p["bf16_speedup"] == pytest.approx(p["bf16"]["pairs_per_s"] / p["none"]["pairs_per_s"], rel=0.01)
    assert p["loss_difference"]["relative"] < 0.2  # same start, same batches: bf16 stays close to fp32
    s1 = r["stage1"]
    assert s1["steps"] > 0 and s1["curve"] and s1["curve"][-1]["step"] == s1["steps"]
    assert s1["scorecard"]["rows"][-1] == "all" and s1["chosen_subspace"] != 0
    assert set(s1["labels"]["factor_scores"]) == {"floor_hue", "wall_hue", "object_hue", "shape", "orientation"}
    c = r["clustering"]
    assert c["cpu"]["kmeans_s"] > 0 and c["accelerator"]["kmeans_s"] > 0
    assert c["knn_same_labels_share"] >= 0.99  # exact neighbours on both sides: the same labels
    assert (tmp_path / "gpu.png").stat().st_size > 1000


def test_step_profile_small(tmp_path):
    """bench/step_profile.py at 16 px on the CPU: the step's wall time and its op counts are reported."""
    out_path = tmp_path / "profile.json"
    proc = subprocess.run([sys.executable, "bench/step_profile.py", "--set", "data.image_size=16", "--steps", "2",
                           "--warmup", "1", "--out", str(out_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    r = json.loads(out_path.read_text())
    assert r["step_wall_ms"] > 0 and r["aten_calls_per_step"] > 100 and r["kernels_per_step"] == 0  # no CUDA here
    assert r["top_self_cpu"] and all(row["op"].startswith("aten::") for row in r["top_self_cpu"])


def test_the_paper_steps_operator_count_does_not_grow_back(tmp_path):
    """aten calls per eager stage-1 step at the paper preset's model (k 10, 64 px; batch 4 to be quick: the count
    hardly depends on it): ~2,160 with batched matrix products for the projectors and classifiers, ~2,410 with
    einsum, ~2,800 with two separate encoders, ~3,840 with AdamW's per-parameter loop. A bound with room above
    today's count, below the others, so that any of them (or as many ops elsewhere) coming back fails."""
    out_path = tmp_path / "profile.json"
    proc = subprocess.run([sys.executable, "bench/step_profile.py", "--set", "disentangle.batch_size=4", "--set",
                           "resources.compile=none", "--steps", "1", "--warmup", "1", "--out", str(out_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    r = json.loads(out_path.read_text())
    assert r["preset"] == "paper" and r["k"] == 10 and r["image_size"] == 64 and r["compile"] == "none"
    assert 1000 < r["aten_calls_per_step"] <= 2350


@pytest.mark.slow
def test_the_compiled_paper_step_stays_under_600_operator_calls(tmp_path):
    """The paper preset's step, compiled as the preset says (batch 4 to be quick): ~390 aten calls per step against
    the eager step's ~2,200 (bench/README.md; the issue's target is 600). The bound has room above today's count and
    far below eager, so a graph break (the loss split into pieces with eager code between), an optimiser left out of
    the compiled update or the preset's compile setting lost fails."""
    out_path = tmp_path / "profile.json"
    proc = subprocess.run([sys.executable, "bench/step_profile.py", "--set", "disentangle.batch_size=4",
                           "--steps", "1", "--warmup", "2", "--out", str(out_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    r = json.loads(out_path.read_text())
    assert r["preset"] == "paper" and r["k"] == 10 and r["compile"] == "default"
    assert 100 < r["aten_calls_per_step"] <= 450


def test_torch_kmeans_and_knn_labels_agree_with_the_cpu_path():
    from sklearn.cluster import KMeans
    from sklearn.datasets import make_blobs
    from sklearn.metrics import adjusted_rand_score

    from detaux_ray.discover.clustering import label_by_neighbours

    sys.path.insert(0, str(ROOT / "bench"))
    from torch_clustering import kmeans_torch, label_by_neighbours_torch

    x, y = make_blobs(3000, n_features=10, centers=6, random_state=0)
    labels, centres = kmeans_torch(x, 6, seed=0)
    assert centres.shape == (6, 10) and adjusted_rand_score(y, labels) > 0.99
    assert adjusted_rand_score(KMeans(6, n_init=10, random_state=0).fit_predict(x), labels) > 0.99
    noisy = np.random.default_rng(1).integers(-1, 5, 1000)  # noise label -1 included; ties broken alike
    assert np.array_equal(label_by_neighbours(x[:1000], noisy, x), label_by_neighbours_torch(x[:1000], noisy, x, chunk=700))


def test_subspace_probe_reads_a_held_factor_and_only_a_nonlinear_probe_reads_a_radius(tmp_path):
    """bench/subspace_probe.py on saved embeddings: subspace 0 holds the label linearly, subspace 1 by its radius
    (a ring: invisible to a linear classifier), subspace 2 is noise."""
    rng = np.random.default_rng(0)
    n = 2000
    y = rng.integers(0, 2, n)
    s = rng.normal(size=(n, 3, 2)).astype(np.float32)
    s[:, 0, 0] += 4.0 * y
    radius = np.where(y == 1, 2.0, 0.5) + 0.1 * rng.normal(size=n)
    angle = rng.uniform(0, 2 * np.pi, n)
    s[:, 1] = np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1)
    np.savez(tmp_path / "e.npz", s=s, principal=y)
    proc = subprocess.run([sys.executable, "bench/subspace_probe.py", str(tmp_path / "e.npz"), "--out",
                           str(tmp_path / "o.json")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "o.json").read_text())["runs"]["e.npz"]
    assert rows[0]["linear"]["score"] > 0.9 and rows[0]["mlp"]["score"] > 0.9
    assert rows[1]["linear"]["score"] < 0.3 and rows[1]["mlp"]["score"] > 0.9
    assert abs(rows[2]["linear"]["score"]) < 0.15 and abs(rows[2]["mlp"]["score"]) < 0.15


def test_discovery_rules_gives_each_rules_labels_per_file_and_their_means(tmp_path):
    """bench/discovery_rules.py on saved embeddings: a six-level factor on a ring in subspace 1 (no single direction
    separates its levels), a uniform factor in subspace 2; asked for six classes, discovery ends in the ring's levels
    (not the uniform factor's six slices), asked for two it cannot, and each (file, rule) has its row."""
    from latents import ring_factor

    rng = np.random.default_rng(0)
    n = 3000
    u, level = ring_factor(n)
    s = np.zeros((n, 3, 2), np.float32)
    s[:, 0] = rng.normal(size=(n, 2))
    s[:, 1], s[:, 2, 0] = u[:, :2], u[:, 2]
    for seed in (0, 1):
        np.savez(tmp_path / f"ring_seed{seed}.npz", s=s, principal=rng.integers(0, 3, n), factor_level=level)
    proc = subprocess.run([sys.executable, "bench/discovery_rules.py", *sorted(map(str, tmp_path.glob("*.npz"))),
                           "--rule", "two:discover.n_clusters=2", "--rule", "six:discover.n_clusters=6",
                           "--out", str(tmp_path / "o.json")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads((tmp_path / "o.json").read_text())
    assert json.loads(proc.stdout.strip().splitlines()[-1])["means"] == out["means"]
    assert sorted((r["file"], r["rule"]) for r in out["runs"]) == sorted(
        (f"ring_seed{i}.npz", rule) for i in (0, 1) for rule in ("two", "six"))
    assert out["means"]["ring"]["six"] > 0.9 > out["means"]["ring"]["two"]
    # bench/discovery_starts.py on the same files: every component a start, with its scores; the product's rule
    # (SH) takes the ring's levels, J (which rewards the uniform factor's slices as much) is no better
    proc = subprocess.run([sys.executable, "bench/discovery_starts.py", *sorted(map(str, tmp_path.glob("*.npz"))),
                           "--set", "discover.n_clusters=6", "--out", str(tmp_path / "s.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    starts = json.loads((tmp_path / "s.json").read_text())
    assert [len(r["starts"]) for r in starts["runs"]] == [3, 3]
    assert starts["means"]["ring"]["SH"] > 0.9 and starts["means"]["ring"]["SH"] >= starts["means"]["ring"]["J"]


@pytest.mark.slow
def test_stage1_study_continuation_reproduces_the_uninterrupted_run(tmp_path):
    """bench/stage1_study.py --save-at / --resume: continued without changes, the run ends where it would have."""
    tiny = ["--set", "data.n_images=600", "--set", "data.image_size=16", "--set", "disentangle.epochs=2",
            "--set", "disentangle.pairs_per_epoch=0", "--set",
            "disentangle.k=3", "--set", "disentangle.batch_size=32", "--threads", "1", "--every", "1"]

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "bench/stage1_study.py", *tiny, *extra], cwd=ROOT, capture_output=True,
                              text=True, timeout=600)

    for proc in (run("--out", str(tmp_path / "whole.json")), run("--save-at", "1", "--state", str(tmp_path / "s.pt")),
                 run("--resume", str(tmp_path / "s.pt"), "--out", str(tmp_path / "continued.json"))):
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    whole, continued = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("whole", "continued"))
    assert [c["epoch"] for c in continued["curve"]] == [1, 2]  # the saved state's scorecard, then epoch 2
    assert continued["final"]["scorecard"] == whole["final"]["scorecard"]
    assert continued["final"]["discovery"] == whole["final"]["discovery"]
    bad = run("--save-at", "1")
    assert bad.returncode == 2 and "--save-at needs --state PATH" in bad.stderr


@pytest.mark.slow
def test_suite_bench_runs_every_dataset_kind_and_reports_each(tmp_path):
    """bench/suite.py: one harness run per (dataset, seed), only data.* changed, a row each and a JSON line; a dead
    or empty nuisance latent is a row that says so, never a crash."""
    tiny = ["--set", "data.n_images=400", "--set", "data.image_size=16", "--set", "disentangle.epochs=1",
            "--set", "disentangle.pairs_per_epoch=0",
            "--set", "disentangle.k=3", "--set", "disentangle.batch_size=32"]
    out = _run("bench/suite.py", "--datasets", "sprites", "colour_digits", "digits", "--seeds", "0", "--threads", "1",
               "--out", str(tmp_path), *tiny)
    assert set(out["runs"]) == {"sprites_seed0", "colour_digits_seed0", "digits_seed0"}
    for name, r in out["runs"].items():
        assert 0.0 <= r["in_alpha"] <= 1.0 and len(r["variance"]) == 3, name
        assert r["n_aux_classes"] or r["discovery_error"], name
    assert "colour" in out["runs"]["sprites_seed0"]["whole_latent"]
    assert out["runs"]["digits_seed0"]["labels_factor"] is None  # no factor annotations: NMI only


@pytest.mark.slow
def test_label_efficiency_bench_small(few_labels):
    """One fraction at a tiny size (conftest's `few_labels` run, which the few-labels pipeline test reads too): both models over two seeds, the
    table, the plot, the JSON line."""
    out, folder = few_labels.result, few_labels.folder
    (low,) = out["rows"]
    assert low["labelled_frac"] == 0.3 and low["n_labelled"] == round(0.3 * low["n_train"])
    assert all(len(r[k]["accuracy"]) == 2 for r in out["rows"] for k in ("stl", "mtl"))
    assert -1.0 <= low["principal_in_alpha"] <= 1.0 and isinstance(low["stage1_ran_twice"], bool)
    assert set(low["others"]) == {"auxilearn"} and len(low["others"]["auxilearn"]["accuracy"]) == 2  # mtl.compare's rows
    table = (folder / "table.md").read_text()
    assert (folder / "label_efficiency.png").stat().st_size > 0 and "| 0.3 |" in table and "auxilearn (p vs STL)" in table
    assert json.loads(few_labels.out.strip().splitlines()[-1]) == json.loads((folder / "label_efficiency.json").read_text())


@pytest.mark.slow
def test_store_reads_bench_small():
    out = _run("bench/store_reads.py", "--images", "32", "--rounds", "1", "--batch", "16")
    assert set(out["images_per_s"]) == {"local_1", f"local_{out['threads']}", "s3_1", f"s3_{out['threads']}"}
    ips = out["images_per_s"]
    assert min(ips.values()) > 0  # the bench checked the store's pixels against the local reader's
    assert out["ratio_s3"] == pytest.approx(ips[f"s3_{out['threads']}"] / ips["s3_1"], rel=0.02, abs=0.011)


def test_mtl_study_trains_on_the_few_label_tables_and_reads_a_validation_split():
    """bench/mtl_study.py with unlabelled rows (principal -1): STL sees only the labelled images, the multi-task model
    those beside every image; both report per-epoch CEs and validation accuracy. An unlabelled image's pixels made
    extreme must leave STL exactly as it was (it never trains on them) and change the multi-task model."""
    sys.path.insert(0, str(ROOT / "bench"))
    from mtl_study import train

    from detaux_ray.config import load_config

    cfg = load_config("quick", ["mtl.epochs=2", "mtl.width=4", "mtl.batch_size=8", "data.image_size=16"])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (64, 16, 16, 3), dtype=np.uint8)
    principal = rng.integers(0, 3, 64)
    principal[16:] = -1  # 16 labelled, 48 unlabelled
    targets = {"principal": principal, "auxiliary": rng.integers(0, 2, 64)}
    test = val = (images[:16], principal[:16])
    stl = train(cfg, "stl", images, targets, test, 0, val=val)
    hps = train(cfg, "hps", images, targets, test, 0, val=val)
    assert len(stl["val_curve"]) == len(hps["val_curve"]) == 2
    assert set(stl["train_ce"][0]) == {"principal"} and set(hps["train_ce"][0]) == {"principal", "auxiliary"}
    altered = images.copy()
    altered[16:] = 255 - altered[16:]
    assert train(cfg, "stl", altered, targets, test, 0, val=val)["curve"] == stl["curve"]
    assert train(cfg, "hps", altered, targets, test, 0, val=val)["train_ce"] != hps["train_ce"]


def test_restarts_keep_the_run_of_largest_score_in_every_subset(tmp_path):
    """bench/restarts.py: three seeds' kept starts (score, labels); a run without a start is kept last."""
    runs = [{"file": "toy_seed0.npz", "dataset": "toy", "starts": [{"score": 2.0, "min_hc": 0.9}, {"score": 0.5, "min_hc": 0.95}]},
            {"file": "toy_seed1.npz", "dataset": "toy", "starts": [{"score": 1.0, "min_hc": 0.4}]},
            {"file": "toy_seed2.npz", "dataset": "toy", "starts": []}]
    path = tmp_path / "starts.json"
    path.write_text(json.dumps({"runs": runs}))
    out = _run("bench/restarts.py", str(path), "--max", "3")["restarts"]["toy"]
    assert out["1"]["mean_labels"] == pytest.approx((0.9 + 0.4 + 0.0) / 3, abs=1e-3)
    # pairs: {0, 1} -> 0.9, {0, 2} -> 0.9, {1, 2} -> 0.4; the score kept the better run in each
    assert out["2"] == {"sets": 3, "mean_labels": pytest.approx(0.733, abs=1e-3), "at_least_0.7": pytest.approx(0.667, abs=1e-3),
                        "at_least_0.8": pytest.approx(0.667, abs=1e-3), "score_kept_the_better": 1.0}
    assert out["3"]["mean_labels"] == 0.9
