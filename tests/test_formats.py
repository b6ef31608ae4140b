"""Real-dataset loaders: each format written by the test in its exact on-disk layout, read back through Ray Data
(streaming, no object-store cache), a few stage-1 steps on the streamed pairs, and the bad inputs."""

import pickle

import numpy as np
import pytest
import torch

from detaux_ray.config import load_config
from detaux_ray.data import build_source
from detaux_ray.data.fixtures import FORMATS, write_cifar10, write_parquet, write_svhn
from detaux_ray.errors import DataError



def source_for(dataset, tmp_path, extra=()):
    writer, overrides = FORMATS[dataset]
    path = writer(tmp_path)
    cfg = load_config("quick", [f"data.dataset={dataset}", f"data.path={path}", "data.n_images=0", *overrides, *extra])
    return cfg, build_source(cfg.data, cfg.seed)


@pytest.mark.parametrize("dataset", sorted(FORMATS))
def test_format_streams_through_ray_data_into_stage1(ray_session, tmp_path, dataset):
    from detaux_ray.disentangle import beta_schedule, detaux_loss
    from detaux_ray.distributed.streams import images_for, pair_stream, pair_table
    from detaux_ray.models import DisentangleAE, to_float_images

    cfg, src = source_for(dataset, tmp_path)
    assert len(src) > 0 and src.test_rows().size and src.train_rows().size and src.n_principal_classes >= 2
    if dataset == "shapes3d":
        # every factor, the principal's own column included (as for shapes): the diagnostics score labels against it
        assert set(src.factors) == {"floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"}
        assert np.array_equal(src.factors["shape"], src.principal)
    if dataset == "imagefolder":
        assert "colour" in src.factors
    images = images_for(src, "stream", 0.25)
    rows = src.train_rows()
    table = pair_table(rows, src.principal, 64, 0.5, 0, 0, batch_size=16)
    d = cfg.disentangle
    size = cfg.data.image_size
    model = DisentangleAE(size, d.k, d.latent_dim, d.arch, n_principal=src.n_principal_classes)  # cars: ResNet-18 map AE
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    steps = 0
    for batch in pair_stream(table, images, 0.25, 16).iter_batches(batch_size=16, batch_format="numpy"):
        assert batch["x1"].shape == (16, size, size, 3) and batch["x1"].dtype == np.uint8
        x1, x2 = to_float_images(torch.from_numpy(batch["x1"])), to_float_images(torch.from_numpy(batch["x2"]))
        y1, y2 = torch.from_numpy(np.array(batch["y1"], np.int64)), torch.from_numpy(np.array(batch["y2"], np.int64))
        loss, _, _ = detaux_loss(model, x1, x2, torch.from_numpy(batch["same"]), beta_schedule(d.epochs - 1, d), d, y1=y1, y2=y2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        assert torch.isfinite(loss)
    assert steps == 4
    # the streamed images are the files' images: same rows read directly give the same pixels
    direct = src.images(rows[:3])
    assert direct.shape == (3, size, size, 3) and np.array_equal(direct, src.images(rows[:3]))


def test_cifar_pixels_and_labels_match_the_files(tmp_path):
    root = write_cifar10(tmp_path)
    batch = pickle.loads((root / "cifar-10-batches-py" / "data_batch_2").read_bytes())
    cfg = load_config("quick", ["data.dataset=cifar10", f"data.path={root}", "data.principal=label", "data.n_images=0"])
    src = build_source(cfg.data, 0)
    assert len(src) == 240 and src.is_test.sum() == 40
    assert np.array_equal(src.images(np.array([45]))[0], batch["data"][5].reshape(3, 32, 32).transpose(1, 2, 0))
    assert src.principal[45] == batch["labels"][5] and src.class_names[0] == "c0"


def test_svhn_label_10_is_digit_0(tmp_path):
    from scipy.io import loadmat

    root = write_svhn(tmp_path)
    y = loadmat(root / "train_32x32.mat")["y"].reshape(-1)
    cfg = load_config("quick", ["data.dataset=svhn", f"data.path={root}", "data.principal=label", "data.n_images=0"])
    src = build_source(cfg.data, 0)
    assert np.array_equal(src.principal[:150], np.where(y == 10, 0, y))


@pytest.mark.parametrize("dataset,breaker,msg", [
    ("cifar10", lambda r: (r / "cifar-10-batches-py" / "data_batch_3").unlink(), "missing data_batch_3"),
    ("imagefolder", lambda r: (r / "class_1" / "3.png").write_bytes(b"not an image"), "corrupt or unreadable image"),
    ("svhn", lambda r: __import__("scipy.io").io.savemat(r / "train_32x32.mat", {
        "X": np.zeros((32, 32, 3, 5), np.uint8), "y": np.ones((4, 1), np.uint8)}), "4 labels for 5 images"),
    ("cars", None, "not 64x64, and data.resize is 'none'"),
    ("parquet", None, "column 'nope' not in"),
])
def test_bad_inputs_fail_with_one_clear_message(tmp_path, dataset, breaker, msg):
    writer, overrides = FORMATS[dataset]
    path = writer(tmp_path)
    extra = {"cars": ["data.resize=none"], "parquet": ["data.label_column=nope"]}.get(dataset, [])
    if breaker:
        breaker(tmp_path)
    cfg = load_config("quick", [f"data.dataset={dataset}", f"data.path={path}", "data.n_images=0", *overrides, *extra])
    with pytest.raises(DataError, match=msg):
        src = build_source(cfg.data, 0)
        src.images(np.arange(len(src)))  # a corrupt image deep in the set fails when it is read


def test_missing_path_and_unsafe_pickle(tmp_path):
    cfg = load_config("quick", ["data.dataset=cifar10", f"data.path={tmp_path / 'nowhere'}", "data.principal=label"])
    with pytest.raises(DataError, match="missing data_batch_1"):
        build_source(cfg.data, 0)
    root = write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    cfg = load_config("quick", ["data.dataset=cifar10", f"data.path={root}", "data.principal=label"])
    with pytest.raises(DataError, match="refusing to unpickle (posix|nt).system"):
        build_source(cfg.data, 0)


@pytest.mark.slow
def test_parquet_runs_the_whole_pipeline_streamed(ray_session, tmp_path, capsys):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "jobs"))
    import full_pipeline

    path = write_parquet(tmp_path)
    argv = ["--run-dir", str(tmp_path / "run")]
    for item in [f"data.path={path}", *FORMATS["parquet"][1], "data.dataset=parquet", "data.n_images=0", "data.cache=stream",
                 "disentangle.k=3", "disentangle.epochs=1", "disentangle.pairs_per_epoch=64", "disentangle.batch_size=16",
                 "discover.clusterer=kmeans++", "discover.n_clusters=3", "mtl.epochs=1", "mtl.width=8", "mtl.batch_size=16",
                 "resources.cpus_per_worker=0.5"]:
        argv += ["--set", item]
    assert full_pipeline.main(argv) == 0
    assert "streaming 120 images" in capsys.readouterr().out
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["dataset"]["name"] == "parquet" and report["dataset"]["n_test"] == 24
    assert report["n_aux_classes"] == 3 and 0.0 <= report["mtl_accuracy"] <= 1.0


@pytest.mark.parametrize("dataset", ["imagefolder", "faces", "cifar10", "svhn", "parquet", "shapes3d"])
def test_native_ids_are_the_datasets_own_identifiers(tmp_path, dataset):
    _, src = source_for(dataset, tmp_path)
    rows = np.arange(len(src))
    ids = src.native_ids(rows)
    assert len(ids) == len(src)
    if dataset in ("imagefolder", "faces"):  # the file path relative to the root
        assert all(isinstance(i, str) and not i.startswith("/") and i.lower().endswith((".png", ".jpg", ".jpeg")) for i in ids)
        assert len(set(ids)) == len(ids)
    elif dataset in ("cifar10", "svhn"):  # the index within its file: restarts at 0 in each file
        n_files = 6 if dataset == "cifar10" else 2  # data_batch_1..5 + test_batch; train + test .mat
        assert ids.min() == 0 and (ids == 0).sum() == n_files and ids.max() < len(src) // n_files * 2
    else:  # parquet: the table row; shapes3d: the combination index (its row in 3dshapes.h5)
        assert ids.tolist() == src.ids.tolist()
