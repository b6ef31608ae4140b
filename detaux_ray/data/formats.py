"""Readers for real datasets in their own distribution formats (no Ray, nothing downloaded).

A loader reads only what labels and splits need (annotations, file lists, label arrays) and returns a `Loaded`
whose `reader` is a small picklable object: Ray Data tasks call `reader.read(rows)` to get uint8 images
(B, S, S, 3) for a batch of rows, so no process ever holds the whole dataset. Paths are local directories or
storage URIs (s3://, gs://) opened through pyarrow's filesystems.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import posixpath
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from ..errors import DataError

log = logging.getLogger(__name__)

READ_THREADS = 16  # image files in flight per reader task on an object store (FileReader.read, .scan)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")


@dataclass
class Loaded:
    """What a loader knows up front: labels, split, known factors; images come later through `reader.read(rows)`."""

    principal: np.ndarray  # (N,) int64 in [0, C); MISSING (-1) where a table's label is missing (an unlabelled image)
    class_names: list[str]
    is_test: np.ndarray  # (N,) bool
    reader: Any  # .read(rows) -> uint8 (B, S, S, 3); optional .native_ids(rows), .scan(rows), .renders
    factors: dict[str, np.ndarray] = field(default_factory=dict)  # known ground-truth factors (evaluation only)
    # The held-out hues define the test split (shapes, shapes3d): an empty one is an error, never replaced by a
    # random split as for a folder or table without a split of its own.
    fixed_split: bool = False
    # Of the files the labels and images come from: their paths, sizes and modification times (`fingerprint`);
    # for a generated dataset, its generator's version. A stage computed on other data is not reused.
    fingerprint: str = ""


def salt_and_pepper(img: np.ndarray, index: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """Set a `noise` fraction of each image's pixels to black or white, seeded by (seed, image index) so an image
    looks the same whichever batch it is read in. img (B, S, S, 3) uint8, modified in place and returned."""
    n_px = img.shape[1] * img.shape[2]
    n_hit = int(round(noise * n_px))
    flat = img.reshape(len(index), n_px, 3)
    for row, idx in enumerate(index):
        rng = np.random.default_rng([seed, int(idx)])
        hit = rng.choice(n_px, size=n_hit, replace=False)
        flat[row, hit] = np.where(rng.random(n_hit) < 0.5, 0, 255)[:, None].astype(np.uint8)
    return img


def heldout_hue_split(factors: dict[str, np.ndarray], heldout_hues: list[int]) -> np.ndarray:
    """The paper's test split of (3D) shapes: floor hue *and* wall hue both among the held-out hues."""
    held = np.asarray(heldout_hues, dtype=np.int64)
    return np.isin(factors["floor_hue"], held) & np.isin(factors["wall_hue"], held)


# Files ---------------------------------------------------------------------------------------------------
def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or an s3:// / gs:// URI."""
    try:
        if "://" in path:
            return pafs.FileSystem.from_uri(path)
        return pafs.LocalFileSystem(), str(path)
    except Exception as exc:  # pyarrow raises several types for bad URIs / missing credentials
        raise DataError(f"cannot open data.path={path}: {exc}") from None


def check_location(path: str) -> None:
    """A storage URI that names nothing fails here with what is missing (the bucket, or the prefix in it), before a
    loader reports a missing file of its layout. Errors of the store itself (a refused key, no network) propagate
    as OSError, which `build_source` turns into one line."""
    fs, inner = filesystem(path)
    if "://" not in path or fs.get_file_info(inner).type != pafs.FileType.NotFound:
        return
    bucket = inner.split("/", 1)[0]
    if bucket != inner and fs.get_file_info(bucket).type == pafs.FileType.NotFound:
        raise DataError(f"data.path={path}: bucket '{bucket}' does not exist (or these credentials cannot see it)")
    raise DataError(f"data.path={path}: nothing under {path}")


