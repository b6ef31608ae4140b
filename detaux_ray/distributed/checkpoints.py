"""Resuming a training run from the newest readable checkpoint on disk (local or a storage URI)."""

from __future__ import annotations

import posixpath
from pathlib import Path

import pyarrow.fs as pafs
import ray.train
import torch
from ray.train import Checkpoint

from ..artifacts import load_torch


def run_path(storage: str, name: str) -> str:
    """Where Ray Train keeps run `name`'s checkpoints under `storage` (a local path or a storage URI)."""
    return posixpath.join(str(storage).rstrip("/"), name)


def load_resume_state(ckpt: Checkpoint | None, run_dir: str | None = None) -> dict | None:
    """state.pt of the newest readable checkpoint of the run, or None when it has none.

    The run's checkpoint folders (`run_dir`, else `ckpt`'s parent) are named checkpoint_<timestamp>, so their
    names sort in time order; the newest wins even when Ray offers an older one (after the driver was killed, its
    record of the latest checkpoint can lag behind the folders on disk), and a truncated one falls back to the
    previous. Works on any pyarrow filesystem (local, NFS, S3, GCS); loading is weights_only.
    """
    if run_dir is not None:
        fs, parent = pafs.FileSystem.from_uri(run_dir) if "://" in run_dir else (pafs.LocalFileSystem(), run_dir)
    elif ckpt is not None:
        fs, parent = ckpt.filesystem, posixpath.dirname(ckpt.path.rstrip("/"))
    else:
        return None
    try:
        found = fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
    except OSError:
        found = []
    candidates = sorted((i.path for i in found if i.type == pafs.FileType.Directory
                         and posixpath.basename(i.path).startswith("checkpoint_")), reverse=True)
    if ckpt is not None and ckpt.path.rstrip("/") not in candidates:
        candidates.append(ckpt.path.rstrip("/"))
    for path in candidates:
        try:
            with Checkpoint(path, filesystem=fs).as_directory() as d:
                return load_torch(Path(d) / "state.pt")
        except Exception as exc:  # truncated / half-uploaded: fall back to the previous one
            print(f"[checkpoint] {path} is unreadable ({type(exc).__name__}: {exc}); trying the previous checkpoint",
                  flush=True)
    if candidates:
        raise RuntimeError(f"no readable checkpoint under {parent}")
    return None


def resume(run_path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Load the run's newest checkpoint into the model and optimizer; its whole state ({} for a fresh run)."""
    state = load_resume_state(ray.train.get_checkpoint(), run_path) or {}
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    return state
