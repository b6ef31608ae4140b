"""What of Ray's own output reaches the user's terminal.

By default only warnings and errors: Ray Data's per-dataset execution-plan lines and Ray Train's INFO lines go
to the session's log files (/tmp/ray/session_latest/logs), and the pipeline prints one progress line per epoch
itself (`progress.py`). `DETAUX_RAY_LOGS=all` shows everything Ray prints.
"""

from __future__ import annotations

import logging
import os
import re
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


# Lines Ray forwards to the driver's terminal that say nothing a user of this pipeline can act on. They stay in the
# session's log files; DETAUX_RAY_LOGS=all prints them.
RAY_NOISE = re.compile(
    r"PYTHON worker processes have been started on node"  # raylet: fractional CPUs start many workers, on purpose
    r"|has constructor arguments in the object store and max_restarts > 0"  # Ray Train's / Ray Data's own actors
    r"|Failed to query Ray Train Controller actor state"  # Ray Train's cleaner while the run shuts down
    r"|Token authentication is enabled for this Ray cluster")  # the local instance's default, not a choice here


def is_ray_noise(line: str) -> bool:
    return bool(RAY_NOISE.search(line))


class RayNoiseFilter(logging.Filter):
    """For Ray's Python loggers in the driver (the token-authentication notice of a local instance)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not is_ray_noise(record.getMessage())


def filter_forwarded_logs() -> None:
    """Drop RAY_NOISE from what Ray prints in this driver: the workers' and actors' forwarded lines and the raylet's
    messages both pass through `ray._private.worker.print_worker_logs` (private API; without it the lines print)."""
    if verbose():
        return
    from ray._private import worker

    original = worker.print_worker_logs
    if getattr(original, "detaux_filtered", False):
        return

    def print_worker_logs(data, *args, **kwargs):
        lines = [line for line in data.get("lines", []) if not is_ray_noise(line)]
        if lines:
            original({**data, "lines": lines}, *args, **kwargs)

    print_worker_logs.detaux_filtered = True
    worker.print_worker_logs = print_worker_logs
    for name in ("ray._private.authentication.authentication_token_setup", "ray"):
        logging.getLogger(name).addFilter(RayNoiseFilter())
