import pytest
import torch

from detaux_ray.artifacts import save_torch


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path):
    from ray.train import Checkpoint

    from detaux_ray.distributed.checkpoints import load_resume_state

    run = tmp_path / "disentangle-abc"
    for i, name in enumerate(["checkpoint_2026-01-01_00-00-01.000000", "checkpoint_2026-01-01_00-00-02.000000"]):
        save_torch(run / name / "state.pt", {"epoch": i, "model": {"w": torch.full((64, 64), float(i))}})
    newest = run / "checkpoint_2026-01-01_00-00-02.000000" / "state.pt"
    assert load_resume_state(Checkpoint(str(newest.parent)))["epoch"] == 1
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated upload
    assert load_resume_state(Checkpoint(str(newest.parent)))["epoch"] == 0
    assert load_resume_state(None) is None


def test_resume_takes_the_newest_checkpoint_on_disk_even_when_ray_offers_an_older_one(tmp_path):
    # After the driver is killed, Ray's record of the latest checkpoint can lag the folders on disk.
    from ray.train import Checkpoint

    from detaux_ray.distributed.checkpoints import load_resume_state

    run = tmp_path / "mtl-stl-abc"
    names = [f"checkpoint_2026-01-01_00-00-0{i}.000000" for i in range(1, 4)]
    for i, name in enumerate(names):
        save_torch(run / name / "state.pt", {"epoch": i})
    offered = Checkpoint(str(run / names[0]))
    assert load_resume_state(offered, str(run))["epoch"] == 2
    assert load_resume_state(None, str(run))["epoch"] == 2  # Ray offers none: still resume
    assert load_resume_state(None, str(tmp_path / "never-ran")) is None


@pytest.mark.slow
def test_ctrl_c_then_kill_then_rerun_resumes_from_the_newest_checkpoint(ray_session, tmp_path):
    """Real signals to a real driver, while this test session's Ray is a second instance on the machine."""
    import os
    import re
    import signal

    from conftest import driver_lines
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    run_dir = tmp_path / "run"
    argv = [sys.executable, str(root / "jobs" / "full_pipeline.py"), "--run-dir", str(run_dir)]
    for item in ["data.n_images=1200", "data.image_size=16", "disentangle.k=3", "disentangle.epochs=6",
                 "disentangle.pairs_per_epoch=256", "disentangle.batch_size=32", "disentangle.scorecard_every=0",
                 "discover.clusterer=kmeans++", "discover.n_clusters=4", "mtl.epochs=1", "mtl.width=8",
                 "mtl.baseline=false", "resources.cpus_per_worker=0.5"]:
        argv += ["--set", item]

    def run_until(pattern: str | None, sig: int) -> tuple[int, str]:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own instance beside this session's
        env["RAY_DEDUP_LOGS"] = "0"  # Ray folds "similar" lines (epoch 2/6, 3/6, ...) into one: we wait for them
        p = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in p.stdout:
            lines.append(line)
            if pattern and re.search(pattern, line):
                p.send_signal(sig)
                break
        rest, _ = p.communicate(timeout=300)
        return p.returncode, "".join(lines) + rest

    code, out = run_until(r"\[disentangle\] epoch [2-5]/6", signal.SIGINT)
    assert code == 130, out[-3000:]
    assert "interrupted: stopped during stage 'disentangle'" in out and "run the same command again to resume" in out
    assert "Traceback" not in driver_lines(out) and "Found multiple active Ray instances" not in out
    assert "started a local Ray instance" in out
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "report.json").exists()

    def newest_on_disk() -> int:
        from detaux_ray.distributed.checkpoints import load_resume_state

        (ckpts,) = (run_dir / "checkpoints").glob("disentangle-*")
        return load_resume_state(None, str(ckpts))["epoch"] + 1

    def resumed_after(out: str) -> int:
        m = re.search(r"resuming after epoch (\d)/6 \(the newest checkpoint\)", out)
        assert m, out[-3000:]
        return int(m.group(1))

    # The newest checkpoint when we look; the stopped driver's workers may still finish one more epoch before they
    # go, so the rerun resumes from this one or a newer one, never from an older record.
    done = newest_on_disk()
    assert done >= 1
    # Killed as soon as stage 1 has resumed (an epoch line might never come: the stopped driver's workers may have
    # finished every epoch before they went). A killed driver cleans up nothing.
    code, out = run_until(r"\[disentangle\] resuming after epoch", signal.SIGKILL)
    assert resumed_after(out) >= done
    assert list(run_dir.glob(".disentangle.tmp-*")), "the killed driver left its staging folder"

    done = newest_on_disk()
    code, out = run_until(None, 0)
    assert code == 0, out[-3000:]
    assert resumed_after(out) >= done
    assert re.search(r"removed \d+ leftover\(s\) of an interrupted run in .*: \.disentangle\.tmp-", out), out[-3000:]
    assert not list(run_dir.glob(".*tmp-*")) and (run_dir / "report.json").is_file()
    # The whole run's terminal holds our lines and Ray's forwarded ones, not Ray's internal error lines (the
    # embedding actors' "constructor arguments in the object store") nor scikit-learn's two-line warnings.
    assert "core_worker.cc" not in out and "ConvergenceWarning" not in out, out[-3000:]
