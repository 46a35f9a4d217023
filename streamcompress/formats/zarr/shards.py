"""The sharding codec's shard index, read to tell an inner chunk that was never
written (or was lost) from a stored one: zarr reads both as the fill value.

A shard whose writer stopped after writing some of its inner chunks (zarr
writes a shard's present chunks and marks the others empty) would otherwise
read its unwritten rows as zeros. The index layout is the Zarr v3 sharding
spec's: ``chunks_per_shard + (2,)`` uint64 (offset, nbytes) pairs, both
``2**64 - 1`` for an empty chunk, encoded by ``bytes`` and optionally
``crc32c`` (zarr-python's default and the only encoding it writes unless told
otherwise), at the start or end of the shard file.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from .direct import local_root

__all__ = ["missing_inner_chunk", "sharding_codec", "unreadable_index"]

EMPTY = 2**64 - 1


def sharding_codec(array: Any) -> Any | None:
    """The array's sharding codec, or None for an unsharded array."""
    if not getattr(array, "shards", None) or not array.ndim:
        return None
    for c in getattr(array.metadata, "codecs", ()):
        if type(c).__name__ == "ShardingCodec":
            return c
    return None


def _index_layout(codec: Any) -> tuple[str, int] | None:
    """(numpy dtype of the index, bytes after it) for ``bytes`` [+ ``crc32c``]; None otherwise."""
    names = [type(c).__name__ for c in codec.index_codecs]
    if not names or names[0] != "BytesCodec" or names[1:] not in ([], ["Crc32cCodec"]):
        return None
    endian = getattr(getattr(codec.index_codecs[0], "endian", None), "value", "little")
    return (">u8" if endian == "big" else "<u8"), (4 if names[1:] else 0)


def unreadable_index(codec: Any) -> str | None:
    """Why this reader cannot read ``codec``'s shard index (an encoding it does not know); None if it can."""
    if _index_layout(codec) is None:
        return f"its shard index is encoded with {[type(c).__name__ for c in codec.index_codecs]}"
    return None


def _read_index(array: Any, key: str, start: bool, size: int) -> bytes | None:
    root = local_root(array)
    if root is not None:
        path = root / array.path / key if array.path else root / key
        with open(path, "rb") as f:
            end = os.fstat(f.fileno()).st_size
            if end < size:
                return None
            f.seek(0 if start else end - size)
            return f.read(size)
    from zarr.abc.store import RangeByteRequest, SuffixByteRequest
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    rng = RangeByteRequest(0, size) if start else SuffixByteRequest(size)
    buf = sync(array.store_path.store.get(f"{array.path}/{key}" if array.path else key,
                                          prototype=default_buffer_prototype(), byte_range=rng))
    return None if buf is None else buf.to_bytes()


def missing_inner_chunk(array: Any, codec: Any, shard: tuple[int, ...], key: str,
                        region: tuple[slice, ...]) -> tuple[int, ...] | None:
    """The grid coordinates (in the array's chunk grid) of the first inner chunk of
    shard ``shard`` (stored as ``key``) that ``region`` touches and the shard's
    index marks empty; None if all are stored. ``codec``: one whose index
    :func:`unreadable_index` accepts."""
    dtype, tail = _index_layout(codec)
    inner = tuple(int(c) for c in codec.chunk_shape)
    per = tuple(int(s) // c for s, c in zip(array.shards, inner))
    size = 16 * math.prod(per) + tail
    start = getattr(codec.index_location, "value", codec.index_location) == "start"
    raw = _read_index(array, key, start, size)
    if raw is None or len(raw) != size:
        return None  # too short to hold an index: zarr's read reports the damage
    index = np.frombuffer(raw, dtype=dtype, count=2 * math.prod(per)).reshape(per + (2,))
    ranges = []
    for sl, s, S, c, d in zip(region, shard, array.shards, inner, array.shape):
        lo = max(sl.start or 0, s * S)
        hi = min(d if sl.stop is None else sl.stop, (s + 1) * S, d)
        if hi <= lo:
            return None
        ranges.append((((lo - s * S) // c), ((hi - 1 - s * S) // c) + 1))
    sub = index[tuple(slice(a, b) for a, b in ranges)]
    empty = np.argwhere((sub[..., 0] == EMPTY) & (sub[..., 1] == EMPTY))
    if not len(empty):
        return None
    return tuple(int(s) * (int(S) // c) + a + int(e)
                 for s, S, c, (a, _), e in zip(shard, array.shards, inner, ranges, empty[0]))