def fingerprint(infos: list[pafs.FileInfo]) -> str:
    """Digest of files' paths, sizes and modification times: cheap (one listing, no file opened), and it changes
    when a file is added, removed or replaced; object stores give the same three things in their listing."""
    h = hashlib.sha256()
    for i in sorted(infos, key=lambda i: i.path):
        h.update(f"{i.path}\0{i.size}\0{i.mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


def _files_fingerprint(fs: pafs.FileSystem, paths: list[str]) -> str:
    return fingerprint(fs.get_file_info(paths))


def _join(root: str, *parts: str) -> str:
    return posixpath.join(root, *parts)


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _require(fs: pafs.FileSystem, root: str, names: list[str], dataset: str, layout: str) -> None:
    missing = [n for n in names if not _exists(fs, _join(root, n))]
    if missing:
        raise DataError(f"{dataset}: missing {', '.join(missing)} under {root}; expected layout: {layout}")


def _read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_file(path) as fh:
        return fh.read()


def decode_image(data: bytes, size: int, resize: str, where: str) -> np.ndarray:
    """Encoded image -> uint8 (size, size, 3). resize: 'none' (must already be size x size) | 'resize' | 'center_crop'
    (crop the central square, then resize). Pixel formats follow `pil_to_rgb8`'s rules."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Image.DecompressionBombError as exc:
        raise DataError(f"image {where} is too large to decode safely ({exc}); shrink it") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"corrupt or unreadable image {where}: {exc}") from None
    return fit_image(pil_to_rgb8(img, where), size, resize, where)


def pil_to_rgb8(img, where: str) -> np.ndarray:
    """A decoded image as uint8 RGB, by stated rules (docs/errors.md): 16-bit greyscale is scaled by 255/65535
    (not clipped at 255); 32-bit integer greyscale likewise when its values fit 16 bits, refused otherwise;
    float greyscale is read as [0, 1] or [0, 255] by its range; an alpha channel (RGBA, LA, a palette with
    transparency) is composited over black; every other mode is converted by Pillow."""
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        return array_to_rgb8(np.asarray(img), where, sixteen_bit=mode.startswith("I;16"))
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return array_to_rgb8(np.asarray(img.convert("RGBA")), where)
    return np.asarray(img.convert("RGB"))


def array_to_rgb8(arr: np.ndarray, where: str, sixteen_bit: bool = False) -> np.ndarray:
    """Pixel values as uint8 (H, W, 3), by stated rules: (H, W) and (H, W, 1) are greyscale; (H, W, 4) has alpha,
    composited over black; uint16 (or `sixteen_bit`) is scaled by 255/65535; other integers must lie in
    [0, 255]; floats in [0, 1] are scaled by 255, floats in [0, 255] kept; booleans are 0 / 255. Anything else
    (NaN, negative values, values above the range, other shapes) is a DataError naming `where`."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise DataError(f"{where}: pixel array of shape {arr.shape}; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    if arr.dtype == bool:
        x = arr.astype(np.float32) * 255.0
    elif arr.dtype.kind in "iu":
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if sixteen_bit or arr.dtype == np.uint16:
            if lo < 0 or hi > 65535:
                raise DataError(f"{where}: 16-bit pixel values from {lo} to {hi}, outside [0, 65535]")
            x = arr.astype(np.float32) * (255.0 / 65535.0)
        elif lo < 0 or hi > 255:
            raise DataError(f"{where}: integer pixel values from {lo} to {hi}, outside [0, 255]; store uint8 "
                            f"(or uint16 for 16-bit images)")
        else:
            x = arr.astype(np.float32)
    elif arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise DataError(f"{where}: pixel values include NaN or infinity")
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo < 0 or hi > 255:
            raise DataError(f"{where}: float pixel values from {lo:g} to {hi:g}; expected [0, 1] or [0, 255]")
        x = arr.astype(np.float32) * (255.0 if hi <= 1.0 else 1.0)
    else:
        raise DataError(f"{where}: pixel values of type {arr.dtype}; expected integers, floats or booleans")
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=2)
    elif x.shape[2] == 4:  # composited over black: a transparent pixel is black, like the generated datasets' ground
        x = x[..., :3] * (x[..., 3:] / 255.0)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def fit_image(arr: np.ndarray, size: int, resize: str, where: str) -> np.ndarray:
    """uint8 (H, W, 3) -> (size, size, 3) by data.resize (`pil_to_rgb8` / `array_to_rgb8` make the three channels)."""
    from PIL import Image

    h, w = arr.shape[:2]
    if (h, w) == (size, size):
        return np.ascontiguousarray(arr, dtype=np.uint8)
    if resize == "none":
        raise DataError(f"image {where} is {w}x{h}, not {size}x{size}, and data.resize is 'none': set data.resize to "
                        f"'resize' or 'center_crop', or data.image_size to the images' size")
    img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8))
    if resize == "center_crop":
        s = min(h, w)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    return np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def _fit_batch(x: np.ndarray, size: int, resize: str, where: str) -> np.ndarray:
    if x.shape[1:3] == (size, size):
        return x
    return np.stack([fit_image(im, size, resize, where) for im in x])


