"""Data and checkpoints in object storage, through a real S3 API (moto's server on localhost, authentication on):
an image folder and a Parquet table read from s3:// give the same labels and pixels as from the local disk; a wrong
key, a missing bucket or a missing prefix is one clear line with its exit code, before Ray starts; and a run whose
data and Ray Train checkpoints both live in the bucket resumes from the checkpoint it left there."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dataset_files import FORMATS, write_imagefolder
from s3_server import S3Server

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def s3():
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3, monkeypatch):
    """This process as a user's shell with the bucket's endpoint and key set."""
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    return s3


def _source(path, name, *extra):
    from detaux_ray.config import load_config
    from detaux_ray.data import build_source

    cfg = load_config("quick", [f"data.dataset={name}", f"data.path={path}", "data.n_images=0", *FORMATS[name][1], *extra])
    return build_source(cfg.data, cfg.seed)


@pytest.mark.parametrize("name", ["imagefolder", "parquet"])
def test_a_dataset_in_a_bucket_reads_as_it_does_from_disk(s3_env, tmp_path, name):
    local = FORMATS[name][0](tmp_path)
    uri = s3_env.upload(local, f"{name}/{Path(local).name}" if Path(local).is_file() else name)
    here, there = _source(local, name), _source(uri, name)
    assert len(there) == len(here) > 0
    assert np.array_equal(there.principal, here.principal) and np.array_equal(there.is_test, here.is_test)
    assert {k: list(v) for k, v in there.factors.items()} == {k: list(v) for k, v in here.factors.items()}
    rows = np.arange(len(here))
    assert np.array_equal(there.images(rows), here.images(rows))  # every image, the same pixels
    assert there.fingerprint and there.fingerprint != here.fingerprint  # the store's listing, not the disk's


def _main(*argv):
    """The pipeline's command line in a child process with this one's env and a Ray instance of its own (the test
    session's Ray was started without the store's variables, which its workers would need); (exit code, stderr)."""
    import os

    p = subprocess.run([sys.executable, str(ROOT / "jobs" / "full_pipeline.py"), *argv], capture_output=True, text=True,
                       cwd=ROOT, timeout=600, env={**os.environ, "RAY_ADDRESS": ""})
    return p.returncode, p.stderr


def test_wrong_key_missing_bucket_or_prefix_is_one_line_before_ray_starts(s3_env, tmp_path, monkeypatch, capsys):
    import full_pipeline


    uri = s3_env.upload(write_imagefolder(tmp_path, n_classes=2, per_class=6), "folder")
    data = ["--set", "data.dataset=imagefolder", "--set", "data.n_images=0",
            *[a for o in FORMATS["imagefolder"][1] for a in ("--set", o)]]
    cases = [  # (argv, env changes, exit code, what the line says)
        ([f"data.path={uri}"], {"AWS_SECRET_ACCESS_KEY": "wrong"}, 3, "ACCESS_DENIED"),
        (["data.path=s3://no-such-bucket-here/folder"], {}, 3, "bucket 'no-such-bucket-here' does not exist"),
        ([f"data.path={uri}-missing"], {}, 3, "nothing under s3://detaux-test/folder-missing"),
        ([f"data.path={uri}", "resources.storage_path=s3://no-such-bucket-here/ckpt"], {}, 6,
         "resources.storage_path=s3://no-such-bucket-here/ckpt is not writable"),
    ]
    for sets, env, code, msg in cases:
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            argv = ["--run-dir", str(tmp_path / "run")] + data + [a for s in sets for a in ("--set", s)]
            rc, err = full_pipeline.main(argv), capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == code and len(lines) == 1 and msg in lines[0], (sets, rc, err[-2000:])
        assert not (tmp_path / "run" / "disentangle").exists() and not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_data_and_checkpoints_in_a_bucket_resume_from_the_bucket(s3_env, tmp_path):
    """Stage 1 reads its images from s3:// and writes its Ray Train checkpoints to s3://; a NaN in epoch 1 stops the
    run (exit 5) with epoch 0's checkpoint in the bucket, and the rerun resumes from it (epoch 1 only)."""
    from test_pipeline import scalars

    (tmp_path / "local").mkdir()
    uri = s3_env.upload(FORMATS["imagefolder"][0](tmp_path / "local"), "data")
    sets = [f"data.path={uri}", "data.dataset=imagefolder", "data.n_images=0", *FORMATS["imagefolder"][1],
            "resources.storage_path=s3://detaux-test/ckpt", "disentangle.k=3", "disentangle.epochs=2",
            "disentangle.pairs_per_epoch=128", "disentangle.batch_size=16",
            "resources.num_workers=1", "resources.cpus_per_worker=0.5",
            "discover.clusterer=kmeans", "discover.n_clusters=1"]  # one cluster: exit 4 once stage 1 is done
    argv = ["--run-dir", str(tmp_path / "run")] + [a for s in sets for a in ("--set", s)]
    rc, err = _main(*argv, "--set", "debug.nan_epoch=1")
    assert rc == 5 and "non-finite in epoch 1" in err, err[-3000:]
    ckpts = {k.split("/")[2] for k in s3_env.keys("ckpt/") if k.endswith("/state.pt")}
    assert len(ckpts) == 1 and not list((tmp_path / "run").glob("checkpoints/**/state.pt"))  # in the bucket only
    rc, err = _main(*argv)
    assert rc == 4 and "found 1 cluster" in err, err[-3000:]
    assert (tmp_path / "run" / "disentangle" / "model.pt").is_file()
    assert len({k.split("/")[2] for k in s3_env.keys("ckpt/") if k.endswith("/state.pt")}) == 2  # epochs 0 and 1
    steps, _ = scalars(tmp_path / "run" / "tensorboard" / "disentangle", "loss/total")
    assert sorted(steps) == [0, 1]  # epoch 0 before the NaN, epoch 1 after resuming from the bucket's checkpoint
