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
