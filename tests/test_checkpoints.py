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


def test_checkpoints_refuse_arbitrary_pickles(tmp_path):
    import pickle

    import pytest

    from detaux_ray.artifacts import load_torch

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "state.pt"
    torch.save({"x": Evil()}, path, pickle_module=pickle)
    with pytest.raises(pickle.UnpicklingError):
        load_torch(path)