MISSING = -1  # the class id of a row whose label is missing (data.dataset=parquet: an unlabelled image)


def _classes(values: list[Any] | np.ndarray, what: str = "labels", missing_ok: bool = False) -> tuple[np.ndarray, list[str]]:
    """Class ids 0..C-1 (in sorted order of the values) and the class names. Missing values (None, NaN, empty
    strings) are a DataError that says how many and where, not a TypeError from np.unique; with `missing_ok` they
    get the id MISSING instead (at least one value must be present)."""
    values = list(values)
    if not values:
        raise DataError(f"{what}: no rows")
    missing = [i for i, v in enumerate(values) if v is None or (isinstance(v, float) and v != v) or v == ""]
    if missing and (not missing_ok or len(missing) == len(values)):
        raise DataError(f"{what}: {len(missing)} of {len(values)} value(s) missing (first at row {missing[0]}); "
                        f"drop or fill those rows")
    known = np.ones(len(values), bool)
    known[missing] = False
    present = [v for v, k in zip(values, known) if k]
    names, inverse = np.unique(np.asarray([str(v) for v in present] if len({type(v) for v in present}) > 1 else present),
                               return_inverse=True)
    ids = np.full(len(values), MISSING, np.int64)
    ids[known] = inverse
    return ids, [str(n) for n in names]


# CIFAR-10 ------------------------------------------------------------------------------------------------
class _SafeUnpickler(pickle.Unpickler):
    """CIFAR's batches are pickles: allow only the NumPy array reconstruction they need, never arbitrary code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refusing to unpickle {module}.{name} from a CIFAR batch file (only NumPy arrays are allowed)")


def _cifar_batch(fs: pafs.FileSystem, path: str) -> dict:
    try:
        d = _SafeUnpickler(io.BytesIO(_read_bytes(fs, path)), encoding="latin1").load()
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cifar10: {path} is not a CIFAR-10 python batch: {exc}") from None
    if not isinstance(d, dict) or "data" not in d or "labels" not in d:
        raise DataError(f"cifar10: {path} has no 'data' / 'labels' entries")
    data, labels = np.asarray(d["data"], dtype=np.uint8), np.asarray(d["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"cifar10: {path} holds data of shape {data.shape}, expected (N, 3072)")
    if len(labels) != len(data):
        raise DataError(f"cifar10: {path} has {len(labels)} labels for {len(data)} images")
    return {"data": data, "labels": labels}


@dataclass
class ArrayFileReader:
    """Rows of a dataset stored as a few files of image arrays read whole (CIFAR-10's pickled batches, SVHN's .mat
    files): row r is row r - offsets[i] of files[i]."""

    kind: str  # "cifar10" | "svhn"
    path: str
    files: list[str]  # the file of each block of rows, in row order
    offsets: list[int]  # first row of each file
    size: int
    resize: str

    def _file_of(self, rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.offsets, rows, side="right") - 1

    def native_ids(self, rows: np.ndarray) -> np.ndarray:
        """The index of each row within its file (the dataset's own identifier)."""
        rows = np.asarray(rows, dtype=np.int64)
        return rows - np.asarray(self.offsets)[self._file_of(rows)]

    def read(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.size, self.size, 3), np.uint8)
        f = self._file_of(rows)
        for i in np.unique(f):
            sel = f == i
            local = rows[sel] - self.offsets[i]
            if self.kind == "cifar10":  # (N, 3072) channel-major rows
                img = _cached_cifar(self.path, self.files[i])["data"][local].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            else:  # (32, 32, 3, N); a MATLAB v5 file is read whole (it has no row access)
                img = np.moveaxis(_cached_svhn(self.path, self.files[i])["X"][..., local], 3, 0)
            out[sel] = _fit_batch(img, self.size, self.resize, f"in {self.files[i]}")
        return out


