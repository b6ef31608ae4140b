"""Atomic, durable artifact writing and stage manifests (no Ray).

Everything a stage leaves behind goes through `_atomic`: written to a temporary name beside its final path,
flushed to disk (fsync), given the permissions the umask allows (as `open()` would), renamed into place, and the
rename itself flushed (fsync of the folder). An interrupted run therefore never leaves a half-written file that a
later run would trust, and a full disk is a RunDirError (exit 6) naming the path, with nothing left behind.
"""

from __future__ import annotations

import errno
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
from typing import Any, Callable, Iterator

import torch

from .errors import RunDirError

# Every temporary name carries its writer's host and pid, so leftovers of a killed run can be told from the
# files of a run still in progress (a shared stage store): .<name>.tmp-<host>-<pid>-<random>. The host tag is a
# digest of the full host name: stripping characters would make different hosts equal (ip-10-0-1-23, ip-10-0-12-3).
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:12]
_TMP = re.compile(r"^\..+\.(?:tmp|old)-(?P<host>[0-9a-f]+)-(?P<pid>\d+)-")


def _read_umask() -> int:
    try:  # Linux: read it without changing it (os.umask's set-and-restore races with other threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()
FILE_MODE = 0o666 & ~_UMASK  # what open() would give; tempfile's 0600 would hide artifacts from other users
DIR_MODE = 0o777 & ~_UMASK


def _tmp_prefix(name: str, kind: str = "tmp") -> str:
    return f".{name}.{kind}-{_HOST}-{os.getpid()}-"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems cannot open a folder; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _disk_error(exc: OSError, path: Path) -> RunDirError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return RunDirError(f"no space left to write {path}: free some space and rerun (nothing was left half-written)")
    return RunDirError(f"cannot write {path}: {exc.strerror or exc}")


