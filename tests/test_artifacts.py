"""detaux_ray/artifacts.py: only files this project wrote are loaded, manifests verify every artifact, leftovers
of dead processes are cleaned."""

import pytest
import torch


def test_load_torch_refuses_arbitrary_pickles(tmp_path):
    import pickle

    from detaux_ray.artifacts import load_torch
    from detaux_ray.errors import RunDirError

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "state.pt"
    torch.save({"x": Evil()}, path, pickle_module=pickle)
    with pytest.raises(RunDirError, match="is not a file this project wrote") as err:
        load_torch(path)
    assert "weights_only" not in str(err.value)  # PyTorch's advice to unpickle anyway is never passed on
    path.write_bytes(b"garbage")
    with pytest.raises(RunDirError, match="state.pt is not a file this project wrote"):
        load_torch(path)


def test_stale_temporaries_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    import os

    from detaux_ray.artifacts import _HOST, clean_stale_temporaries

    dead = tmp_path / f".disentangle.tmp-{_HOST}-999999999-abc"
    live = tmp_path / f".discover.tmp-{_HOST}-{os.getpid()}-abc"
    other_host = tmp_path / ".mtl.tmp-0123456789ab-999999999-abc"
    for d in (dead, live, other_host):
        d.mkdir()
    (tmp_path / f".report.json.tmp-{_HOST}-999999999-x").write_text("{")
    assert sorted(clean_stale_temporaries(tmp_path)) == sorted([dead.name, f".report.json.tmp-{_HOST}-999999999-x"])
    assert live.exists() and other_host.exists() and not dead.exists()


def test_manifests_verify_every_artifact(tmp_path):
    from detaux_ray.artifacts import manifest, verify_stage, write_json

    stage = tmp_path / "discover"
    stage.mkdir()
    (stage / "labels.parquet").write_bytes(b"labels")
    write_json(stage / "manifest.json", manifest("discover", "h1", 1.0, stage))
    assert verify_stage(stage, "h1") == (verify_stage(stage, "h1")[0], "") and verify_stage(stage, "h1")[0]
    assert verify_stage(stage, "h2")[1].startswith("it was computed for another config")
    (stage / "labels.parquet").write_bytes(b"garbage")
    assert verify_stage(stage, "h1") == (None, "artifact labels.parquet changed since it was written (checksum mismatch)")
    (stage / "labels.parquet").unlink()
    assert verify_stage(stage, "h1") == (None, "artifact labels.parquet is missing")


def test_hosts_whose_names_differ_only_in_punctuation_get_different_tags():
    """Cleanup matches on the host tag: two hosts of one shared stage store must never share one."""
    import socket
    from unittest import mock

    import importlib

    import detaux_ray.artifacts as artifacts

    tags = []
    for name in ("ip-10-0-1-23", "ip-10-0-12-3"):
        with mock.patch.object(socket, "gethostname", return_value=name):
            tags.append(importlib.reload(artifacts)._HOST)
    importlib.reload(artifacts)
    assert tags[0] != tags[1]


def test_a_manifest_with_no_artifacts_or_not_an_object_is_not_reused(tmp_path):
    from detaux_ray.artifacts import manifest, verify_stage, write_json

    stage = tmp_path / "discover"
    stage.mkdir()
    write_json(stage / "manifest.json", manifest("discover", "h1", 1.0, stage))  # "files": {}
    assert verify_stage(stage, "h1") == (None, "its manifest records no artifacts")
    for text in (b"[1, 2]", b"\xff\xfe not utf-8", b"{"):
        (stage / "manifest.json").write_bytes(text)
        assert verify_stage(stage, "h1") == (None, "its manifest is unreadable (not a JSON object)")


def test_a_manifest_of_other_data_says_the_dataset_changed(tmp_path):
    from detaux_ray.artifacts import manifest, verify_stage, write_json

    stage = tmp_path / "disentangle"
    stage.mkdir()
    (stage / "model.pt").write_bytes(b"m")
    write_json(stage / "manifest.json", manifest("disentangle", "h1", 1.0, stage, data_fingerprint="aaaa"))
    assert verify_stage(stage, "h1", "aaaa")[0]
    assert verify_stage(stage, "h1", "bbbb") == (None, "the dataset changed since it was computed (files added, removed or replaced)")


