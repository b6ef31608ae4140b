"""User-facing errors. Each maps to its own exit code so scripts can tell failures apart."""

import re


# One class per exit code (docs/errors.md), so that scripts can tell failures apart; what each one means:
class DetauxError(Exception): exit_code = 1  # noqa: E701  (anything else of ours)
class ConfigError(DetauxError): exit_code = 2  # noqa: E701  unknown preset or key, a value of the wrong type or range
class DataError(DetauxError): exit_code = 3  # noqa: E701  unknown dataset, missing factor, too few classes, bad images
# Discovery found one cluster: the auxiliary task would carry no information (the run is unsuccessful).
class SingleClusterError(DetauxError): exit_code = 4  # noqa: E701
# Every subspace but alpha is constant: stage 1 encoded nothing outside alpha (the pipeline's fallback retrains it).
class ConstantLatentError(SingleClusterError): pass  # noqa: E701
class NonFiniteLossError(DetauxError): exit_code = 5  # noqa: E701  a NaN/inf loss; the last good checkpoint is kept
# The run directory cannot be used (a file, not writable, busy) or holds an artifact this project cannot read.
class RunDirError(DetauxError): exit_code = 6  # noqa: E701


INTERRUPTED_EXIT = 130  # Ctrl-C (128 + SIGINT), as shells report it


def find_data_error(exc: BaseException) -> str | None:
    """The message of a DataError anywhere in `exc`'s chain (causes, contexts, Ray's wrapped task errors), or None.

    Ray re-raises a remote DataError as a class deriving from both RayTaskError and DataError whose text is the
    remote traceback; the original exception is its `.cause`, whose text is the one-line message we want."""
    seen, stack = set(), [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        if isinstance(e, DataError) and not isinstance(cause, BaseException):
            return str(e)
        stack += [x for x in (cause, e.__cause__, e.__context__) if isinstance(x, BaseException)]
    m = re.search(r"DataError: (.+)", str(exc))  # a chain that crossed a process boundary as text only
    return m.group(1).strip() if m else None
