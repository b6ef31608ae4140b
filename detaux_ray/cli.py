"""What every entry point does with a failure: one line on stderr and the error's exit code, never a traceback for
a mistake in the input (errors.py lists the codes)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable

from .errors import INTERRUPTED_EXIT, DataError, DetauxError, find_data_error


# Set by Ctrl-C for the whole run. A KeyboardInterrupt that lands inside a finalizer (Ray's calls run ObjectRef
# finalizers) is swallowed by Python; the flag is not, and the next wait for Ray (trainer.wait_interruptibly) sees it.
interrupted = threading.Event()


def on_sigint(signum, frame) -> None:
    interrupted.set()
    raise KeyboardInterrupt


def run_cli(body: Callable[[], int], on_interrupt: Callable[[], str]) -> int:
    """Run `body`; map a DetauxError (also one wrapped by Ray, e.g. a bad image read in a Ray task) to its exit
    code. Ctrl-C prints `on_interrupt()`'s line (where it stopped, how to resume) and ends the process with 130.
    Anything else is a bug and keeps its traceback."""
    interrupted.clear()  # a run of its own (a test session calls several in one process)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if main else None
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
    finally:
        if previous is not None:  # an embedding caller (a test) gets its own handler back
            signal.signal(signal.SIGINT, previous)


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
