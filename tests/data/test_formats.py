"""Real-dataset loaders: each format written by the test in its exact on-disk layout, read back through Ray Data
(streaming, no object-store cache), a few stage-1 steps on the streamed pairs, and the bad inputs."""

import dataclasses
import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from detaux_ray.config import load_config
from detaux_ray.data import build_source
from dataset_files import FORMATS, write_cifar10, write_parquet, write_svhn
from detaux_ray.errors import DataError



def source_for(dataset, tmp_path, extra=()):
    writer, overrides = FORMATS[dataset]
    path = writer(tmp_path)
    cfg = load_config("quick", [f"data.dataset={dataset}", f"data.path={path}", "data.n_images=0", *overrides, *extra])
    return cfg, build_source(cfg.data, cfg.seed)


@pytest.mark.parametrize("dataset", sorted(FORMATS))
def test_format_streams_through_ray_data_into_stage1(ray_session, tmp_path, dataset):
    from detaux_ray.disentangle.objective import beta_schedule, detaux_loss
    from detaux_ray.distributed.streams import images_for, pair_stream, pair_table
    from detaux_ray.disentangle.models import DisentangleAE
    from detaux_ray.tensors import to_float_images

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

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "jobs"))
    import full_pipeline

    path = write_parquet(tmp_path, unlabelled_every=2)  # 48 of the 96 training rows without a label
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
    assert report["dataset"]["n_train"] == 96 and report["dataset"]["n_labelled"] == 48
    assert report["n_aux_classes"] == 3 and 0.0 <= report["mtl_accuracy"] <= 1.0
    labels = pq.read_table(tmp_path / "run" / "discover" / "labels.parquet").to_pydict()
    assert len(labels["row"]) == 96 and min(labels["auxiliary"]) >= 0  # every training image has its auxiliary label
    assert sorted(r for r, y in zip(labels["row"], labels["principal"]) if y == -1) == [i for i in range(120) if i % 5 and i % 2 == 1]


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


# Pixel formats: one rule each, stated in docs/errors.md; refused values name the file or row (exit 3) -------------
def _png(img) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    """Probed: dark and bright 16-bit classes both became ~all 255 and STL learned nothing (chance, exit 0)."""
    from PIL import Image

    from detaux_ray.data.formats import decode_image

    for value, expect in ((1000, 4), (60000, 233)):
        img = Image.fromarray(np.full((32, 32), value, np.uint16))
        assert img.mode.startswith("I;16")
        assert np.unique(decode_image(_png(img), 32, "none", "x.png")).tolist() == [expect]


def test_alpha_is_composited_over_black():
    from PIL import Image

    from detaux_ray.data.formats import decode_image

    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:16] = (200, 100, 50, 255)  # opaque
    rgba[16:] = (200, 100, 50, 0)  # fully transparent: black, not the hidden colour
    out = decode_image(_png(Image.fromarray(rgba, "RGBA")), 32, "none", "x.png")
    assert out[0, 0].tolist() == [200, 100, 50] and out[-1, -1].tolist() == [0, 0, 0]
    half = np.full((32, 32, 4), (200, 100, 50, 128), np.uint8)
    assert decode_image(_png(Image.fromarray(half, "RGBA")), 32, "none", "x.png")[0, 0].tolist() == [100, 50, 25]


