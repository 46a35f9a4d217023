"""The format protocol: what every on-disk format offers the engine, defined once.

- A **reader** (:class:`Format`) recognises a path (``detect``) and opens it
  (``open``) into a :class:`Checkpoint`: its tensors as :class:`TensorSource`
  objects, read block by block, and the facts worth keeping.
- A **sink** (:class:`Sink`) takes the engine's output blocks for a new store,
  array by array, region by region (Zarr; memory).
- An **exporter** (:class:`Exporter`) writes a finished store's tensors as
  another format's files, streaming them through :class:`ByteStreams` that the
  engine hands it (read-ahead and progress stay in the engine).

A format module implements what its format has and is registered by one line
in ``formats/__init__.py``; the engine knows only these protocols.
"""

from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Protocol

import numpy as np

from ..layout import Block, TensorMeta

__all__ = ["TensorSource", "Checkpoint", "Format", "Sink", "Exporter", "ByteStreams", "OutTensor",
           "LOGICAL_DTYPE_ATTR", "TENSOR_ORDER_ATTR", "MASK_GROUP", "AUX_DIR", "MISSING_CHUNKS", "CODECS",
           "stored_nbytes", "digest", "widen_into", "write_stream", "split_greedy"]

#: Subgroup holding prune masks (``__masks__/<tensor>``).
MASK_GROUP = "__masks__"
#: Output codecs of a store.
CODECS = ("zstd", "none")
#: Array attribute naming the real dtype of raw-bit storage (``bfloat16``, ``float16``).
LOGICAL_DTYPE_ATTR = "logical_dtype"
#: Group attribute listing tensor names in model order.
TENSOR_ORDER_ATTR = "tensor_order"
#: Folder of a store holding the checkpoint's non-tensor files (config.json, tokenizer files).
AUX_DIR = "__aux__"
#: what a chunk with no stored object means when read: an error (default: our
#: outputs write every chunk, so a missing one is damage), or the fill value
#: (zarr's own reading, for stores written with ``write_empty_chunks=False``)
MISSING_CHUNKS = ("error", "fill")

_FLOAT_KINDS = {"float32", "float64", "float16", "bfloat16"}


def _widen(raw: np.ndarray, logical: str, owned: bool = False) -> np.ndarray:
    """Flat, writable float32 version of a raw block: a copy, unless ``owned``
    (the reader made a fresh buffer for us) and it is already float32."""
    flat = raw.reshape(-1)
    if logical == "bfloat16":
        if flat.dtype == np.uint16:
            return widen_into(flat, np.empty(flat.size, np.float32))
        return flat.astype(np.float32)
    if logical == "float16" and flat.dtype == np.uint16:
        return flat.view(np.float16).astype(np.float32)
    if flat.dtype == np.float32:
        if owned and flat.flags.writeable and flat.flags.c_contiguous:
            return flat
        return np.array(flat, dtype=np.float32, copy=True)
    return flat.astype(np.float32)


def widen_into(bits: np.ndarray, out: np.ndarray) -> np.ndarray:
    """bfloat16 ``bits`` (flat uint16) as float32 in ``out[:bits.size]``, by a
    kernel (no numpy temporaries); returns that slice."""
    from ..kernels import widen_bf16

    flat = out[: bits.size]
    widen_bf16(bits.reshape(-1), flat.view(np.uint32))
    return flat


class TensorSource:
    """One input tensor, read block by block."""

    meta: TensorMeta
    logical_dtype: str
    chunks: tuple[int, ...] | None
    attrs: dict[str, Any]

    #: blocks that split the last axis must split it at multiples of this
    block_multiple: int = 1
    #: stored as codes + scales (``quantization`` says how; ``parts`` / ``part_blocks`` give them raw)
    quantized: bool = False

    @property
    def is_float(self) -> bool:
        return self.logical_dtype in _FLOAT_KINDS

    @property
    def stored_itemsize(self) -> int:
        return 4

    def read_raw(self, block: Block) -> np.ndarray:
        raise NotImplementedError

    def stored_bytes(self) -> int:
        """Bytes on disk (or in memory) of everything stored for this tensor."""
        return stored_nbytes(self)

    def fingerprint(self) -> str:
        """Cheap identity of the input tensor (no data read): changes when it is rewritten."""
        return digest([self.meta.name, list(self.meta.shape), self.logical_dtype])

    @property
    def display_dtype(self) -> str:
        return self.logical_dtype

    #: ``read_raw`` returns a fresh buffer nobody else holds (no defensive copy needed)
    owns_reads: bool = False

    def read(self, block: Block) -> np.ndarray:
        """Flat float32 version of the block, safe to modify."""
        return _widen(self.read_raw(block), self.logical_dtype, self.owns_reads)

    #: ``read_into`` decodes straight into a caller's float32 buffer
    reads_into: bool = False

    def read_into(self, block: Block, out: np.ndarray) -> np.ndarray:
        """Like :meth:`read`, into ``out`` (flat float32, at least ``block.size``);
        only for sources with ``reads_into``. Reusing buffers spares the page
        faults of a fresh allocation per block."""
        raise NotImplementedError

    #: blocks can come mapped (:meth:`map_block`; a block across chunks cannot)
    maps: bool = False

    def map_block(self, block: Block) -> np.ndarray | None:
        """The block's flat float32 values mapped from the page cache without a copy
        (private: writes stay in this process), or None when it cannot be."""
        return None

    @property
    def raw_dtype(self) -> np.dtype:
        raise NotImplementedError

    @property
    def bf16_bits(self) -> bool:
        """Stored as raw bfloat16 bits (uint16 with ``logical_dtype``): ``read_into`` widens them."""
        return self.logical_dtype == "bfloat16" and self.raw_dtype == np.uint16

    def widen_bits_into(self, block: Block, out: np.ndarray, bits: np.ndarray | None) -> np.ndarray:
        """The block's bfloat16 ``bits`` (mapped; None: read with ``read_raw``) widened into ``out``."""
        return widen_into(self.read_raw(block) if bits is None else bits, out)


