"""Bad input, as a new user makes it: every kind ends in one line on stderr, its documented exit code, no traceback
and nothing written to the run directory (docs/errors.md lists them; these tests are that table)."""

import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataset_files import png_bytes as _png
from dataset_files import random_image as _img
from dataset_files import write_imagefolder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "jobs"))
import full_pipeline  # noqa: E402
import tune  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _imagefolder_with(tmp_path, name: str, data: bytes) -> list[str]:
    (tmp_path / "folder").mkdir()
    root = write_imagefolder(tmp_path / "folder")
    (root / "class_1" / name).write_bytes(data)
    return ["data.dataset=imagefolder", f"data.path={root}", "data.principal=label", "data.n_images=0"]


def _parquet(tmp_path, labels) -> list[str]:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"img": pa.array([_png(_img()) for _ in labels], pa.binary()), "y": pa.array(labels, pa.string())}), path)
    return ["data.dataset=parquet", f"data.path={path}", "data.principal=label", "data.image_column=img",
            "data.label_column=y", "data.n_images=0"]


def _preset(tmp_path, text: str) -> list[str]:
    (tmp_path / "bad.yaml").write_text(text)
    return ["--preset", str(tmp_path / "bad.yaml")]


def _sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


# (case, argv builder, exit code, message fragment)
CASES = [
    ("batch size 0", lambda t: _sets("disentangle.batch_size=0"), 2, "disentangle.batch_size=0 is out of range"),
    ("negative lr", lambda t: _sets("disentangle.lr=-1"), 2, "disentangle.lr=-1.0 is out of range: it must be in (0, inf)"),
    ("no stage-1 epochs", lambda t: _sets("disentangle.epochs=0"), 2, "disentangle.epochs=0 is out of range"),
    ("no MTL epochs", lambda t: _sets("mtl.epochs=0"), 2, "mtl.epochs=0 is out of range"),
    ("k = 0", lambda t: _sets("disentangle.k=0"), 2, "disentangle.k=0 is out of range: it must be in [2, inf)"),
    ("malformed --set", lambda t: _sets("mtl.compare=[nddr"), 2, "override 'mtl.compare=[nddr': the value is not valid YAML"),
    ("malformed preset", lambda t: _preset(t, "data:\n  n_images: [1\n"), 2, "bad.yaml is not valid YAML"),
    ("preset not a mapping", lambda t: _preset(t, "- 1\n"), 2, "must be a mapping"),
    # a missing label on some rows is an unlabelled image (data/test_formats.py); on every row there is nothing to learn
    ("label nulls", lambda t: _sets(*_parquet(t, [None] * 40)), 3, "40 of 40 value(s) missing (first at row 0)"),
    ("empty table", lambda t: _sets(*_parquet(t, [])), 3, "has no rows"),
    ("not an image", lambda t: _sets(*_imagefolder_with(t, "7.png", b"<html>not an image</html>")), 3,
     "corrupt or unreadable image class_1/7.png"),
    ("wrong size", lambda t: _sets(*_imagefolder_with(t, "7.png", _png(_img(40, 40)))), 3,
     "image class_1/7.png is 40x40, not 32x32, and data.resize is 'none'"),
]


@pytest.mark.parametrize("case,argv,code,msg", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_its_exit_code(tmp_path, capfd, case, argv, code, msg):
    run_dir = tmp_path / "run"
    assert full_pipeline.main(argv(tmp_path) + ["--run-dir", str(run_dir)]) == code
    out, err = capfd.readouterr()
    assert msg in err and err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in out + err
    assert not run_dir.exists()  # found before anything was written (or Ray started)


def _unwritable(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        return d / "run"
    for candidate in (Path("/sys/detaux-run"), Path("/proc/detaux-run")):  # root writes anywhere else
        try:
            candidate.mkdir()
        except OSError:
            return candidate
        candidate.rmdir()
    pytest.skip("no unwritable location on this machine for a root user")


@pytest.mark.parametrize("where,msg", [
    ("file", "is a file: choose another path"),
    ("inside_file", "is inside a file"),
    ("unwritable", "cannot write to run directory"),
])
def test_a_run_directory_that_cannot_be_used(tmp_path, capfd, where, msg):
    (tmp_path / "f").write_text("x")
    run_dir = {"file": tmp_path / "f", "inside_file": tmp_path / "f" / "run"}.get(where) or _unwritable(tmp_path)
    tiny = _sets("data.n_images=800", "data.image_size=16")
    assert full_pipeline.main(tiny + ["--run-dir", str(run_dir)]) == 6
    assert tune.main(["--run-dir", str(run_dir), "--num-samples", "1"] + tiny) == 6
    out, err = capfd.readouterr()
    assert err.count(msg) == 2 and err.count("\n") == 2 and "Traceback" not in out + err
    assert (tmp_path / "f").read_text() == "x"


def test_find_data_error_sees_through_ray_wrapping():
    from detaux_ray.errors import DataError, find_data_error

    class Wrapped(RuntimeError, DataError):  # the shape of Ray's RayTaskError(DataError): text = remote traceback
        def __init__(self, cause):
            super().__init__("Traceback (most recent call last): ...")
            self.cause = cause

    try:
        try:
            raise Wrapped(DataError("corrupt or unreadable image a/1.png: truncated"))
        except Wrapped as inner:
            raise RuntimeError("worker group failed") from inner
    except RuntimeError as exc:
        assert find_data_error(exc) == "corrupt or unreadable image a/1.png: truncated"
    assert find_data_error(ValueError("x")) is None


def test_the_bad_input_table_names_tests_that_exist():
    """docs/errors.md's last column names the test checking each row: each file and function must exist."""
    import re

    doc = (ROOT / "docs" / "errors.md").read_text()
    refs = re.findall(r"`((?:\w+/)?test_\w+\.py)(?:::(\w+))?`|`::(\w+)`", doc)
    assert len(refs) > 15
    current = None
    for file, func, func_only in refs:
        if file:
            current = ROOT / "tests" / file
            assert current.is_file(), file
        if func or func_only:
            assert f"def {func or func_only}(" in current.read_text(), f"{current.name}::{func or func_only}"
