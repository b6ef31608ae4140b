"""A data error met inside a training worker (an image that passes the up-front header scan but cannot be
decoded) stops the stage with exit 3 and one line naming the file; Ray does not retry it."""

import re

import pytest
from dataset_files import png_bytes as _png
from dataset_files import random_image as _img
from dataset_files import write_imagefolder

import full_pipeline
from conftest import driver_lines


@pytest.mark.slow
def test_a_corrupt_image_met_mid_run_is_exit_3_and_not_retried(ray_session, tmp_path, capfd):
    (tmp_path / "folder").mkdir()
    root = write_imagefolder(tmp_path / "folder")
    png = _png(_img())
    for i in range(30):  # every image of class 1 (some are surely in the training split): header intact, pixels cut
        (root / "class_1" / f"{i}.png").write_bytes(png[: len(png) // 2])
    argv = ["--run-dir", str(tmp_path / "run")]
    for item in ["data.dataset=imagefolder", f"data.path={root}", "data.principal=label", "data.n_images=0",
                 "data.cache=stream", "disentangle.k=3", "disentangle.epochs=2", "disentangle.pairs_per_epoch=0",
                 "disentangle.batch_size=16",
                 "mtl.epochs=1", "resources.max_failures=2", "resources.cpus_per_worker=0.5"]:
        argv += ["--set", item]
    assert full_pipeline.main(argv) == 3
    out, err = capfd.readouterr()
    # our process's last line (Ray's forwarded actor lines may still arrive after it: measured, a PlacementGroupCleaner
    # "State API may be temporarily unavailable" line once did)
    last = driver_lines(err).strip().splitlines()[-1]
    assert re.fullmatch(r"error: corrupt or unreadable image class_1/\d+\.png: image file is truncated", last)
    assert "Traceback" not in driver_lines(out + err) and "RETRY" not in out + err  # one attempt, no retries
    assert not (tmp_path / "run" / "disentangle").exists() and not (tmp_path / "run" / "report.json").exists()
