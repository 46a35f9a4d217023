"""One error hierarchy for streamcompress.

Every error derives from :class:`StreamCompressError` and also from the
matching built-in exception (``ValueError``, ``FileNotFoundError``, ...), so
callers can catch either.  The seed's error kinds (``EmptyModel``,
``EmptyPipeline``, ``InvalidPercentile`` and the pruning errors) keep the
seed's messages.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "StreamCompressError",
    "ConfigError",
    "CompressionError",
    "EmptyModel",
    "EmptyPipeline",
    "InvalidPercentile",
    "PruningError",
    "InvalidSparsity",
    "EmptyTensor",
    "NotTwoDimensional",
    "BelowMinNonzero",
    "NonFiniteError",
    "UnsupportedDtype",
    "StoreNotFound",
    "InvalidStore",
    "OutputExists",
    "UnsafePath",
    "OutputBusy",
    "MissingChunk",
    "CorruptCheckpoint",
    "OutputError",
    "ResumeMismatch",
]


def format_f32(value: float) -> str:
    """Format a number the way Rust's ``Display`` prints an ``f32``."""
    v = np.float32(value)
    if np.isnan(v):
        return "NaN"
    if np.isinf(v):
        return "inf" if v > 0 else "-inf"
    return np.format_float_positional(v, unique=True, trim="-")


class StreamCompressError(Exception):
    """Base class of every error raised by streamcompress."""


class ConfigError(StreamCompressError, ValueError):
    """A configuration value has the wrong type or form."""


class CompressionError(StreamCompressError):
    """Errors of the compression pipeline (the seed's ``CompressionError``)."""


class EmptyModel(CompressionError, ValueError):
    def __init__(self) -> None:
        super().__init__("empty model: no tensors")


class EmptyPipeline(CompressionError, ValueError):
    def __init__(self) -> None:
        super().__init__("empty pipeline: no stages")


class InvalidPercentile(CompressionError, ValueError):
    def __init__(self, percentile: float) -> None:
        self.percentile = percentile
        super().__init__(f"invalid clip percentile {format_f32(percentile)}: must be in (0, 1]")


class PruningError(CompressionError):
    """A pruning stage failed (the seed wraps these as ``pruning error: ...``)."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"pruning error: {detail}")


class InvalidSparsity(PruningError, ValueError):
    def __init__(self, sparsity: float) -> None:
        self.sparsity = sparsity
        super().__init__(f"sparsity {format_f32(sparsity)} must be in [0.0, 1.0)")


class EmptyTensor(PruningError, ValueError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"empty tensor: '{name}'")


class NotTwoDimensional(PruningError, ValueError):
    def __init__(self, shape: tuple[int, ...], name: str = "") -> None:
        self.shape = tuple(shape)
        self.name = name
        dims = ", ".join(str(d) for d in shape)
        where = f" (tensor '{name}')" if name else ""
        super().__init__(f"structured pruning requires 2D tensor, got shape [{dims}]{where}")


class BelowMinNonzero(PruningError, ValueError):
    def __init__(self, min_nonzero: int, total: int, name: str = "") -> None:
        self.min_nonzero = min_nonzero
        self.total = total
        self.name = name
        where = f" (tensor '{name}')" if name else ""
        super().__init__(
            f"cannot prune below min_nonzero={min_nonzero} with {total} total elements{where}"
        )


class NonFiniteError(StreamCompressError, ValueError):
    """A tensor holds NaN or infinity and the user did not opt in."""

    def __init__(self, name: str, count: int, where: str = "") -> None:
        self.name = name
        self.count = count
        loc = f" {where}" if where else ""
        super().__init__(
            f"tensor '{name}'{loc} holds {count} NaN/inf value(s); "
            "pass nonfinite='zero' (CLI: --nonfinite zero) to replace them with 0"
        )


class UnsupportedDtype(StreamCompressError, TypeError):
    def __init__(self, name: str, dtype: str) -> None:
        self.name = name
        self.dtype = dtype
        super().__init__(
            f"tensor '{name}' has dtype {dtype}; only float32, float64, float16 and bfloat16 "
            "tensors can be compressed"
        )


class StoreNotFound(StreamCompressError, FileNotFoundError):
    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"no store at '{path}'")


class InvalidStore(StreamCompressError, ValueError):
    pass


class OutputExists(StreamCompressError, FileExistsError):
    """The output exists: without ``overwrite``, or (``ours=False``) it is not an output of ours."""

    def __init__(self, path: str, ours: bool = True) -> None:
        self.path = path
        if ours:
            msg = f"output '{path}' already exists (pass --overwrite to replace it)"
        else:
            msg = (f"output '{path}' exists and was not written by streamcompress: refusing to replace or "
                   "resume it (--overwrite and --resume take only our own outputs; move or delete it yourself)")
        super().__init__(msg)

    def __str__(self) -> str:
        return self.args[0]


class UnsafePath(StreamCompressError, ValueError):
    """An output path that would overwrite, contain or change an input (or cannot be made)."""


class OutputBusy(StreamCompressError, BlockingIOError):
    """Another run holds the output's lock."""

    def __str__(self) -> str:
        return self.args[0]


class CorruptCheckpoint(InvalidStore):
    """A safetensors file or index that is malformed (nothing is written)."""


class MissingChunk(InvalidStore):
    """A chunk that should hold data is not there (never read as the fill value by default)."""


class OutputError(StreamCompressError, OSError):
    """Writing the output failed (disk full, permission denied, ...)."""

    def __init__(self, name: str | None, err: OSError, dest: str | None = None) -> None:
        """``name``: the tensor being written (None: not known). Without ``dest``, a
        resumable output (compress); with it, an output built aside and removed
        on failure (import, restore, export), named ``dest``."""
        self.name = name
        self.errno = err.errno
        self.reason = getattr(err, "reason", None) or err.strerror or str(err)
        if dest is None:
            msg = (f"cannot write tensor '{name}': {self.reason}; nothing after the last complete "
                   "tensor is marked complete: fix the cause and rerun with --resume")
        else:
            of = f" (at tensor '{name}')" if name else ""
            msg = (f"cannot write '{dest}'{of}: {self.reason}; nothing of it was left: fix the cause "
                   "and run the command again")
        super().__init__(msg)

    def __str__(self) -> str:
        return self.args[0]


class ResumeMismatch(StreamCompressError, ValueError):
    """``--resume`` found an output made from another input or pipeline."""
