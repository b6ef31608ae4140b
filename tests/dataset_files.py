"""Tiny datasets written in each format's own on-disk layout (CIFAR-10 batches, SVHN .mat, 3dshapes.h5, FACES and
Stanford Cars folders, an image folder with an extra-columns CSV, a Parquet table): what the tests and
bench/formats_pipeline.py feed the readers, and a quick way to try a reader. Random pixels, no download.
`FORMATS` maps a dataset name to (writer(root) -> the path to pass as data.path, the config overrides it needs)."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

RNG = np.random.default_rng(0)


def png_bytes(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def random_image(h: int = 32, w: int = 32) -> np.ndarray:
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
            (root / split / f"{pid:03d}_{'yom'[pid % 3]}_{'mf'[pid % 2]}_{expr}_a.jpg").write_bytes(png_bytes(random_image(48, 40), "JPEG"))
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
            (sc / folder / name).write_bytes(png_bytes(random_image(30 + i % 7, 50), "JPEG"))  # mixed sizes, like the real set
            recs.append((0, 0, 10, 10, i % n_classes + 1, name))
        savemat(sc / ann, {"annotations": np.array(recs, dtype=dt)})
    return root


def write_imagefolder(root, n_classes=3, per_class=30):
    rows = ["file,colour"]
    for c in range(n_classes):
        (root / f"class_{c}").mkdir()
        for i in range(per_class):
            (root / f"class_{c}" / f"{i}.png").write_bytes(png_bytes(random_image()))
            rows.append(f"class_{c}/{i}.png,{'red' if i % 2 else 'blue'}")
    (root / "extra.csv").write_text("\n".join(rows) + "\n")
    return root


def write_parquet(root, n=120, unlabelled_every=0):
    """`unlabelled_every` > 0: every such training row has no label (null), an unlabelled image."""
    images = [png_bytes(random_image()) for _ in range(n)]
    part = ["test" if i % 5 == 0 else "train" for i in range(n)]
    y = [None if unlabelled_every and part[i] == "train" and i % unlabelled_every == 1 else f"k{i % 3}" for i in range(n)]
    t = pa.table({"img": images, "y": pa.array(y, pa.string()), "part": part})
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