def _concat_files(labels: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """The labels of several files as one row order, and each file's first row."""
    offsets = [int(o) for o in np.cumsum([0] + [len(y) for y in labels])[:-1]]
    return np.concatenate(labels), offsets


@lru_cache(maxsize=6)  # random pairs touch every batch file: keep all six (30 MB each) per reading process
def _cached_cifar(path: str, name: str) -> dict:
    fs, root = filesystem(path)
    return _cifar_batch(fs, _join(root, name))


def load_cifar10(path: str, size: int, resize: str) -> Loaded:
    fs, root = filesystem(path)
    if _exists(fs, _join(root, "cifar-10-batches-py")):
        root, path = _join(root, "cifar-10-batches-py"), posixpath.join(path, "cifar-10-batches-py")
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    _require(fs, root, files, "cifar10", "data_batch_1..5 and test_batch (CIFAR-10's python version)")
    y, offsets = _concat_files([_cifar_batch(fs, _join(root, f))["labels"] for f in files])  # labels only are kept
    names = [str(i) for i in range(int(y.max()) + 1)]
    if _exists(fs, _join(root, "batches.meta")):
        try:
            meta = _SafeUnpickler(io.BytesIO(_read_bytes(fs, _join(root, "batches.meta"))), encoding="latin1").load()
            names = [str(n) for n in meta["label_names"]]
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as exc:  # names are cosmetic
            log.warning("cifar10: batches.meta unreadable (%s); classes are named by their index", exc)
    is_test = np.zeros(len(y), bool)
    is_test[offsets[-1]:] = True
    return Loaded(y, names, is_test, ArrayFileReader("cifar10", path, files, offsets, size, resize),
                  fingerprint=_files_fingerprint(fs, [_join(root, f) for f in files]))


# SVHN ----------------------------------------------------------------------------------------------------
def _svhn_mat(fs: pafs.FileSystem, path: str) -> dict:
    from scipy.io import loadmat

    try:
        m = loadmat(io.BytesIO(_read_bytes(fs, path)))
    except Exception as exc:
        raise DataError(f"svhn: {path} is not a readable .mat file: {exc}") from None
    if "X" not in m or "y" not in m:
        raise DataError(f"svhn: {path} has no X / y arrays")
    x, y = m["X"], m["y"].reshape(-1).astype(np.int64)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"svhn: {path} holds X of shape {x.shape}, expected (32, 32, 3, N)")
    if x.shape[3] != len(y):
        raise DataError(f"svhn: {path} has {len(y)} labels for {x.shape[3]} images")
    return {"X": x, "y": np.where(y == 10, 0, y)}  # label 10 is the digit 0


@lru_cache(maxsize=2)  # train + test; a MATLAB v5 file can only be read whole (train: 225 MB)
def _cached_svhn(path: str, name: str) -> dict:
    fs, root = filesystem(path)
    return _svhn_mat(fs, _join(root, name))


def load_svhn(path: str, size: int, resize: str) -> Loaded:
    fs, root = filesystem(path)
    files = ["train_32x32.mat", "test_32x32.mat"]
    _require(fs, root, files, "svhn", "train_32x32.mat and test_32x32.mat (SVHN format 2, cropped digits)")
    y, offsets = _concat_files([_svhn_mat(fs, _join(root, f))["y"] for f in files])
    is_test = np.zeros(len(y), bool)
    is_test[offsets[1]:] = True
    return Loaded(y, [str(i) for i in range(10)], is_test, ArrayFileReader("svhn", path, files, offsets, size, resize),
                  fingerprint=_files_fingerprint(fs, [_join(root, f) for f in files]))


# 3D Shapes (DeepMind's h5) --------------------------------------------------------------------------------
SHAPES3D_FACTORS = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")


