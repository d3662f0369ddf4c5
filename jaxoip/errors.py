"""Errors a user can cause and fix; commands print them as one line and exit non-zero."""


class JaxoipError(ValueError):
    """Base class: bad input, not a bug."""


class DataError(JaxoipError):
    """MNIST cannot be found, or a data file is malformed."""


class LayerError(JaxoipError):
    """An unknown layer name, an index out of range, or a layer unfit for the request."""


class CheckpointError(JaxoipError):
    """A checkpoint is missing, incomplete, corrupt or of another architecture."""


class DivergenceError(JaxoipError):
    """Training or a search produced non-finite values; nothing is saved."""


class OutOfMemoryError(JaxoipError):
    """A batch or chunk does not fit in the device's memory."""


class OutputError(JaxoipError):
    """An output folder jaxoip may not write: user files, a file, locked, read-only or full."""