def test_a_decompression_bomb_is_refused_naming_the_file(tmp_path, monkeypatch):
    from PIL import Image

    from detaux_ray.data.formats import decode_image

    data = _png(Image.fromarray(np.zeros((64, 64, 3), np.uint8)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 = 4,096 > twice the limit: Pillow's bomb error
    with pytest.raises(DataError, match="image big.png is too large to decode safely"):
        decode_image(data, 64, "none", "big.png")


def test_a_missing_parquet_label_is_an_unlabelled_training_image_never_a_test_one(tmp_path):
    """data.dataset=parquet: a null label marks an unlabelled training image (the split keeps it in training and
    data.labelled_frac draws from the rest); a test row without a label, or no label at all, is refused."""
    import pyarrow as pa

    n = 200
    labels = [None if i % 4 == 3 else f"k{i % 2}" for i in range(n)]
    images = [np.full((16, 16, 3), 10 * (i % 20), np.uint8) for i in range(n)]
    cfg = _parquet_of(tmp_path, [im.tolist() for im in images], pa.array(labels, pa.string()))
    src = build_source(cfg.data, 0)
    missing = np.array([y is None for y in labels])
    assert not src.is_test[missing].any() and not src.is_labelled()[missing].any()
    assert (src.principal[missing] == -1).all() and set(src.principal[~missing]) == {0, 1}
    assert src.is_labelled()[~missing].all() and len(src.unlabelled_train_rows()) == missing.sum()
    assert src.is_test[~missing].mean() == pytest.approx(cfg.data.test_frac, abs=0.08)  # the split from the labelled rows
    few = build_source(dataclasses.replace(cfg.data, labelled_frac=0.5), 0)
    assert not few.is_labelled()[missing].any()  # the fraction is of the labelled training rows
    assert len(few.labelled_train_rows()) == round(0.5 * len(src.labelled_train_rows()))
    split = ["test" if i % 5 == 0 else "train" for i in range(n)]  # rows 15, 35, ... are test rows without a label
    pq.write_table(pa.table({"img": [im.tolist() for im in images], "y": pa.array(labels, pa.string()), "part": split}),
                   tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"10 test row\(s\) of .*t.parquet have no 'y' \(first at row 15\)"):
        build_source(dataclasses.replace(cfg.data, split_column="part"), 0)
    cfg = _parquet_of(tmp_path, [im.tolist() for im in images], pa.array([None] * n, pa.string()))
    with pytest.raises(DataError, match="200 of 200 value.s. missing"):
        build_source(cfg.data, 0)


def _parquet_of(tmp_path, images, labels):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"img": images, "y": labels}), tmp_path / "t.parquet")
    cfg = load_config("quick", ["data.dataset=parquet", f"data.path={tmp_path / 't.parquet'}", "data.n_images=0",
                                "data.principal=label", "data.image_column=img", "data.label_column=y", "data.image_size=16", "data.resize=resize"])
    return cfg


@pytest.mark.parametrize("kind", ["float01", "float255", "uint16", "grey", "rgba"])
def test_parquet_pixel_arrays_of_every_kind_keep_their_contrast(tmp_path, kind):
    """Dark vs bright classes stay dark vs bright, whatever the array's type and layout."""
    n = 40
    dark_bright = [0.1 if i % 2 else 0.9 for i in range(n)]
    make = {
        "float01": lambda v: np.full((16, 16, 3), v, np.float32).tolist(),
        "float255": lambda v: np.full((16, 16, 3), v * 255, np.float64).tolist(),
        "uint16": lambda v: np.full((8, 8, 3), round(v * 65535), np.uint16).tolist(),
        "grey": lambda v: np.full((16, 16), round(v * 255), np.int64).tolist(),
        "rgba": lambda v: np.concatenate([np.full((8, 8, 3), 255), np.full((8, 8, 1), round(v * 255))], 2).tolist(),
    }[kind]
    cfg = _parquet_of(tmp_path, [make(v) for v in dark_bright], [f"k{i % 2}" for i in range(n)])
    if kind == "uint16":  # a list of Python ints has no dtype: store it typed, as a writer of 16-bit data would
        import pyarrow as pa
        import pyarrow.parquet as pq

        col = pa.array([np.full(8 * 8 * 3, round(v * 65535), np.uint16) for v in dark_bright], pa.list_(pa.uint16()))
        pq.write_table(pa.table({"img": col, "y": [f"k{i % 2}" for i in range(n)]}), tmp_path / "t.parquet")
    src = build_source(cfg.data, 0)
    x = src.images(np.arange(n)).reshape(n, -1).mean(1)
    assert np.allclose(x, [round(v * 255) for v in dark_bright], atol=1)


@pytest.mark.parametrize("value,msg", [
    (np.full((8, 8, 3), 300, np.int64), "integer pixel values from 300 to 300, outside \\[0, 255\\]"),
    (np.full((8, 8, 3), np.nan), "pixel values include NaN"),
    (np.full((8, 8, 3), -0.5), "float pixel values from -0.5 to -0.5"),
    (np.zeros((8, 8, 2)), "pixel array of shape \\(8, 8, 2\\)"),
])
def test_parquet_pixel_values_outside_every_rule_are_refused_naming_the_row(tmp_path, value, msg):
    images = [np.zeros((8, 8, 3), np.uint8).tolist()] * 10
    images[7] = value.tolist()
    cfg = _parquet_of(tmp_path, images, [f"k{i % 2}" for i in range(10)])
    src = build_source(cfg.data, 0)
    with pytest.raises(DataError, match=f"row 7 of .*t.parquet: {msg}"):
        src.images(np.arange(10))