def stored_nbytes(src: TensorSource) -> int:
    return math.prod(src.meta.shape) * src.stored_itemsize


def digest(obj: Any) -> str:
    """A stable hash of JSON-able ``obj`` (fingerprints)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


@dataclass
class Checkpoint:
    """An opened checkpoint: its tensors in model order and what it says of itself."""

    #: the registered format's name
    format: str
    sources: list[TensorSource]
    #: the store's own attributes (a Zarr group's), or facts of the import (safetensors)
    attrs: dict[str, Any] = field(default_factory=dict)
    #: the open group (Zarr), for readers that need more of it
    group: Any = None
    #: where it was opened from (a store's ``__aux__`` lies there)
    path: Path | None = None


class Format(ABC):
    """Reader side of one on-disk format."""

    #: name in the registry (``formats.READERS``)
    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def detect(cls, path: Path) -> bool:
        """True when ``path`` (which exists) is a checkpoint of this format."""

    @classmethod
    @abstractmethod
    def open(cls, path: Path, missing: str = "error", unfinished_ok: bool = False) -> Checkpoint:
        """Validate and open ``path`` (metadata only: no tensor is read).

        ``missing``: see :data:`MISSING_CHUNKS`; ``unfinished_ok``: open a store
        whose run did not complete (for ``info``)."""


class Sink(Protocol):
    """Where the engine writes a new store's arrays (block-aligned regions)."""

    def create(self, name: str, shape, chunks, dtype, attrs: dict[str, Any]) -> None: ...

    def write(self, name: str, region: tuple, data: np.ndarray) -> None: ...

    def update_attrs(self, name: str, attrs: dict[str, Any]) -> None: ...

    def finish(self, attrs: dict[str, Any]) -> None: ...

    def close(self) -> None:
        """Release what the sink holds (open files), whether or not the run finished."""
        ...


#: a tensor's bytes, block after block (called once per write)
Stream = Callable[[], Iterable[bytes]]


class ByteStreams(Protocol):
    """The engine's streams for exporters (read-ahead and progress are the engine's)."""

    #: elements per block of a stream (from the memory budget)
    block_elems: int

    def dense(self, src: TensorSource, dtype: str | None) -> Stream:
        """``src`` as its raw stored bytes (``dtype`` None) or as floats cast to ``dtype``."""
        ...



@dataclass
class OutTensor:
    """A tensor an exporter writes: its file format's dtype name, shape, bytes per
    element and the stream of its bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    itemsize: int
    stream: Stream

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.itemsize


def split_greedy(tensors: list[Any], max_bytes: int | None) -> list[list[Any]]:
    """``tensors`` (with ``nbytes``) in order, in parts of at most ``max_bytes``
    (a tensor larger than that is a part of its own; None: one part)."""
    parts: list[list[Any]] = [[]]
    size = 0
    for t in tensors:
        if parts[-1] and max_bytes is not None and size + t.nbytes > max_bytes:
            parts.append([])
            size = 0
        parts[-1].append(t)
        size += t.nbytes
    return parts


def write_stream(f: Any, name: str, nbytes: int, stream: Stream) -> None:
    """Write a tensor's stream into the open file ``f``, checking it gave ``nbytes``."""
    written = 0
    for chunk in stream():
        f.write(chunk)
        written += len(chunk)
    if written != nbytes:
        from ..errors import InvalidStore

        raise InvalidStore(f"tensor '{name}' streamed {written} bytes, expected {nbytes}")


class Exporter(ABC):
    """Writer side of an export format: a finished store's tensors as files."""

    #: name in the registry (``formats.EXPORTERS``) and of ``export --format``
    name: ClassVar[str]
    #: writes one file (``dest`` is that file's path), not a directory of them
    single_file: ClassVar[bool] = False
    #: the file suffix that picks this format when ``--format`` is not given
    suffix: ClassVar[str | None] = None

    @abstractmethod
    def write(self, ckpt: Checkpoint, dest: Path, streams: ByteStreams, *, dtype: str,
              max_shard_size: int | None) -> list[Path]:
        """Write every tensor of ``ckpt`` into the empty directory ``dest`` (made aside
        by the engine, renamed into place after); return the data files written."""