@dataclass
class Shapes3DReader:
    path: str
    size: int
    resize: str
    noise: float
    seed: int

    def read(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        uniq, back = np.unique(rows, return_inverse=True)  # h5py wants strictly increasing indices
        x = _open_h5(self.path)["images"][uniq][back]  # reads only these rows: memory ~ the batch
        x = _fit_batch(x, self.size, self.resize, f"in {self.path}")
        if self.noise > 0:
            x = salt_and_pepper(x, rows, self.noise, self.seed)
        return x


@lru_cache(maxsize=1)
def _open_h5(path: str):
    import h5py

    fs, p = filesystem(path)
    if isinstance(fs, pafs.LocalFileSystem):
        return h5py.File(p, "r")
    return h5py.File(fs.open_input_file(p), "r")  # remote: h5py reads through a file-like object


def load_shapes3d(path: str, size: int, resize: str, noise: float, seed: int, heldout_hues: list[int]) -> Loaded:
    fs, p = filesystem(path)
    if fs.get_file_info(p).type == pafs.FileType.Directory:
        p, path = _join(p, "3dshapes.h5"), posixpath.join(path, "3dshapes.h5")
    if not _exists(fs, p):
        raise DataError(f"shapes3d: {p} not found; expected DeepMind's 3dshapes.h5")
    try:
        h5 = _open_h5(path)
        images, labels = h5["images"], h5["labels"]
        lab = np.asarray(labels[:])  # (N, 6) floats: 23 MB for all 480,000 rows
    except KeyError as exc:
        raise DataError(f"shapes3d: {path} lacks the dataset {exc}; expected 'images' and 'labels'") from None
    except OSError as exc:
        raise DataError(f"shapes3d: {path} is not a readable HDF5 file: {exc}") from None
    if images.ndim != 4 or images.shape[1:] != (64, 64, 3) or lab.ndim != 2 or lab.shape[1] != 6:
        raise DataError(f"shapes3d: images {images.shape} / labels {lab.shape}; expected (N, 64, 64, 3) and (N, 6)")
    if images.shape[0] != lab.shape[0]:
        raise DataError(f"shapes3d: {lab.shape[0]} label rows for {images.shape[0]} images")
    factors = {name: np.unique(lab[:, i], return_inverse=True)[1].astype(np.int64) for i, name in enumerate(SHAPES3D_FACTORS)}
    return Loaded(np.zeros(len(lab), np.int64), [], heldout_hue_split(factors, heldout_hues),
                  Shapes3DReader(path, size, resize, noise, seed), factors, fixed_split=True,
                  fingerprint=_files_fingerprint(fs, [p]))


# Folders of encoded images -------------------------------------------------------------------------------
@dataclass
class FileReader:
    path: str
    files: list[str]  # relative to path, one per row
    size: int
    resize: str

    def native_ids(self, rows: np.ndarray) -> np.ndarray:
        """The file path of each row relative to the dataset root."""
        return np.asarray([self.files[r] for r in np.asarray(rows, dtype=np.int64)], dtype=object)

    def scan(self, rows: np.ndarray) -> None:
        """Check every image's header up front (format, and size when data.resize is 'none'): a DataError naming
        the first bad file, before any training starts. Reads only the first bytes of each file."""
        from concurrent.futures import ThreadPoolExecutor

        from PIL import Image, UnidentifiedImageError

        fs, root = filesystem(self.path)

        def check(r: int) -> None:
            name = self.files[r]
            try:
                with fs.open_input_file(_join(root, name)) as fh, Image.open(fh) as img:
                    w, h = img.size
            except Image.DecompressionBombError as exc:
                raise DataError(f"image {name} is too large to decode safely ({exc}); shrink it") from None
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                raise DataError(f"corrupt or unreadable image {name}: {exc}") from None
            if self.resize == "none" and (w, h) != (self.size, self.size):
                fit_image(np.zeros((h, w, 3), np.uint8), self.size, self.resize, name)  # raises the size message

        with ThreadPoolExecutor(READ_THREADS) as pool:  # file opens dominate: overlap them (local disks and object stores)
            list(pool.map(check, (int(r) for r in np.asarray(rows, dtype=np.int64))))

    def read(self, rows: np.ndarray) -> np.ndarray:
        from concurrent.futures import ThreadPoolExecutor

        fs, root = filesystem(self.path)
        out = np.empty((len(rows), self.size, self.size, 3), np.uint8)

        def one(j: int, r: int) -> None:
            name = self.files[r]
            try:
                data = _read_bytes(fs, _join(root, name))
            except OSError as exc:  # removed since the scan, a store that stopped answering
                raise DataError(f"cannot read image {name} under {self.path}: {exc}") from None
            out[j] = decode_image(data, self.size, self.resize, name)

        with ThreadPoolExecutor(min(read_threads(fs), max(1, len(rows)))) as pool:  # the first error is raised
            list(pool.map(one, range(len(rows)), (int(r) for r in np.asarray(rows, dtype=np.int64))))
        return out


def read_threads(fs: pafs.FileSystem) -> int:
    """Files one reader task reads at once. An object store answers each small file after a round trip, which
    READ_THREADS requests in flight overlap; a local disk answers at once and threads only add contention
    (bench/store_reads.py measures both)."""
    return 1 if isinstance(fs, pafs.LocalFileSystem) else READ_THREADS


def _hidden(rel: str) -> bool:
    """A name under a hidden folder or itself hidden (.DS_Store, macOS's ._x.png copies, .ipynb_checkpoints/): skipped."""
    return any(part.startswith(".") for part in rel.split("/"))


def _list_images(fs: pafs.FileSystem, root: str) -> tuple[list[str], list[pafs.FileInfo]]:
    """The image files under `root` (relative paths, sorted) and their listing entries (for the fingerprint);
    hidden files and folders (names starting with '.') are not part of a dataset."""
    try:  # pyarrow decodes each path as UTF-8 when it is read
        infos = [i for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
                 if i.type == pafs.FileType.File and i.path.lower().endswith(IMAGE_EXTENSIONS)
                 and not _hidden(posixpath.relpath(i.path, root))]
    except UnicodeDecodeError as exc:
        bad = exc.object[max(0, exc.start - 40):exc.end + 10].decode("utf-8", "backslashreplace")
        raise DataError(f"a file name under {root} is not valid UTF-8 (...{bad}...): rename it") from None
    return sorted(posixpath.relpath(i.path, root) for i in infos), infos


def load_imagefolder(path: str, size: int, resize: str, extra_csv: str = "", test_dir: str = "test") -> Loaded:
    """root/<class>/<image>, or root/train/<class>/<image> + root/test/<class>/<image> for a given split."""
    fs, root = filesystem(path)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise DataError(f"imagefolder: {root} is not a directory")
    files, infos = _list_images(fs, root)
    split_layout = all(f.split("/")[0] in ("train", test_dir) for f in files) and any(f.startswith("train/") for f in files)
    depth = 3 if split_layout else 2
    bad = [f for f in files if f.count("/") != depth - 1]
    if not files or bad:
        raise DataError(f"imagefolder: expected root/<class>/<image>{' under train/ and test/' if split_layout else ''}; "
                        + (f"found {bad[0]}" if bad else f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}"))
    classes = [f.split("/")[depth - 2] for f in files]
    y, names = _classes(classes, "imagefolder: class folders")
    is_test = np.array([f.startswith(f"{test_dir}/") for f in files]) if split_layout else np.zeros(len(files), bool)
    factors = _extra_columns(fs, root, extra_csv, files) if extra_csv else {}
    if extra_csv:
        infos = infos + fs.get_file_info([_extra_csv_path(root, extra_csv)])
    return Loaded(y, names, is_test, FileReader(path, files, size, resize), factors, fingerprint=fingerprint(infos))


def _extra_csv_path(root: str, csv_name: str) -> str:
    return csv_name if csv_name.startswith("/") else _join(root, csv_name)


def _extra_columns(fs: pafs.FileSystem, root: str, csv_name: str, files: list[str]) -> dict[str, np.ndarray]:
    """Per-image columns from a CSV with a `file` column (path relative to root): ground truth for diagnostics."""
    import pyarrow.csv as pacsv

    p = _extra_csv_path(root, csv_name)
    if not _exists(fs, p):
        raise DataError(f"imagefolder: the extra-columns CSV {p} does not exist")
    try:
        t = pacsv.read_csv(io.BytesIO(_read_bytes(fs, p))).to_pydict()
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"imagefolder: {p} is not a readable CSV: {str(exc).splitlines()[0]}") from None
    if "file" not in t:
        raise DataError(f"imagefolder: {p} needs a 'file' column (image path relative to the root)")
    index = {f: i for i, f in enumerate(t["file"])}
    if len(index) < len(t["file"]):
        seen: set = set()
        dup = next(f for f in t["file"] if f in seen or seen.add(f))
        raise DataError(f"imagefolder: {p} has {len(t['file']) - len(index)} duplicate 'file' row(s), e.g. {dup}: "
                        f"keep one row per image")
    missing = [f for f in files if f not in index]
    if missing:
        raise DataError(f"imagefolder: {p} has no row for {len(missing)} image(s), e.g. {missing[0]}")
    order = [index[f] for f in files]
    return {k: _classes([v[i] for i in order], f"imagefolder: column '{k}' of {p}")[0] for k, v in t.items() if k != "file"}


FACES_NAME = re.compile(r"^(?P<id>\d+)_(?P<age>[a-z])_(?P<gender>[a-z])_(?P<expression>[a-z]+)_(?P<set>[a-z])\.jpe?g$", re.I)


def load_faces(path: str, size: int, resize: str) -> Loaded:
    """FACES (Ebner et al. 2010): <root>/<split>/<id>_<age>_<gender>_<expression>_<set>.jpg, split = train | test;
    principal = expression; age group, gender and picture set are kept as known factors."""
    fs, root = filesystem(path)
    files, infos = _list_images(fs, root)
    if not files:
        raise DataError(f"faces: no images under {root}; expected <root>/<train|test>/<id>_<age>_<gender>_<expression>_<set>.jpg")
    parsed = []
    for f in files:
        parts = f.split("/")
        m = FACES_NAME.match(parts[-1])
        if len(parts) != 2 or parts[0] not in ("train", "test") or not m:
            raise DataError(f"faces: {f} does not match <train|test>/<id>_<age>_<gender>_<expression>_<set>.jpg")
        parsed.append(m.groupdict() | {"split": parts[0]})
    y, names = _classes([p["expression"] for p in parsed], "faces: expression")
    factors = {k: _classes([p[k] for p in parsed], f"faces: {k}")[0] for k in ("age", "gender", "set")}
    is_test = np.array([p["split"] == "test" for p in parsed])
    return Loaded(y, names, is_test, FileReader(path, files, size, resize), factors, fingerprint=fingerprint(infos))


def load_cars(path: str, size: int, resize: str) -> Loaded:
    """Stanford Cars in torchvision's layout: [stanford_cars/]devkit/{cars_meta,cars_train_annos}.mat, cars_train/,
    cars_test/, cars_test_annos_withlabels.mat; class ids in the annotations start at 1."""
    from scipy.io import loadmat

    fs, root = filesystem(path)
    if _exists(fs, _join(root, "stanford_cars")):
        root, path = _join(root, "stanford_cars"), posixpath.join(path, "stanford_cars")
    need = ["devkit/cars_meta.mat", "devkit/cars_train_annos.mat", "cars_test_annos_withlabels.mat", "cars_train", "cars_test"]
    _require(fs, root, need, "cars", "torchvision's StanfordCars: devkit/{cars_meta,cars_train_annos}.mat, "
             "cars_train/, cars_test/, cars_test_annos_withlabels.mat")
    try:
        meta = loadmat(io.BytesIO(_read_bytes(fs, _join(root, "devkit/cars_meta.mat"))), squeeze_me=True)
        names = [str(n) for n in np.atleast_1d(meta["class_names"])]
        files, labels, test = [], [], []
        for ann, folder, is_test in (("devkit/cars_train_annos.mat", "cars_train", False),
                                     ("cars_test_annos_withlabels.mat", "cars_test", True)):
            a = loadmat(io.BytesIO(_read_bytes(fs, _join(root, ann))), squeeze_me=True)["annotations"]
            for rec in np.atleast_1d(a):
                files.append(f"{folder}/{rec['fname']}")
                labels.append(int(rec["class"]) - 1)
                test.append(is_test)
    except NotImplementedError as exc:  # scipy: "Please use HDF reader for matlab v7.3 files"
        raise DataError(f"cars: an annotation file is MATLAB v7.3 (HDF5), which is not read ({exc}); save it as "
                        f"v7 (MATLAB: save(name, '-v7')) or use the original devkit files") from None
    except (KeyError, ValueError, TypeError) as exc:
        raise DataError(f"cars: the devkit annotations are not in StanfordCars' format: {exc}") from None
    y = np.asarray(labels, np.int64)
    if y.min() < 0 or y.max() >= len(names):
        raise DataError(f"cars: class ids must be in 1..{len(names)} (cars_meta.mat), found {y.min() + 1}..{y.max() + 1}")
    infos = fs.get_file_info([_join(root, n) for n in need if n.endswith(".mat")])
    for folder in ("cars_train", "cars_test"):
        infos += _list_images(fs, _join(root, folder))[1]
    return Loaded(y, names, np.asarray(test), FileReader(path, files, size, resize), fingerprint=fingerprint(infos))


# Parquet -------------------------------------------------------------------------------------------------
@dataclass
class ParquetReader:
    path: str
    column: str
    group_offsets: list[int]  # first row of each row group
    size: int
    resize: str

    def read(self, rows: np.ndarray) -> np.ndarray:
        import pyarrow.parquet as pq

        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.size, self.size, 3), np.uint8)
        fs, p = filesystem(self.path)
        pf = pq.ParquetFile(fs.open_input_file(p))
        g = np.searchsorted(self.group_offsets, rows, side="right") - 1
        for gi in np.unique(g):  # memory ~ one row group's image column
            sel = g == gi
            col = pf.read_row_group(int(gi), columns=[self.column]).column(0)
            dtype = _leaf_dtype(col.type)  # as_py() drops an array's type (uint16 would read as plain ints)
            for j, r in zip(np.flatnonzero(sel), rows[sel] - self.group_offsets[gi]):
                v = col[int(r)].as_py()
                if dtype is not None and v is not None:
                    v = _typed(v, dtype, f"row {rows[j]} of {self.path}")
                out[j] = _parquet_image(v, self.size, self.resize, f"row {rows[j]} of {self.path}")
        return out


