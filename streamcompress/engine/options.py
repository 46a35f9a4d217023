"""How the engine runs: sizes, options, and the stop flag that signals set."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..formats.base import CODECS, MISSING_CHUNKS
from ..pipeline import NONFINITE_POLICIES

__all__ = ["parse_size", "EngineOptions", "Interrupted", "request_stop", "clear_stop", "check_stop"]

#: Measured bytes of peak RSS per block element (scripts/peak_memory.py), for sizing blocks:
#: read-ahead block, working block, per-stage copy, score keys, write-behind
#: block, raw read buffer and zarr's decoded chunks.
_BYTES_PER_ELEMENT = 80



def parse_size(text: str | int) -> int:
    """``"256MB"``, ``"1GiB"``, ``"512k"`` or an int -> bytes.

    Examples
    --------
    >>> parse_size("256MB"), parse_size("1GiB"), parse_size(1000)
    (256000000, 1073741824, 1000)
    """
    if isinstance(text, int):
        return text
    s = str(text).strip().lower().replace(" ", "")
    units = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1 << 20, "mb": 10**6,
             "mib": 1 << 20, "g": 1 << 30, "gb": 10**9, "gib": 1 << 30, "t": 1 << 40, "tb": 10**12,
             "tib": 1 << 40}
    num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(num):]
    if unit not in units or not num:
        raise ConfigError(f"cannot read size '{text}' (e.g. 256MB, 1GiB)")
    return int(float(num) * units[unit])


@dataclass(frozen=True)
class EngineOptions:
    """How the engine runs (not what it computes, except ``nonfinite``).

    Parameters
    ----------
    memory_budget : bytes of working memory to aim for (blocks are sized from it)
    nonfinite : ``"error"`` or ``"zero"``
    save_masks : keep the prune mask (in memory: ``result.masks``; in a store:
        ``__masks__/<name>`` uint8 arrays)
    codec : output codec of a store, ``"zstd"`` (level 1) or ``"none"``
    progress : show a tqdm bar (bytes read, with ETA)
    prefetch : read ahead / write behind on background threads
    block_elems : override the block size in elements (tests)
    missing_chunks : a Zarr chunk with no stored object: ``"error"`` (default)
        or ``"fill"`` (read as the fill value, as zarr does: for stores written
        with ``write_empty_chunks=False``)
    """

    memory_budget: int = 256 << 20
    nonfinite: str = "error"
    save_masks: bool = False
    codec: str = "zstd"
    progress: bool = False
    prefetch: bool = True
    block_elems: int | None = None
    missing_chunks: str = "error"

    def __post_init__(self) -> None:
        object.__setattr__(self, "memory_budget", parse_size(self.memory_budget))
        if self.memory_budget < 1 << 20:
            raise ConfigError("memory_budget must be at least 1 MiB")
        if self.nonfinite not in NONFINITE_POLICIES:
            raise ConfigError(f"unknown nonfinite policy '{self.nonfinite}' "
                              f"(choose from {', '.join(NONFINITE_POLICIES)})")
        if self.missing_chunks not in MISSING_CHUNKS:
            raise ConfigError(f"unknown missing-chunks policy '{self.missing_chunks}' "
                              f"(choose from {', '.join(MISSING_CHUNKS)})")
        if self.codec not in CODECS:
            raise ConfigError(f"unknown codec '{self.codec}' (choose from {', '.join(CODECS)})")

    @property
    def max_block_elems(self) -> int:
        if self.block_elems is not None:
            return max(1, int(self.block_elems))
        return max(1, self.memory_budget // _BYTES_PER_ELEMENT)


class Interrupted(KeyboardInterrupt):
    """A stop was requested (SIGINT / SIGTERM); raised between blocks, at a safe point."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_stop: dict[str, int | None] = {"signum": None}


def request_stop(signum: int) -> None:
    """Ask a running job to stop after the block in hand (called from a signal handler)."""
    _stop["signum"] = signum


def clear_stop() -> None:
    _stop["signum"] = None


def check_stop() -> None:
    if _stop["signum"] is not None:
        raise Interrupted(_stop["signum"])
