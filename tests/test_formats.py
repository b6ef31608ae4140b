"""Real-dataset loaders: each format written by the test in its exact on-disk layout, read back through Ray Data
(streaming, no object-store cache), a few stage-1 steps on the streamed pairs, and the bad inputs."""

import io
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from detaux_ray.config import load_config
from detaux_ray.data import build_source
from detaux_ray.errors import DataError

RNG = np.random.default_rng(0)


def _png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _img(h: int = 32, w: int = 32) -> np.ndarray:
    return RNG.integers(0, 255, (h, w, 3), dtype=np.uint8)


def write_shapes3d(root, n=240):
    import h5py

    idx = np.arange(n)
    labels = np.stack([(idx // 24) % 10 / 10, (idx // 2) % 10 / 10, idx % 10 / 10, 0.75 + (idx % 8) / 16,
                       idx % 4, -30 + (idx % 15) * 60 / 14], axis=1)
    with h5py.File(root / "3dshapes.h5", "w") as f:
        f["images"] = RNG.integers(0, 255, (n, 64, 64, 3), dtype=np.uint8)
        f["labels"] = labels
    return root / "3dshapes.h5"


def write_cifar10(root, per_file=40):
    d = root / "cifar-10-batches-py"
    d.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"batch_label": name, "data": RNG.integers(0, 255, (per_file, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in RNG.integers(0, 10, per_file)], "filenames": [f"{i}.png" for i in range(per_file)]}
        (d / name).write_bytes(pickle.dumps(batch, protocol=2))
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}, protocol=2))
    return root


def write_svhn(root, n_train=150, n_test=60):
    from scipy.io import savemat

    for name, n in (("train_32x32.mat", n_train), ("test_32x32.mat", n_test)):
        savemat(root / name, {"X": RNG.integers(0, 255, (32, 32, 3, n), dtype=np.uint8),
                              "y": RNG.integers(1, 11, (n, 1)).astype(np.uint8)})
    return root


def write_faces(root, n_people=12):
    for pid in range(n_people):
        split = "test" if pid >= 9 else "train"
        (root / split).mkdir(exist_ok=True)
        for expr in ("a", "d", "f", "h", "n", "s"):
            (root / split / f"{pid:03d}_{'yom'[pid % 3]}_{'mf'[pid % 2]}_{expr}_a.jpg").write_bytes(_png(_img(48, 40), "JPEG"))
    return root


def write_cars(root, n_classes=4, per_class=12):
    from scipy.io import savemat

    sc = root / "stanford_cars"
    for d in ("devkit", "cars_train", "cars_test"):
        (sc / d).mkdir(parents=True)
    savemat(sc / "devkit" / "cars_meta.mat", {"class_names": np.array([f"car {i}" for i in range(n_classes)], dtype=object)})
    dt = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    for folder, ann in (("cars_train", "devkit/cars_train_annos.mat"), ("cars_test", "cars_test_annos_withlabels.mat")):
        recs = []
        for i in range(n_classes * per_class // 2):
            name = f"{i:05d}.jpg"
            (sc / folder / name).write_bytes(_png(_img(30 + i % 7, 50), "JPEG"))  # mixed sizes, like the real set
            recs.append((0, 0, 10, 10, i % n_classes + 1, name))
        savemat(sc / ann, {"annotations": np.array(recs, dtype=dt)})
    return root


def write_imagefolder(root, n_classes=3, per_class=30):
    rows = ["file,colour"]
    for c in range(n_classes):
        (root / f"class_{c}").mkdir()
        for i in range(per_class):
            (root / f"class_{c}" / f"{i}.png").write_bytes(_png(_img()))
            rows.append(f"class_{c}/{i}.png,{'red' if i % 2 else 'blue'}")
    (root / "extra.csv").write_text("\n".join(rows) + "\n")
    return root


def write_parquet(root, n=120):
    images = [_png(_img()) for _ in range(n)]
    t = pa.table({"img": images, "y": [f"k{i % 3}" for i in range(n)], "part": ["test" if i % 5 == 0 else "train" for i in range(n)]})
    pq.write_table(t, root / "data.parquet", row_group_size=32)
    return root / "data.parquet"


FORMATS = {  # dataset -> (fixture writer, config overrides)
    "shapes3d": (write_shapes3d, ["data.principal=shape", "data.image_size=32", "data.resize=resize", "data.noise=0.15",
                                  "data.heldout_hues=[1, 3, 5, 7, 9]"]),
    "cifar10": (write_cifar10, ["data.principal=label", "data.image_size=32"]),
    "svhn": (write_svhn, ["data.principal=label", "data.image_size=32"]),
    "faces": (write_faces, ["data.principal=label", "data.image_size=32", "data.resize=center_crop"]),
    "cars": (write_cars, ["data.principal=label", "data.image_size=64", "data.resize=resize", "disentangle.arch=resnet18",
                          "disentangle.latent_dim=4", "disentangle.k=3"]),
    "imagefolder": (write_imagefolder, ["data.principal=label", "data.image_size=32", "data.extra_csv=extra.csv"]),
    "parquet": (write_parquet, ["data.principal=label", "data.image_size=32", "data.image_column=img",
                                "data.label_column=y", "data.split_column=part"]),
}


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
        assert set(src.factors) == {"floor_hue", "wall_hue", "object_hue", "scale", "orientation"}
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
        y1, y2 = torch.from_numpy(batch["y1"]).long(), torch.from_numpy(batch["y2"]).long()
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