def test_artifacts_and_stage_folders_follow_the_umask(tmp_path):
    """Not tempfile's 0600 / 0700: a TensorBoard server or a second user of a shared store must read them."""
    import os
    import stat

    from detaux_ray.artifacts import DIR_MODE, FILE_MODE, save_torch, staging_dir, write_json, write_with

    mask = os.umask(0)
    os.umask(mask)
    assert FILE_MODE == 0o666 & ~mask and DIR_MODE == 0o777 & ~mask
    with staging_dir(tmp_path / "stage") as tmp:
        write_json(tmp / "a.json", {"x": 1})
        save_torch(tmp / "b.pt", {"w": torch.zeros(2)})
        write_with(tmp / "c.txt", lambda p: open(p, "w").write("c"))
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "stage") == DIR_MODE
    assert {mode(p) for p in (tmp_path / "stage").iterdir()} == {FILE_MODE}


def test_a_full_disk_is_exit_6_with_the_path_and_leaves_nothing(tmp_path):
    import errno
    from unittest import mock

    from detaux_ray.artifacts import write_json
    from detaux_ray.errors import RunDirError

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    (tmp_path / "report.json").write_text('{"old": 1}')
    with mock.patch("json.dump", full), pytest.raises(RunDirError, match="no space left to write .*report.json") as e:
        write_json(tmp_path / "report.json", {"new": 1})
    assert e.value.exit_code == 6
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"] and "old" in (tmp_path / "report.json").read_text()


def test_a_concurrent_run_that_finished_the_stage_first_is_kept_without_a_traceback(tmp_path):
    """Two trials of a tuning run finish one stage at once: the second finds the first's copy at rename time."""
    from detaux_ray.artifacts import staging_dir

    final = tmp_path / "disentangle" / "h1"
    with staging_dir(final, replace=False) as tmp:
        (tmp / "model.pt").write_text("mine")
        final.mkdir(parents=True)  # the other trial renamed its copy in after our exists() check
        (final / "model.pt").write_text("theirs")
    assert (final / "model.pt").read_text() == "theirs" and len(list(final.parent.iterdir())) == 1


_KILL_AT_RENAME = """
import os, sys
from pathlib import Path
import detaux_ray.artifacts as a
a._exchange = lambda x, y: False  # the fallback: move the old stage aside, then rename the new one in
real = os.replace
def replace(src, dst):
    real(src, dst)
    if Path(dst).name.startswith(".stage.old-"):
        os._exit(9)  # killed between the two renames
os.replace = replace
with a.staging_dir(Path(sys.argv[1])) as tmp:
    (tmp / "model.pt").write_text("new")
"""


@pytest.mark.parametrize("exchange", [True, False])
def test_a_kill_during_the_final_rename_leaves_the_old_stage_or_the_new(tmp_path, exchange):
    import subprocess
    import sys

    from detaux_ray.artifacts import _exchange, clean_stale_temporaries, staging_dir

    final = tmp_path / "stage"
    final.mkdir()
    (final / "model.pt").write_text("old")
    if exchange:
        probe_a, probe_b = tmp_path / "pa", tmp_path / "pb"
        probe_a.mkdir(), probe_b.mkdir()
        if not _exchange(probe_a, probe_b):
            pytest.skip("this file system has no atomic exchange")
        with staging_dir(final) as tmp:  # one atomic step: no instant without a stage
            (tmp / "model.pt").write_text("new")
        assert (final / "model.pt").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["pa", "pb", "stage"]
        return
    r = subprocess.run([sys.executable, "-c", _KILL_AT_RENAME, str(final)], capture_output=True, text=True)
    assert r.returncode == 9, r.stderr
    assert not final.exists()  # the old stage is aside, the new one not in yet
    restored = clean_stale_temporaries(tmp_path)  # what the next run's start does
    assert (final / "model.pt").read_text() == "old" and any("restored as stage" in x for x in restored)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]  # the dead process's staging folder is gone


def test_a_second_holder_of_a_run_directory_gets_exit_6_with_the_holders_host_and_pid(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from detaux_ray.artifacts import RunLock
    from detaux_ray.errors import RunDirError

    lock = RunLock(tmp_path)
    lock.acquire()
    code = ("import sys; from detaux_ray.artifacts import RunLock\n"
            "try:\n    RunLock(sys.argv[1]).acquire()\nexcept Exception as e:\n    print(e); sys.exit(e.exit_code)")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 6 and f"pid {os.getpid()} on host {socket.gethostname()}" in r.stdout, r.stdout + r.stderr
    with pytest.raises(RunDirError, match="is in use by"):
        RunLock(tmp_path).acquire()  # within one process too
    lock.release()
    RunLock(tmp_path).acquire()  # free again once released (or its process ended)
