"""What every entry point does with a failure: one line on stderr and the error's exit code, never a traceback for
a mistake in the input (errors.py lists the codes)."""

from __future__ import annotations

import os
import sys
from typing import Callable

from .errors import INTERRUPTED_EXIT, DataError, DetauxError, find_data_error


def run_cli(body: Callable[[], int], on_interrupt: Callable[[], str]) -> int:
    """Run `body`; map a DetauxError (also one wrapped by Ray, e.g. a bad image read in a Ray task) to its exit
    code. Ctrl-C prints `on_interrupt()`'s line (where it stopped, how to resume) and ends the process with 130.
    Anything else is a bug and keeps its traceback."""
    try:
        return body()
    except DetauxError as exc:
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {on_interrupt()}", file=sys.stderr, flush=True)
        _exit_now(INTERRUPTED_EXIT)
    except Exception as exc:
        message = find_data_error(exc)
        if message is None:
            raise
        return _fail(message, DataError.exit_code)


def _exit_now(code: int) -> None:
    """Leave without the interpreter's teardown. After Ctrl-C a daemon thread can still be inside Ray's fit() (it
    cannot be cancelled), and the teardown runs ray.shutdown() under it: the driver then died of SIGSEGV after
    saying where it stopped (a CI run). Nothing is lost: finished stages and checkpoints are on disk, the run
    directory's lock goes with the process, and a local Ray instance's processes share the driver's fate."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code