def _leaf_dtype(t) -> np.dtype | None:
    """The NumPy type of a (nested) list column's numbers; None for bytes / structs."""
    import pyarrow as pa

    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        return None
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t = t.value_type
    try:
        return np.dtype(t.to_pandas_dtype())
    except (NotImplementedError, TypeError):
        return None


def _typed(v: Any, dtype: np.dtype, where: str) -> np.ndarray:
    try:
        return np.asarray(v, dtype=dtype)
    except (ValueError, TypeError) as exc:  # ragged or null entries
        raise DataError(f"{where}: not a rectangular pixel array of numbers ({exc})") from None


def _parquet_image(v: Any, size: int, resize: str, where: str) -> np.ndarray:
    """One value of the image column: encoded bytes (or Hugging Face's {bytes, path} struct), a nested array
    (H, W[, C]), or a flat array of S*S*3 or S*S values; pixel values by `array_to_rgb8`'s rules."""
    if isinstance(v, dict) and "bytes" in v:  # Hugging Face's image struct {bytes, path}
        v = v["bytes"]
    if v is None:
        raise DataError(f"{where}: the image is missing (null)")
    if isinstance(v, (bytes, bytearray)):
        return decode_image(bytes(v), size, resize, where)
    if isinstance(v, str):
        raise DataError(f"{where}: the image column holds a string ({v[:40]!r}), not image bytes or a pixel array; "
                        f"a table of file paths is read as an image folder, not a Parquet image column")
    try:
        arr = np.asarray(v)
    except ValueError as exc:  # ragged nested lists
        raise DataError(f"{where}: not a rectangular pixel array ({exc})") from None
    if arr.dtype == object:
        raise DataError(f"{where}: not a rectangular pixel array of numbers")
    if arr.ndim == 1:
        for channels in (3, 1):
            side = int(round((arr.size / channels) ** 0.5))
            if side * side * channels == arr.size:
                arr = arr.reshape(side, side, channels)
                break
        else:
            raise DataError(f"{where}: a flat image array of {arr.size} values is neither S*S*3 nor S*S")
    return fit_image(array_to_rgb8(arr, where), size, resize, where)


