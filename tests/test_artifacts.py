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
    other_host = tmp_path / ".mtl.tmp-otherhost-999999999-abc"
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
