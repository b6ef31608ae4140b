"""Resuming from Ray Train checkpoints: the newest readable one wins, a truncated one is skipped."""

from __future__ import annotations

import posixpath
from pathlib import Path

import pyarrow.fs as pafs
from ray.train import Checkpoint

from ..artifacts import load_torch


def load_resume_state(ckpt: Checkpoint | None) -> dict | None:
    """state.pt of `ckpt`, or of the newest earlier checkpoint of the same run if it cannot be read.

    Checkpoint folders are named checkpoint_<timestamp>, so their names sort in time order. Works on any
    pyarrow filesystem (local, NFS, S3, GCS). Loading is weights_only: nothing arbitrary is unpickled.
    """
    if ckpt is None:
        return None
    fs, newest = ckpt.filesystem, ckpt.path.rstrip("/")
    parent = posixpath.dirname(newest)
    found = fs.get_file_info(pafs.FileSelector(parent))
    earlier = sorted((i.path for i in found if i.type == pafs.FileType.Directory
                      and posixpath.basename(i.path).startswith("checkpoint_") and i.path < newest), reverse=True)
    for path in [newest] + earlier:
        try:
            with Checkpoint(path, filesystem=fs).as_directory() as d:
                return load_torch(Path(d) / "state.pt")
        except Exception as exc:  # truncated / half-uploaded: fall back to the previous one
            print(f"[checkpoint] {path} is unreadable ({type(exc).__name__}: {exc}); trying the previous checkpoint",
                  flush=True)
    raise RuntimeError(f"no readable checkpoint under {parent}")
