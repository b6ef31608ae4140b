"""What both training loops share: resuming from the newest readable checkpoint, and stopping (not restarting)
on failures that a restart would repeat."""

from __future__ import annotations

import posixpath
import threading
from pathlib import Path
from typing import Any, Callable

import pyarrow.fs as pafs
import ray.train
from ray.train import Checkpoint

from ..artifacts import load_torch
from ..errors import find_data_error
from .logs import quiet_worker
from .progress import Progress
from .status import DATA_ERROR, failed, record


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


def run_guarded(loop: Callable[[dict], None], config: dict) -> None:
    """Run a train_loop_per_worker body. A data error leaves its marker for the driver; a single worker then just
    returns (nothing to retry, no traceback), while DDP workers raise so that Ray stops the ranks still waiting in
    a collective, and the restarted worker group, finding the marker, returns at once (it would fail the same way,
    as would a diverged loss)."""
    quiet_worker()
    if failed(config["status_dir"]):
        return
    try:
        loop(config)
    except Exception as exc:
        message = find_data_error(exc)
        if message is None:
            raise
        record(config["status_dir"], DATA_ERROR, message)
        if ray.train.get_context().get_world_size() > 1:
            raise


def fit(trainer: Any, progress: Progress | None = None) -> Any:
    """trainer.fit(), with Ctrl-C reaching the caller as KeyboardInterrupt and the run's progress lines printed.

    On the main thread Ray Train replaces the process's SIGINT handler with one that aborts the run and exits the
    process (status 1, nothing said, and the handler stays installed for every later stage). Run from a helper
    thread, fit() leaves signals alone (as under Tune): Ctrl-C interrupts the wait here, the pipeline says where
    it stopped, and Ray ends the run's actors when the driver exits; the checkpoints on disk stay for the rerun.
    Meanwhile a second thread prints the epochs that rank 0 reports (`progress`).
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as exc:  # re-raised on the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target, name="ray-train-fit", daemon=True)
    t.start()
    # The progress lines are fetched on a thread of their own: Ray calls on the main thread run ObjectRef
    # finalizers there, and a KeyboardInterrupt raised inside a finalizer is swallowed (Ctrl-C would be lost).
    done = threading.Event()
    printer = threading.Thread(target=progress.follow, args=(done,), name="progress", daemon=True) if progress else None
    if printer is not None:
        printer.start()
    while t.is_alive():
        t.join(0.5)
    if printer is not None:
        done.set()
        printer.join()
        progress.close()
    if "error" in box:
        raise box["error"]
    return box["result"]
