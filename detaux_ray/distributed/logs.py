"""What of Ray's own output reaches the user's terminal.

By default only warnings and errors: Ray Data's per-dataset execution-plan lines and Ray Train's INFO lines go
to the session's log files (/tmp/ray/session_latest/logs), and the pipeline prints one progress line per epoch
itself (`progress.py`). `DETAUX_RAY_LOGS=all` shows everything Ray prints.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import ray

RAY_DATA_CONFIG = Path(__file__).with_name("ray_data_logging.yaml")


def verbose() -> bool:
    return os.environ.get("DETAUX_RAY_LOGS", "").lower() == "all"


def quiet_env() -> dict[str, str]:
    """Environment for this driver and every Ray worker of the job (set before Ray Data configures its logging)."""
    if verbose():
        return {}
    return {"RAY_DATA_LOGGING_CONFIG": os.environ.get("RAY_DATA_LOGGING_CONFIG", str(RAY_DATA_CONFIG)),
            # Ray Train sends a worker's print() through its logger and the console handler, twice on the terminal
            "RAY_TRAIN_ENABLE_PRINT_PATCH": os.environ.get("RAY_TRAIN_ENABLE_PRINT_PATCH", "0"),
            # Ray's internal actors warn about Ray's own deprecated options (read at each worker's start)
            "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "ignore::DeprecationWarning")}


def quiet_worker() -> None:
    """In a training worker: INFO records of loggers that are not Ray Train's own (Ray names one by its file path)
    reach the console through the root logger, which Ray Train sets to INFO; keep them in the log files only."""
    if not verbose():
        logging.getLogger().setLevel(logging.WARNING)


class RayDataNoticeFilter(logging.Filter):
    """Drops Ray Data's console notice that progress bars are off: we turn them off on purpose (they would
    interleave with the one progress line per epoch)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Progress bars")


def train_log_level() -> str:
    """Ray Train's console level (RunConfig(logging_config=...)): its INFO lines are per-epoch chatter."""
    return "INFO" if verbose() else "WARNING"


def silence_worker_logs() -> None:
    """Stop printing Ray workers' output in this driver. Called on Ctrl-C: as the driver goes away, the run's
    actors (Ray Train's placement-group cleaner, ...) print tracebacks that are not the user's concern."""
    if ray.is_initialized():
        ray._private.worker._worker_logs_enabled = False  # the switch Ray's own debugger uses (private API)