def _atomic(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """write(file) to a temporary beside `path`, then `write_with`'s fsync, mode and rename."""
    def to_path(tmp: str) -> None:
        with open(tmp, mode) as fh:
            write(fh)

    write_with(path, to_path)


def write_json(path: Path, obj: Any) -> None:
    _atomic(path, lambda fh: json.dump(obj, fh, indent=2, sort_keys=True, default=_jsonable), "w")


def write_text(path: Path, text: str) -> None:
    _atomic(path, lambda fh: fh.write(text), "w")


def copy_file(src: Path, dst: Path) -> None:
    with open(src, "rb") as fh:
        _atomic(dst, lambda out: shutil.copyfileobj(fh, out))


def save_torch(path: Path, obj: Any) -> None:
    _atomic(path, lambda fh: torch.save(obj, fh))


def write_with(path: Path, writer: Callable[[str], None]) -> None:
    """An artifact written by a library that wants a path (a Parquet table, a PNG): `writer(tmp_path)`, then
    the same fsync / mode / rename as every other artifact."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path.name), suffix=path.suffix)
        os.close(fd)
    except OSError as exc:
        raise _disk_error(exc, path) from None
    try:
        writer(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _disk_error(exc, path) from None
        raise
    _fsync_dir(path.parent)


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


def check_writable_storage(uri: str, what: str = "resources.storage_path") -> None:
    """Write and delete a small object under a storage URI (s3://, gs://): a missing bucket, a refused key or a
    read-only role is one RunDirError before any training, not a failed upload after the first epoch."""
    import uuid

    import pyarrow.fs as pafs

    try:
        fs, inner = pafs.FileSystem.from_uri(uri)
        probe = f"{inner.rstrip('/')}/{_tmp_prefix('write-check')}{uuid.uuid4().hex[:8]}"
        with fs.open_output_stream(probe) as out:
            out.write(b"")
        fs.delete_file(probe)
    except (OSError, ValueError) as exc:  # pyarrow: OSError from the store, ArrowInvalid (ValueError) for the URI
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RunDirError(f"{what}={uri} is not writable: {first}") from None


def clean_stale_temporaries(folder: Path) -> list[str]:
    """Tidy what a killed process of this host left in `folder`: its temporary files and staging folders
    (.<name>.tmp-<host>-<pid>-*) are removed; a stage it had moved aside to replace it (.<name>.old-...) is put
    back when the new one never arrived, else removed. Only names whose pid is no longer running. Returns what
    was removed or restored."""
    done = []
    for p in sorted(Path(folder).glob(".*.*-*")):
        m = _TMP.match(p.name)
        if not m or m["host"] != _HOST or _alive(int(m["pid"])):
            continue
        final = p.with_name(p.name[1:p.name.index(".old-")]) if ".old-" in p.name else None
        if final is not None and not final.exists():
            os.replace(p, final)  # killed between moving the old stage aside and renaming the new one in
            done.append(f"{p.name} (restored as {final.name})")
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        done.append(p.name)
    return done


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


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where the system or the file
    system cannot (then the caller moves the old one aside first)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _install(tmp: Path, final: Path) -> None:
    """Put the finished staging folder `tmp` at `final`, replacing what is there, so that at every instant
    `final` holds the old stage or the new one: an atomic exchange where the file system has one; else the old
    stage is first renamed aside (.<name>.old-<host>-<pid>-*), which a later run puts back if a kill comes
    between the two renames (`clean_stale_temporaries`)."""
    if not final.exists():
        os.replace(tmp, final)
    elif _exchange(tmp, final):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old stage
    else:
        old = Path(tempfile.mkdtemp(dir=final.parent, prefix=_tmp_prefix(final.name, "old")))
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(final.parent)


@contextmanager
def staging_dir(final: Path, replace: bool = True) -> Iterator[Path]:
    """Yield a fresh temp dir beside `final`; on success it replaces `final` (or, with replace=False, is dropped
    when `final` already exists: a concurrent run of the same stage finished first), on error it is removed."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=_tmp_prefix(final.name)))
        os.chmod(tmp, DIR_MODE)
    except OSError as exc:
        raise _disk_error(exc, final) from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        if not replace:
            try:
                os.rename(tmp, final)  # fails if another run put a (non-empty) stage there since we checked
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not final.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
            _fsync_dir(final.parent)
        else:
            _install(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _disk_error(exc, final) from None


class RunLock:
    """One pipeline at a time per run directory: an exclusive lock on <run_dir>/.lock (flock, released by the
    kernel when the process ends, however it ends), holding the holder's host, pid and start time for the
    message a second run gets (RunDirError, exit 6)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise RunDirError(f"run directory {self.path.parent} is in use by {holder}: wait for that run to end, "
                              f"or choose another run directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})"
                  .encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    __del__ = release


def read_manifest(stage_dir: Path) -> dict | None:
    """The stage's manifest, or None when there is none or it is not a JSON object we could have written."""
    p = Path(stage_dir) / "manifest.json"
    if not p.is_file():
        return None
    try:
        m = json.loads(p.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None
    return m if isinstance(m, dict) else None


def verify_stage(stage_dir: Path, config_hash: str, data_fingerprint: str | None = None) -> tuple[dict | None, str]:
    """(manifest, "") when the stage finished with this config hash (and, when given, this dataset fingerprint)
    and every artifact still has the checksum the manifest recorded; else (None, why not) with why = "" when there
    is simply nothing to reuse."""
    p = Path(stage_dir) / "manifest.json"
    m = read_manifest(stage_dir)
    if m is None:
        return None, "its manifest is unreadable (not a JSON object)" if p.is_file() else ""
    if m.get("status") != "complete":
        return None, ""
    if data_fingerprint is not None and m.get("data_fingerprint") != data_fingerprint:
        return None, "the dataset changed since it was computed (files added, removed or replaced)"
    if m.get("config_hash") != config_hash:
        return None, f"it was computed for another config (hash {m.get('config_hash')})"
    recorded = m.get("files")
    if not isinstance(recorded, dict) or not recorded:
        return None, "its manifest records no artifacts"
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
