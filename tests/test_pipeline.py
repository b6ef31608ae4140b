"""End to end on a real local Ray, as scenarios over a few shared runs (`Runs`): a diverged run keeps its
checkpoint; the rerun resumes, survives a killed training worker (stage 1 on 2 DDP workers) and finishes with the
labels of an uninterrupted stage 1; the seeds; every model and the ablation; a third run reuses every stage; a
single-cluster discovery stops before MTL. Then bad input, changed data, locks and few labels."""

import json
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "jobs"))
import full_pipeline  # noqa: E402

TINY = ["data.n_images=1200", "data.image_size=16", "disentangle.k=3", "disentangle.epochs=2",
        "disentangle.pairs_per_epoch=256", "disentangle.batch_size=32", "disentangle.log_images_every=1",
        "discover.clusterer=kmeans++", "discover.n_clusters=4", "mtl.epochs=1", "mtl.width=8",
        "resources.num_workers=2", "resources.cpus_per_worker=0.5"]


def run(run_dir, *extra):
    argv = ["--run-dir", str(run_dir)]
    for item in TINY + list(extra):
        argv += ["--set", item]
    return full_pipeline.main(argv)


def scalars(tb_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps, tags = [], set()
    for f in sorted(Path(tb_dir).glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        tags |= set(acc.Tags()["scalars"]) | set(acc.Tags()["images"])
        if tag in acc.Tags()["scalars"]:
            steps += [e.step for e in acc.Scalars(tag)]
    return steps, tags


class Runs:
    """The end-to-end runs the scenarios below read, each made once per module, in this order:

    1. `run`: stage 1 diverges in epoch 1 (exit 5); the rerun resumes at epoch 1, loses rank 0 mid-epoch (stage 1
       on 2 DDP workers), restarts from the checkpoint and completes; then discovery, STL and MTL-HPS over 2 seeds.
    2. `reference`: a fresh, uninterrupted stage 1 that stops after it (a single-cluster discovery: exit 4).
    3. `between`: a copy of `reference` (interrupted between stages) finished with every stage-3 model.
    """

    def __init__(self, base: Path):
        self.base, self.out, self.err = base, {}, {}

    def make(self, name: str, *extra: str, copy_of: str | None = None) -> int:
        import contextlib
        import io

        if copy_of is not None:
            shutil.copytree(self.base / copy_of, self.base / name)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run(self.base / name, *extra)
        self.out[name], self.err[name] = self.out.get(name, "") + out.getvalue(), self.err.get(name, "") + err.getvalue()
        return code


@pytest.fixture(scope="module")
def runs(ray_session, tmp_path_factory):
    r = Runs(tmp_path_factory.mktemp("pipeline"))
    r.codes = {"nan": r.make("run", "debug.nan_epoch=1")}
    r.after_nan = {"stage": (r.base / "run" / "disentangle").exists(), "report": (r.base / "run" / "report.json").exists(),
                   "checkpoints": bool(list((r.base / "run" / "checkpoints").glob("disentangle-*/checkpoint_*")))}
    r.codes["resumed"] = r.make("run", "debug.kill_at=disentangle:1:2", "mtl.seeds=2")
    r.codes["reference"] = r.make("reference", "discover.clusterer=kmeans", "discover.n_clusters=1")
    return r


@pytest.mark.slow
def test_a_diverged_stage_1_stops_with_exit_5_and_keeps_its_last_good_checkpoint(runs):
    assert runs.codes["nan"] == 5 and "non-finite in epoch 1" in runs.err["run"]
    assert runs.after_nan == {"stage": False, "report": False, "checkpoints": True}  # epoch 0's checkpoint only


@pytest.mark.slow
def test_the_rerun_resumes_through_a_lost_worker_with_the_steps_of_an_uninterrupted_run(runs):
    run_dir = runs.base / "run"
    assert runs.codes["resumed"] == 0, runs.err["run"][-3000:]
    m1 = json.loads((run_dir / "disentangle" / "manifest.json").read_text())
    assert m1["epochs"] == 2 and m1["steps"] == 2 * (256 // 2 // 32)
    assert m1["restarts"] == 1 and m1["nodes"] == 1  # the lost rank 0, counted on the fit's status board
    assert "stage 1 on 1 node, its worker group restarted 1 time(s)" in (run_dir / "report.md").read_text()
    steps, _ = scalars(run_dir / "tensorboard" / "disentangle", "loss/total")
    assert sorted(steps) == [0, 1]  # epoch 0 from the first run, epoch 1 from the resumed one: nothing redone


@pytest.mark.slow
def test_a_finished_run_has_its_report_scorecard_artifacts_and_tensorboard(runs):
    run_dir = runs.base / "run"
    report = json.loads((run_dir / "report.json").read_text())
    for key in ("stl_accuracy", "mtl_accuracy", "nmi_principal_aux", "ami_principal_aux", "n_aux_classes"):
        assert isinstance(report[key], (int, float))
    assert 0.0 <= report["stl_accuracy"] <= 1.0 and report["n_aux_classes"] == 4
    assert set(report["factor_scores"]) == {"floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"}
    assert all(set(v) >= {"homogeneity", "completeness"} for v in report["factor_scores"].values())
    assert report["subspace_criterion"] == "calinski" and report["chosen_subspace"] in (1, 2)
    md = (run_dir / "report.md").read_text()
    assert md.startswith("# Detaux run report") and "## Stage 1 scorecard" in md and "![scorecard](scorecard.png)" in md
    for f in ("disentangle/model.pt", "discover/labels.parquet", "discover/embeddings.parquet", "discover/subspaces.parquet",
              "discover/diagnostics.json", "discover/scorecard.png", "scorecard.png", "mtl/results.json"):
        assert (run_dir / f).is_file(), f
    card = report["scorecard"]  # every subspace (and the whole latent) x the principal and every hidden factor
    assert card["rows"] == ["0", "1", "2", "all"] and card["factors"][0] == "scale"
    assert set(card["factors"]) == {"floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"}
    assert all(-1.0 <= v <= 1.0 for row in card["scores"] for v in row)
    sub = pq.read_table(run_dir / "discover" / "subspaces.parquet")
    lab = pq.read_table(run_dir / "discover" / "labels.parquet")
    assert sub.column_names == ["id", "subspace_0", "subspace_1", "subspace_2"] and sub.num_rows == lab.num_rows
    assert sub.column("id").to_pylist() == lab.column("id").to_pylist()  # shapes: the combination index
    assert sub.schema.field("subspace_1").type.list_size == 10
    _, tags = scalars(run_dir / "tensorboard" / "disentangle", "loss/total")
    assert {"loss/rec", "loss/prin", "loss/dist", "loss/spar", "loss/cons", "loss/reg", "beta/beta1",
            "oracle/pick_subspace_0", "reconstruction", "latent_traversal", "scorecard/principal_in_alpha",
            "scorecard/scale/subspace_0", "scorecard/wall_hue/subspace_2"} <= tags
    for model in ("stl", "hps"):  # one TensorBoard run per model, the same tags: the curves overlay
        assert "test_principal_accuracy" in scalars(run_dir / "tensorboard" / "mtl" / model, "")[1]
    # each task's own training CE, per epoch, where there is more than one task: which task drives the trunk
    steps, tags = scalars(run_dir / "tensorboard" / "mtl" / "hps", "train_ce/auxiliary")
    assert {"train_ce/principal", "train_ce/auxiliary"} <= tags and len(steps) == report["config"]["mtl"]["epochs"]
    assert not any(t.startswith("train_ce/") for t in scalars(run_dir / "tensorboard" / "mtl" / "stl", "")[1])


@pytest.mark.slow
def test_every_model_runs_over_two_seeds_with_a_welch_test_against_stl(runs):
    r = json.loads((runs.base / "run" / "report.json").read_text())
    seeds = r["seeds"]
    assert seeds["seeds"] == [0, 1] and len(seeds["accuracy"]["stl"]) == len(seeds["accuracy"]["mtl"]) == 2
    assert seeds["accuracy"]["mtl"][0] == r["models"]["mtl"]["test_principal_accuracy"] and "p_value" in seeds
    assert set(seeds["models"]) == {"stl", "mtl"} and "p_value" in seeds["models"]["mtl"]
    assert "Welch t-test" in (runs.base / "run" / "report.md").read_text()
    assert "test_principal_accuracy" in scalars(runs.base / "run" / "tensorboard" / "mtl" / "hps_seed1", "")[1]


@pytest.mark.slow
def test_an_uninterrupted_stage_1_stops_at_one_cluster_with_nothing_after_it(runs):
    reference = runs.base / "reference"
    assert runs.codes["reference"] == 4 and "found 1 cluster" in runs.err["reference"]
    assert (reference / "disentangle" / "model.pt").is_file() and not (reference / "discover").exists()


@pytest.mark.slow
def test_every_stage_3_model_after_an_interruption_between_stages(runs):
    """Interrupted between stages (stage 1 complete, nothing after it): the rerun finishes with the labels of the
    resumed run (the resumed training retraced the uninterrupted one exactly). It also discovers 2 auxiliary tasks,
    trains NDDR-CNN with uncertainty weighting and MTI-Net on all three tasks through the same Ray Train stage, the
    peers MAXL and AuxiLearn, NDDR and MTI on the principal alone (the controls), and the entangled ablation, two
    fits at a time (2 x 0.25 + 0.25 CPUs each on the session's 2; the number of workers is part of the stage hash,
    their CPUs are not)."""
    between = runs.base / "between"
    code = runs.make("between", "mtl.model=nddr", "mtl.loss_weighting=uncertainty", "discover.n_auxiliary=2",
                     "mtl.compare=[mti, maxl, auxilearn]", "mtl.controls=true", "mtl.entangled_ablation=true",
                     "mtl.meta_every=2", "resources.cpus_per_worker=0.25", copy_of="reference")
    assert code == 0, runs.err["between"][-3000:]
    assert "[pipeline] 7 fits, 2 at a time" in runs.out["between"]  # 5 models + 2 controls
    labels = pq.read_table(runs.base / "run" / "discover" / "labels.parquet").to_pydict()
    two = pq.read_table(between / "discover" / "labels.parquet").to_pydict()
    assert {k: two[k] for k in labels} == labels and len(set(two["auxiliary_1"])) == 4
    r = json.loads((between / "report.json").read_text())
    assert r["mtl_model"] == "nddr" and r["models"]["mtl"]["loss_weighting"] == "uncertainty"
    assert r["models"]["mtl"]["tasks"] == ["auxiliary", "auxiliary_1", "principal"]
    assert r["models"]["mtl"]["parameters"] > r["models"]["stl"]["parameters"] * 3  # a backbone per task
    # The quick preset discovers on independent components (discover.space=ica): two distinct ones, each named by
    # the live subspace it lies in most.
    assert len({t["component"] for t in r["auxiliary_tasks"]}) == 2 and {t["subspace"] for t in r["auxiliary_tasks"]} <= {1, 2}
    assert set(r["models"]) == {"stl", "mtl", "mti", "maxl", "auxilearn", "entangled", "nddr_alone", "mti_alone"}
    assert r["models"]["mti"]["model"] == "mti" and r["models"]["nddr_alone"]["model"] == "nddr"
    assert r["models"]["nddr_alone"]["tasks"] == ["principal"]  # the control: the same architecture, principal only
    assert r["models"]["mtl"]["parameters"] > r["models"]["nddr_alone"]["parameters"] * 2  # a column per task
    # The peers learn their own labels (C * psi classes), with their generator in the parameter count.
    assert r["models"]["maxl"]["auxiliary_classes"] == 8 * 5 and r["models"]["auxilearn"]["auxiliary_split_images"] > 0
    assert r["models"]["maxl"]["parameters"] > r["models"]["stl"]["parameters"] * 1.9
    assert all(0.0 <= m["test_principal_accuracy"] <= 1.0 and m["parameters"] > 0 for m in r["models"].values())
    assert r["entangled_ablation"]["ae_steps"] == 2 * (256 // 2 // 32)  # stage 1's 256 pairs per epoch, on two workers
    md = (between / "report.md").read_text()
    assert "entangled-AE labels (ablation)" in md and "MTL-MTI + Detaux" in md
    assert "| MAXL (learned labels) |" in md and "| AuxiLearn (learned labels) |" in md
    assert "| NDDR on the principal alone (control) | principal |" in md
    board = between / "tensorboard" / "mtl"
    assert {"log_sigma2_principal", "log_sigma2_auxiliary", "log_sigma2_auxiliary_1"} <= scalars(board / "nddr", "")[1]
    assert "test_principal_accuracy" in scalars(board / "mti", "")[1]
    for peer in ("maxl", "auxilearn"):
        assert {"meta_loss", "label_entropy", "test_principal_accuracy"} <= scalars(board / peer, "")[1]
    assert "label_diversity" in scalars(board / "maxl", "")[1]
    for control in ("nddr_alone", "mti_alone"):  # the controls log apart from the models
        assert "test_principal_accuracy" in scalars(board / control, "")[1]


@pytest.mark.slow
def test_a_third_run_reuses_every_stage_and_recomputes_an_artifact_changed_since(runs):
    run_dir = runs.base / "run"
    labels = pq.read_table(run_dir / "discover" / "labels.parquet").to_pydict()
    before = len(runs.out["run"])
    assert runs.make("run", "mtl.seeds=2") == 0
    assert runs.out["run"][before:].count("already complete for this config") == 3
    assert pq.read_table(run_dir / "discover" / "labels.parquet").to_pydict() == labels
    assert all(s["reused"] for s in json.loads((run_dir / "report.json").read_text())["stages"].values())
    (run_dir / "discover" / "labels.parquet").write_bytes(b"garbage")
    before = len(runs.out["run"])
    assert runs.make("run", "mtl.seeds=2") == 0
    out = runs.out["run"][before:]
    assert "artifact labels.parquet changed since it was written (checksum mismatch); running it again" in out
    assert out.count("already complete for this config") == 2
    assert pq.read_table(run_dir / "discover" / "labels.parquet").to_pydict() == labels


@pytest.mark.slow
def test_a_single_cluster_discovery_stops_before_mtl_and_keeps_the_previous_report(runs):
    """A discovery that finds one cluster stops with its own exit code, before MTL, leaving no artifact; the
    previous run's report and resolved config stay, and still describe the same run."""
    import yaml

    single = runs.base / "single"
    shutil.copytree(runs.base / "run", single, ignore=shutil.ignore_patterns("discover", "mtl"))
    assert runs.make("single", "discover.clusterer=kmeans", "discover.n_clusters=1") == 4
    assert "found 1 cluster" in runs.err["single"]
    assert not (single / "discover").exists() and not (single / "mtl").exists()
    assert yaml.safe_load((single / "config.yaml").read_text()) == json.loads((single / "report.json").read_text())["config"]


@pytest.mark.parametrize("argv,code,msg", [
    (["--preset", "nope"], 2, "unknown preset"),
    (["--set", "mtl.epoch=3"], 2, "unknown config key"),
    (["--set", "data.principal=colour"], 3, "principal factor 'colour' does not exist"),
    (["--set", "data.dataset=imagenet"], 3, "unknown dataset 'imagenet'"),
    (["--set", "data.n_images=1", "--set", "data.heldout_hues=[]"], 3, "principal class"),
    (["--set", "data.image_size=48"], 2, "disentangle.arch=conv takes data.image_size 16, 32 or 64, got 48"),
    (["--set", "disentangle.arch=resnet18", "--set", "data.image_size=96"], 3, "image_size must be 16, 32 or 64"),
    (["--set", "data.heldout_hues=[]"], 3, "held-out split is empty"),
    (["--set", "disentangle.pairs_per_epoch=8"], 2, "less than one batch"),
])
def test_bad_input_exits_with_one_clear_message(tmp_path, capsys, argv, code, msg):
    assert full_pipeline.main(argv + ["--run-dir", str(tmp_path / "r")]) == code
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def _imagefolder_pipeline(root, run_dir):
    from detaux_ray.config import load_config
    from dataset_files import FORMATS
    from detaux_ray.distributed.pipeline import Pipeline

    cfg = load_config("quick", ["data.dataset=imagefolder", f"data.path={root}", "data.n_images=0",
                                *FORMATS["imagefolder"][1], "disentangle.pairs_per_epoch=0", "disentangle.batch_size=16"])
    return Pipeline(cfg, run_dir)


def test_a_changed_dataset_reruns_its_stages_and_says_why(tmp_path, capsys):
    """The stage hash covered data.path only: images added, removed or replaced under it reused stale stages."""
    import os

    from dataset_files import png_bytes, random_image, write_imagefolder
    from detaux_ray.results import DisentangleResult

    (tmp_path / "data").mkdir()
    root = write_imagefolder(tmp_path / "data")
    calls = []

    def body(out):
        calls.append(1)
        (out / "model.pt").write_bytes(b"weights")
        return DisentangleResult("model.pt", 1, 1, {}, {})

    def stage():
        p = _imagefolder_pipeline(root, tmp_path / "run")
        p.stage("disentangle", body)
        return capsys.readouterr().out

    stage()
    assert "already complete" in stage() and len(calls) == 1  # unchanged files: reused
    def add():
        (root / "class_0" / "new.png").write_bytes(png_bytes(random_image()))
        with open(root / "extra.csv", "a") as fh:
            fh.write("class_0/new.png,red\n")

    changes = [add,
               lambda: (root / "class_1" / "4.png").unlink(),  # removed
               lambda: (root / "class_2" / "5.png").write_bytes(png_bytes(random_image())),  # replaced in place
               lambda: os.utime(root / "class_2" / "6.png", ns=(0, 0))]  # same bytes, touched: cheap rule, reruns
    for n, change in enumerate(changes, start=2):
        change()
        out = stage()
        assert "the dataset changed since it was computed" in out and len(calls) == n, out


def test_labels_whose_rows_are_not_this_datasets_are_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dataset_files import write_imagefolder
    from detaux_ray.errors import RunDirError

    (tmp_path / "data").mkdir()
    p = _imagefolder_pipeline(write_imagefolder(tmp_path / "data"), tmp_path / "run")
    (tmp_path / "run" / "discover").mkdir(parents=True)
    for bad in (-1, len(p.source)):
        pq.write_table(pa.table({"row": [0, bad], "principal": [0, 1], "auxiliary": [0, 1]}),
                       tmp_path / "run" / "discover" / "labels.parquet")
        with pytest.raises(RunDirError, match="has rows outside 0..89"):
            p.labels()


@pytest.mark.slow
def test_a_second_run_on_a_busy_run_directory_exits_6_naming_the_holder(tmp_path, capsys):
    import os
    import signal
    import subprocess
    import time

    run_dir = tmp_path / "run"
    argv = [sys.executable, str(Path(full_pipeline.__file__)), "--run-dir", str(run_dir)]
    for item in TINY:
        argv += ["--set", item]
    log = tmp_path / "first.log"
    with open(log, "w") as fh:
        first = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, text=True, env={**os.environ, "RAY_ADDRESS": ""})
    try:
        deadline = time.time() + 180  # the first run holds the lock and trains stage 1
        while "stage 'disentangle' starting" not in log.read_text() and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, log.read_text()
        assert run(run_dir) == 6
        err = capsys.readouterr().err
        assert f"is in use by pid {first.pid} on host" in err and err.count("\n") == 1
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)
    out = log.read_text()
    # the first run was never disturbed: it stops only when told to, in the stage it was in
    assert first.returncode == 130 and "stopped during stage 'disentangle'" in out, out


def test_stage_2_loads_stage_1_only_from_a_folder_complete_for_this_config(tmp_path):
    from detaux_ray.artifacts import manifest, save_torch, write_json
    from dataset_files import write_imagefolder
    from detaux_ray.errors import RunDirError

    (tmp_path / "data").mkdir()
    p = _imagefolder_pipeline(write_imagefolder(tmp_path / "data"), tmp_path / "run")
    folder = tmp_path / "run" / "disentangle"
    save_torch(folder / "model.pt", {"w": 1})
    write_json(folder / "manifest.json", manifest("disentangle", "another-hash", 1.0, folder, data_fingerprint=p.fingerprint))
    with pytest.raises(RunDirError, match="is not stage 1 of this config \\(it was computed for another config"):
        p._stage1_model()
    write_json(folder / "manifest.json", manifest("disentangle", p.hash("disentangle"), 1.0, folder, data_fingerprint=p.fingerprint))
    assert p._stage1_model() == {"w": 1}


def test_a_full_disk_under_a_stage_is_exit_6_and_keeps_no_half_stage(tmp_path):
    import errno

    from dataset_files import write_imagefolder
    from detaux_ray.errors import RunDirError

    (tmp_path / "data").mkdir()
    p = _imagefolder_pipeline(write_imagefolder(tmp_path / "data"), tmp_path / "run")

    def body(out):
        (out / "labels.parquet").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")  # what pyarrow's or TensorBoard's writer raises

    with pytest.raises(RunDirError, match="no space left while stage 'discover' wrote") as e:
        p.stage("discover", body)
    assert e.value.exit_code == 6 and list((tmp_path / "run").iterdir()) == []


@pytest.mark.slow
def test_few_labels_every_stage_uses_what_it_can(few_labels):
    """data.labelled_frac (the label-efficiency bench's run at 0.3): stage 1's pairs from the labelled images, every
    training image labelled by discovery, the multi-task model's principal loss on the labelled ones, STL on the
    labelled images only; the report says so."""
    run_dir = few_labels.folder / "frac_0.3"
    report = json.loads((run_dir / "report.json").read_text())
    ds = report["dataset"]
    n_train, n_lab = ds["n_train"], ds["n_labelled"]
    assert n_lab == round(0.3 * n_train)
    stage2 = few_labels.folder / "stages" / "discover" / report["stages"]["discover"]["hash"]  # the bench's stage store
    labels = pq.read_table(stage2 / "labels.parquet").to_pydict()
    assert len(labels["auxiliary"]) == n_train and min(labels["auxiliary"]) >= 0
    assert sum(p >= 0 for p in labels["principal"]) == n_lab
    # as many steps as the model on every image: the labelled images repeated to n_train rows per epoch
    assert f"training STL for 1 epochs (seed 0) on {n_lab} images, repeated to {n_train} per epoch" in few_labels.out
    # a peer that generates its auxiliary labels per principal class learns from the labelled images too, as STL
    assert f"training AUXILEARN for 1 epochs (seed 0) on {n_lab} images, repeated to {n_train} per epoch" in few_labels.out
    # the multi-task model: STL's table beside every image (principal masked) at twice the batch (mtl/tables.py)
    assert (f"training HPS seed 1 for 1 epochs (seed 1) on {n_train} images, {n_lab} with their principal label: each "
            f"step 64 labelled images (repeated as STL's) beside 64 of all {n_train} for the auxiliary task") in few_labels.out
    assert f"**{n_lab} of the {n_train} training images have their principal label.**" in (run_dir / "report.md").read_text()
    # stage 1 reconstructed unlabelled images beside the labelled pairs, one per pair
    stage1 = few_labels.folder / "stages" / "disentangle" / report["stages"]["disentangle"]["hash"]
    m = json.loads((stage1 / "manifest.json").read_text())
    assert m["metrics"]["unlabelled_images"] == m["metrics"]["pairs"] > 0
    assert f"reconstructed the other {n_train - n_lab} too" in (run_dir / "report.md").read_text()


@pytest.mark.slow
def test_stage_1_compiled_on_two_ddp_workers(ray_session, tmp_path, capsys):
    """resources.compile=default through Ray Train (2 DDP workers): stage 1 trains every step of its two epochs
    (the warm-up and the full objective) with a finite loss and a handful of graphs, not one per step or per break."""
    code = run(tmp_path / "run", "resources.compile=default", "discover.clusterer=kmeans", "discover.n_clusters=1")
    assert code == 4, capsys.readouterr().err[-3000:]  # stops at one cluster, right after stage 1
    m = json.loads((tmp_path / "run" / "disentangle" / "manifest.json").read_text())
    assert m["steps"] == 2 * (256 // 2 // 32)
    assert 0 < m["metrics"]["loss/total"] < float("inf") and "loss/cons" in m["metrics"]
    assert 2 <= m["metrics"]["compiled_graphs"] <= 8, m["metrics"]


@pytest.mark.slow
def test_a_constant_latent_trains_stage_1_again_with_the_remedy_and_a_rerun_reuses_both(ray_session, tmp_path, capsys):
    """Stage 1 leaves every subspace but alpha constant (debug.constant_latent, as on `digits`): discovery stops,
    stage 1 is trained again with config.CONSTANT_LATENT_REMEDY in run_dir/fallback/, and the run finishes there,
    its report saying so. The rerun reuses both stage 1s (nothing trained). Where the config already is the remedy,
    there is no fallback: the error (exit 4) says nothing is left to try."""
    from detaux_ray.config import CONSTANT_LATENT_REMEDY

    run_dir = tmp_path / "run"
    extra = ["debug.constant_latent=true", "resources.num_workers=1", "mtl.baseline=false"]
    assert run(run_dir, *extra) == 0, capsys.readouterr().err[-3000:]
    out = capsys.readouterr().out
    assert "every subspace other than the principal one (0) is constant" in out and "Falling back" in out
    first, second = (json.loads((d / "disentangle" / "manifest.json").read_text()) for d in (run_dir, run_dir / "fallback"))
    assert first["config_hash"] != second["config_hash"] and (run_dir / "fallback" / "mtl" / "results.json").is_file()
    assert not (run_dir / "discover").exists()  # the first stage 1's discovery stopped: nothing half-written
    report = json.loads((run_dir / "report.json").read_text())
    assert report["fallback"]["overrides"] == list(CONSTANT_LATENT_REMEDY) and report["n_aux_classes"] == 4
    assert report["config"]["disentangle"]["w_dependence"] == 10
    assert "**Stage 1 ran twice.**" in (run_dir / "report.md").read_text()
    assert list((run_dir / "tensorboard" / "fallback" / "disentangle").glob("events.out.tfevents.*"))

    assert run(run_dir, *extra) == 0
    out = capsys.readouterr().out
    assert out.count("stage 'disentangle' already complete") == 2 and "Falling back" in out
    assert "[disentangle] epoch" not in out  # neither stage 1 trained again

    from detaux_ray.config import load_config
    from detaux_ray.distributed.pipeline import Pipeline
    from detaux_ray.errors import ConstantLatentError

    remedy = Pipeline(load_config("quick", TINY + list(CONSTANT_LATENT_REMEDY)), tmp_path / "stuck")
    with pytest.raises(ConstantLatentError, match=r"^every subspace .* is constant; this run already used the remedy "
                       r"formulation \(disentangle.w_dependence=10\): nothing "
                       r"else to try by itself; the earlier remedy \(--set disentangle.confusion_after_warmup=true "
                       r"--set disentangle.spread_floor=0.5\) or a lower disentangle.w_adversary"):
        remedy.fall_back(ConstantLatentError("every subspace other than the principal one (0) is constant; rerun with X"))
    assert remedy.fallback is None and remedy.stage_dir("disentangle") == tmp_path.resolve() / "stuck" / "disentangle"


@pytest.mark.slow
def test_restarts_train_stage_1_with_their_own_seeds_and_the_run_keeps_the_best_scored_discovery(ray_session, tmp_path, capsys):
    """disentangle.restarts=2: two stage 1s (restarts/0, restarts/1) with their own seeds, trained at once (the
    session's Ray holds both), discovery on each, and stage 3 on the labels of the restart whose discovery scored highest; the report's table says which. A rerun
    reuses all five stages. A restart whose nuisance latent was constant is never kept; when every one was, the
    error goes on to the fallback."""
    import torch

    from detaux_ray.config import load_config
    from detaux_ray.distributed.pipeline import Pipeline
    from detaux_ray.errors import ConstantLatentError
    from detaux_ray.results import DiscoverResult, DisentangleResult

    run_dir = tmp_path / "run"
    extra = ["disentangle.restarts=2", "resources.num_workers=1", "mtl.baseline=false"]
    assert run(run_dir, *extra) == 0, capsys.readouterr().err[-3000:]
    out = capsys.readouterr().out
    report = json.loads((run_dir / "report.json").read_text())
    rows = report["restarts"]
    assert [r["restart"] for r in rows] == [0, 1] and [r["folder"] for r in rows] == ["restarts/0", "restarts/1"]
    best = max(rows, key=lambda r: (r["score"], -r["restart"]))
    assert [r["kept"] for r in rows] == [r is best for r in rows] and f"kept restart {best['restart']} of 2" in out
    assert "2 stage-1 restarts, 2 at a time" in out and "[disentangle:restart 1] epoch 2/2" in out  # side by side
    s1, s2 = ({r: json.loads((run_dir / "restarts" / str(r) / stage / "manifest.json").read_text()) for r in (0, 1)}
              for stage in ("disentangle", "discover"))
    assert s1[0]["config_hash"] != s1[1]["config_hash"] and rows[0]["seed"] != rows[1]["seed"]
    w = [torch.load(run_dir / "restarts" / str(r) / "disentangle" / "model.pt") for r in (0, 1)]
    assert any(not torch.equal(w[0][k], w[1][k]) for k in w[0])  # another seed, another stage 1
    assert report["stages"]["discover"]["hash"] == s2[best["restart"]]["config_hash"]  # stage 3 read the kept labels
    assert report["n_aux_classes"] == best["n_classes"] and report["config"]["disentangle"]["restart"] == best["restart"]
    assert (run_dir / "mtl" / "results.json").is_file() and not (run_dir / "disentangle").exists()
    for r in (0, 1):
        assert list((run_dir / "tensorboard" / f"restart_{r}" / "disentangle").glob("events.out.tfevents.*"))
    assert "**Stage 1 ran 2 times**" in (run_dir / "report.md").read_text()

    assert run(run_dir, *extra) == 0
    out = capsys.readouterr().out
    assert out.count("already complete") == 5 and "[disentangle" not in out

    p = Pipeline(load_config("quick", TINY + extra), tmp_path / "other")
    first, found = DisentangleResult.from_dict(s1[0]), DiscoverResult.from_dict(s2[0])
    constant = ConstantLatentError("every subspace other than the principal one (0) is constant; rerun with X")
    p.stages = {"disentangle (restart 1)": None, "discover (restart 1)": None}
    assert p.keep([(first, constant), (first, found)]) == (first, found)
    assert p.restarts[0]["stopped"].endswith("is constant") and p.restarts[1]["kept"] and p.cfg.disentangle.restart == 1
    with pytest.raises(ConstantLatentError):
        p.keep([(first, constant), (first, constant)])
