"""Atomic artifact writing and stage manifests (no Ray).

Everything a stage leaves behind is written to a temporary path and renamed into place, so an interrupted run
never leaves a half-written file that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import RunDirError

# Every temporary name carries its writer's host and pid, so leftovers of a killed run can be told from the
# files of a run still in progress (a shared stage store): .<name>.tmp-<host>-<pid>-<random>
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
_TMP = re.compile(r"^\..+\.tmp-(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-")


def _tmp_prefix(name: str) -> str:
    return f".{name}.tmp-{_HOST}-{os.getpid()}-"


def write_json(path: Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=_tmp_prefix(path.name), delete=False) as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=_jsonable)
        tmp = fh.name
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=_tmp_prefix(path.name), delete=False) as fh:
        fh.write(text)
        tmp = fh.name
    os.replace(tmp, path)


def save_torch(path: Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(_tmp_prefix(path.name) + "0")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_torch(path: Path) -> Any:
    """Load a checkpoint we wrote; weights_only so that nothing arbitrary is unpickled. Anything else (a truncated
    or replaced file, a pickle of arbitrary objects) is a RunDirError that names the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing: delete its stage folder and rerun") from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in first or "Weights only" in first:
            first = "it holds objects other than tensors and plain values"
        raise RunDirError(f"{path} is not a file this project wrote ({first}); delete its stage folder and rerun") from None


def check_writable_dir(path: Path, what: str = "run directory") -> None:
    """Create `path` if needed and check that files can be written there; a RunDirError names the problem."""
    path = Path(path)
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise RunDirError(f"{what} {path} " + ("is a file" if parent == path else f"is inside a file ({parent})")
                                  + ": choose another path")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=_tmp_prefix("write-check")):
            pass
    except OSError as exc:
        raise RunDirError(f"cannot write to {what} {path}: {exc.strerror or exc}") from None


def clean_stale_temporaries(folder: Path) -> list[str]:
    """Remove the temporary files and staging folders that a killed process of this host left in `folder`
    (names .<name>.tmp-<host>-<pid>-*, whose pid is no longer running). Returns the removed names."""
    removed = []
    for p in Path(folder).glob(".*.tmp-*"):
        m = _TMP.match(p.name)
        if not m or m["host"] != _HOST or _alive(int(m["pid"])):
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        removed.append(p.name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (relative posix paths), except the manifest itself."""
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file() and p.name != "manifest.json":
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            out[p.relative_to(folder).as_posix()] = h.hexdigest()
    return out


def _jsonable(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@contextmanager
def staging_dir(final: Path, replace: bool = True) -> Iterator[Path]:
    """Yield a fresh temp dir beside `final`; on success it replaces `final` (or, with replace=False, is dropped
    when `final` already exists), on error it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=_tmp_prefix(final.name)))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        if not replace:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        shutil.rmtree(final)
    os.replace(tmp, final)


def read_manifest(stage_dir: Path) -> dict | None:
    p = Path(stage_dir) / "manifest.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def verify_stage(stage_dir: Path, config_hash: str) -> tuple[dict | None, str]:
    """(manifest, "") when the stage finished with this config hash and every artifact still has the checksum the
    manifest recorded; else (None, why not) with why = "" when there is simply nothing to reuse."""
    m = read_manifest(stage_dir)
    if not m or m.get("status") != "complete":
        return None, ""
    if m.get("config_hash") != config_hash:
        return None, f"it was computed for another config (hash {m.get('config_hash')})"
    recorded = m.get("files")
    if recorded is None:
        return None, "its manifest records no checksums (written by an older version)"
    found = checksums(stage_dir)
    for name, digest in recorded.items():
        if name not in found:
            return None, f"artifact {name} is missing"
        if found[name] != digest:
            return None, f"artifact {name} changed since it was written (checksum mismatch)"
    return m, ""


def manifest(stage: str, config_hash: str, wall_time_s: float, folder: Path, **extra: Any) -> dict:
    """The stage's record: config hash, status, time, and the sha256 of every artifact in `folder`."""
    return {"stage": stage, "config_hash": config_hash, "status": "complete", "wall_time_s": round(wall_time_s, 2),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": checksums(folder), **extra}