def load_parquet(path: str, size: int, resize: str, image_column: str, label_column: str, split_column: str) -> Loaded:
    import pyarrow.parquet as pq

    fs, p = filesystem(path)
    if not _exists(fs, p):
        raise DataError(f"parquet: {p} not found")
    try:
        pf = pq.ParquetFile(fs.open_input_file(p))
    except Exception as exc:
        raise DataError(f"parquet: {p} is not a readable Parquet file: {exc}") from None
    names = pf.schema_arrow.names
    for c in (image_column, label_column) + ((split_column,) if split_column else ()):
        if c not in names:
            raise DataError(f"parquet: column '{c}' not in {p} (columns: {', '.join(names)}); set data.image_column / "
                            f"data.label_column / data.split_column")
    cols = [label_column] + ([split_column] if split_column else [])
    t = pf.read(columns=cols)  # labels only: the image column stays on disk
    if t.num_rows == 0:
        raise DataError(f"parquet: {p} has no rows")
    # A missing label marks an unlabelled training image (docs/method.md, "Few labels"); a test row needs its label.
    y, class_names = _classes(t.column(label_column).to_pylist(), f"parquet: label column '{label_column}' of {p}",
                              missing_ok=True)
    is_test = (np.asarray([str(v) == "test" for v in t.column(split_column).to_pylist()]) if split_column
               else np.zeros(len(y), bool))
    if (bad := np.flatnonzero(is_test & (y == MISSING))).size:
        raise DataError(f"parquet: {bad.size} test row(s) of {p} have no '{label_column}' (first at row {bad[0]}): "
                        f"a test image needs its label; give it one or move it to the training split")
    offsets = list(np.cumsum([0] + [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)])[:-1])
    return Loaded(y, class_names, is_test, ParquetReader(path, image_column, [int(o) for o in offsets], size, resize),
                  fingerprint=_files_fingerprint(fs, [p]))