def test_an_extra_columns_csv_with_a_duplicate_file_row_is_refused(tmp_path):
    from dataset_files import write_imagefolder

    root = write_imagefolder(tmp_path)
    with open(root / "extra.csv", "a") as fh:
        fh.write("class_0/3.png,red\n")
    cfg = load_config("quick", ["data.dataset=imagefolder", f"data.path={root}", "data.n_images=0", *FORMATS["imagefolder"][1]])
    with pytest.raises(DataError, match="1 duplicate 'file' row\\(s\\), e.g. class_0/3.png"):
        build_source(cfg.data, 0)


def test_a_file_name_that_is_not_utf8_is_refused_naming_the_folder(tmp_path):
    import os

    from dataset_files import write_imagefolder

    root = write_imagefolder(tmp_path)
    os.rename(root / "class_1" / "2.png", os.path.join(os.fsencode(root / "class_1"), b"\xff\xfe.png"))
    cfg = load_config("quick", ["data.dataset=imagefolder", f"data.path={root}", "data.n_images=0", *FORMATS["imagefolder"][1]])
    with pytest.raises(DataError, match="is not valid UTF-8"):
        build_source(cfg.data, 0)


def test_a_store_that_cannot_be_reached_is_one_data_error(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    cfg = load_config("quick", ["data.dataset=imagefolder", "data.path=s3://nobucket/x?endpoint_override=127.0.0.1:1&scheme=http",
                                "data.n_images=0"])
    with pytest.raises(DataError, match="cannot read data.path=s3://nobucket/x.*Could not connect"):
        build_source(cfg.data, 0)


def test_a_matlab_v73_cars_annotation_is_refused_with_what_to_do(tmp_path):
    from dataset_files import write_cars

    root = write_cars(tmp_path)
    ann = next(root.rglob("cars_train_annos.mat"))
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    ann.write_bytes(header.ljust(124, b" ") + b"\x00\x02IM" + b"\x00" * 384)
    cfg = load_config("quick", ["data.dataset=cars", f"data.path={root}", "data.n_images=0", *FORMATS["cars"][1]])
    with pytest.raises(DataError, match="MATLAB v7.3 \\(HDF5\\), which is not read"):
        build_source(cfg.data, 0)


def test_a_principal_column_with_a_class_per_image_is_refused_as_an_id_column(tmp_path):
    n = 40
    cfg = _parquet_of(tmp_path, [np.zeros((16, 16, 3), np.uint8).tolist()] * n, [f"id{i}" for i in range(n)])
    with pytest.raises(DataError, match="'label' has 3[0-9] classes in 3[0-9] labelled training images .* is it an id column"):
        build_source(cfg.data, 0)


def test_hidden_files_and_folders_are_not_images_of_the_dataset(tmp_path):
    """macOS leaves ._<name>.png copies (not images) beside every file it touched; notebooks leave checkpoints."""
    from dataset_files import png_bytes, random_image, write_imagefolder

    root = write_imagefolder(tmp_path)
    (root / "class_0" / "._3.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / "class_1" / ".ipynb_checkpoints").mkdir()
    (root / "class_1" / ".ipynb_checkpoints" / "0.png").write_bytes(png_bytes(random_image()))
    cfg = load_config("quick", ["data.dataset=imagefolder", f"data.path={root}", "data.n_images=0", *FORMATS["imagefolder"][1]])
    src = build_source(cfg.data, 0)
    assert len(src) == 90 and not any(str(i).split("/")[-1].startswith(".") or "/." in str(i) for i in src.native_ids(np.arange(90)))


def test_a_parquet_image_column_of_file_paths_is_refused_with_what_to_do(tmp_path):
    cfg = _parquet_of(tmp_path, [f"img/{i}.png" for i in range(10)], [f"k{i % 2}" for i in range(10)])
    with pytest.raises(DataError, match="holds a string \\('img/0.png'\\).*read as an image folder"):
        build_source(cfg.data, 0)  # the first images are decoded before any training
