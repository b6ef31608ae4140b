"""What a training worker tells the driver through the run directory: failures that a restart would not heal.

Ray Train restarts a failed worker group up to `resources.max_failures` times, which is right for a lost node and
wrong for a diverged loss or a corrupt image: those would fail the same way again. A worker that meets one leaves a
marker; a restarted worker group that finds it stops at once, and the driver turns it into the user-facing error.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..artifacts import write_json
from ..errors import DataError, NonFiniteLossError

DIVERGED = "diverged.json"  # the loss went non-finite
DATA_ERROR = "data_error.json"  # an image could not be read
_ERRORS = {DIVERGED: NonFiniteLossError, DATA_ERROR: DataError}


def record(status_dir: str | Path, marker: str, message: str) -> None:
    write_json(Path(status_dir) / marker, {"message": message})


def failed(status_dir: str | Path) -> bool:
    """True when a worker of this stage already met a failure that a restart would repeat."""
    return any((Path(status_dir) / m).is_file() for m in _ERRORS)


def raise_if_failed(status_dir: str | Path, clear: bool = False) -> None:
    """Raise the error a worker recorded (NonFiniteLossError, DataError), removing its marker; with clear=True
    only remove stale markers (before a stage starts)."""
    for marker, error in _ERRORS.items():
        path = Path(status_dir) / marker
        if path.is_file():
            message = json.loads(path.read_text())["message"]
            path.unlink()
            if not clear:
                raise error(message)
