"""User-facing errors. Each maps to its own exit code so scripts can tell failures apart."""


class DetauxError(Exception):
    exit_code = 1


class ConfigError(DetauxError):
    """Unknown preset, unknown key, a value of the wrong type or range."""

    exit_code = 2


class DataError(DetauxError):
    """Unknown dataset, missing factor, too few principal classes, bad images."""

    exit_code = 3


class SingleClusterError(DetauxError):
    """Discovery found one cluster: the auxiliary task would carry no information (run unsuccessful)."""

    exit_code = 4


class NonFiniteLossError(DetauxError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""

    exit_code = 5
