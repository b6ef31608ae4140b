"""Atomic artifact writing and stage manifests (no Ray).

Everything a stage leaves behind is written to a temporary path and renamed into place, so an interrupted run
never leaves a half-written file that a later run would trust.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch


def write_json(path: Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=_jsonable)
        tmp = fh.name
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as fh:
        fh.write(text)
        tmp = fh.name
    os.replace(tmp, path)


def save_torch(path: Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_torch(path: Path) -> Any:
    """Load a checkpoint we wrote; weights_only so that nothing arbitrary is unpickled."""
    return torch.load(path, map_location="cpu", weights_only=True)


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
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
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


def stage_complete(stage_dir: Path, config_hash: str) -> dict | None:
    """The stage's manifest if it finished with this config hash, else None."""
    m = read_manifest(stage_dir)
    return m if m and m.get("config_hash") == config_hash and m.get("status") == "complete" else None


def manifest(stage: str, config_hash: str, wall_time_s: float, **extra: Any) -> dict:
    return {"stage": stage, "config_hash": config_hash, "status": "complete", "wall_time_s": round(wall_time_s, 2),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
