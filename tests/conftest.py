import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "1")


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray for the whole test session (ray.init costs ~8 s here)."""
    import ray

    from detaux_ray.distributed.pipeline import start_local_ray

    if not ray.is_initialized():
        start_local_ray(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray


@pytest.fixture(scope="session")
def few_labels(ray_session, tmp_path_factory):
    """`bench/label_efficiency.py` at one fraction (0.3), two seeds, a tiny size, on the session's Ray: the run that
    the few-labels pipeline test and the bench's smoke test both read (one pipeline run, not two)."""
    import contextlib
    import io
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import label_efficiency

    folder = tmp_path_factory.mktemp("labels")
    sets = ["data.n_images=1200", "data.image_size=16", "disentangle.k=3", "disentangle.epochs=2",
            "disentangle.pairs_per_epoch=256", "disentangle.batch_size=32", "discover.clusterer=kmeans++",
            "discover.n_clusters=4", "mtl.epochs=1", "mtl.width=8", "resources.num_workers=1",
            "resources.cpus_per_worker=0.25", "mtl.compare=[auxilearn]"]  # a peer: labelled images only
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = label_efficiency.main(["--fractions", "0.3", "--seeds", "2", "--out", str(folder),
                                        *[a for s in sets for a in ("--set", s)]])
    return SimpleNamespace(result=result, folder=folder, out=out.getvalue())


def pytest_configure(config):
    # Test modules in subfolders import the fixture writers in tests/ and the entry points in jobs/.
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    for p in (here, here.parent / "jobs"):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))


def driver_lines(text: str) -> str:
    """The lines our own process printed, without the worker output Ray forwards ("(RayTrainWorker pid=...)").

    Ray's forwarded lines are Ray's business (under load its own actors log tracebacks of internal timeouts);
    the tests hold our process to "no traceback"."""
    import re

    forwarded = re.compile(r"^(\x1b\[\d+m)?\((\w[\w.]* )?pid=\d+")
    return "\n".join(line for line in text.splitlines() if not forwarded.match(line))
