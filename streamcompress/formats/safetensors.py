"""Safetensors: checkpoints in (one file, or shards with an index) and dense shards out.

Reading validates every header before anything is written, then reads each
block with one ``pread`` (blocks are flat-contiguous, so a block is one byte
range of the file): no shard is ever loaded whole. Writing computes the
header first (sizes are known from shapes), then streams tensors block by
block in the order the ``safetensors`` library uses (dtype descending, then
name), with the header padded by spaces to 8 bytes, so a file written by
``safetensors.save_file`` round-trips byte for byte.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorruptCheckpoint, InvalidStore, StoreNotFound
from ..layout import Block, TensorMeta
from ..safety import bad_member_name
from .base import (LOGICAL_DTYPE_ATTR, ByteStreams, Checkpoint, Exporter, Format, OutTensor, TensorSource, digest,
                   split_greedy, write_stream)

__all__ = ["SafetensorsFormat", "DenseExporter", "SafetensorsSource", "scan_checkpoint", "write_safetensors",
           "write_shards", "st_dtype_of", "check_name", "ST_DTYPES", "INDEX_NAME", "CorruptCheckpoint"]

#: safetensors dtype -> (numpy dtype of the stored bytes, logical dtype)
ST_DTYPES: dict[str, tuple[str, str]] = {
    "F64": ("float64", "float64"), "F32": ("float32", "float32"), "F16": ("uint16", "float16"),
    "BF16": ("uint16", "bfloat16"), "I64": ("int64", "int64"), "I32": ("int32", "int32"),
    "I16": ("int16", "int16"), "I8": ("int8", "int8"), "U64": ("uint64", "uint64"),
    "U32": ("uint32", "uint32"), "U16": ("uint16", "uint16"), "U8": ("uint8", "uint8"),
    "BOOL": ("bool", "bool"), "F8_E4M3": ("uint8", "float8_e4m3fn"),
}


#: the safetensors library's dtype order (files list tensors by descending rank)
_RANK = {d: i for i, d in enumerate(["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16",
                                     "I32", "U32", "F32", "F64", "I64", "U64"])}


_MAX_HEADER = 100 * 1000 * 1000


INDEX_NAME = "model.safetensors.index.json"



def st_dtype_of(logical: str) -> str:
    for k, (_, lg) in ST_DTYPES.items():
        if lg == logical:
            return k
    raise InvalidStore(f"dtype {logical} has no safetensors equivalent")


def check_name(name: str, where: str) -> None:
    if (not isinstance(name, str) or "/" in name or ".." in name or bad_member_name(name)):
        raise CorruptCheckpoint(f"{where}: tensor name {name!r} is not allowed (no '/', '\\\\', '..', NUL, "
                                "leading '__', '.' or 'zarr.json')")


@dataclass(frozen=True)
class STEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offsets
    end: int
    path: Path


def read_header(path: Path) -> tuple[list[STEntry], dict[str, str] | None]:
    """Parse and validate one file's header; entries in file (offset) order."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CorruptCheckpoint(f"'{path}' is truncated: {size} bytes, no header")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or n > size - 8:
                raise CorruptCheckpoint(f"'{path}' has a header length of {n} bytes but the file has {size}")
            raw = f.read(n)
    except OSError as e:
        raise InvalidStore(f"cannot read '{path}': {e.strerror}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CorruptCheckpoint(f"'{path}' has a header that is not valid JSON") from None
    if not isinstance(header, dict):
        raise CorruptCheckpoint(f"'{path}' has a header that is not a JSON object")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise CorruptCheckpoint(f"'{path}': __metadata__ must map strings to strings")
    data0 = 8 + n
    entries = []
    for name, info in header.items():
        where = f"'{path}' tensor '{name}'"
        check_name(name, f"'{path}'")
        if not isinstance(info, dict) or set(info) - {"dtype", "shape", "data_offsets"}:
            raise CorruptCheckpoint(f"{where}: bad entry")
        dt, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dt not in ST_DTYPES:
            raise CorruptCheckpoint(f"{where}: unsupported dtype {dt!r}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                for d in shape)):
            raise CorruptCheckpoint(f"{where}: bad shape {shape!r}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) and o >= 0 for o in offs)
                and offs[0] <= offs[1]):
            raise CorruptCheckpoint(f"{where}: bad data_offsets {offs!r}")
        nbytes = math.prod(shape) * np.dtype(ST_DTYPES[dt][0]).itemsize
        if offs[1] - offs[0] != nbytes:
            raise CorruptCheckpoint(f"{where}: data_offsets span {offs[1] - offs[0]} bytes, shape needs {nbytes}")
        if data0 + offs[1] > size:
            raise CorruptCheckpoint(f"{where}: data_offsets {offs} run past the end of the file "
                                    f"(truncated or corrupt)")
        entries.append(STEntry(name, dt, tuple(shape), data0 + offs[0], data0 + offs[1], path))
    entries.sort(key=lambda e: (e.begin, e.end))
    for a, b in zip(entries, entries[1:]):
        if b.begin < a.end:
            raise CorruptCheckpoint(f"'{path}': tensors '{a.name}' and '{b.name}' overlap")
    return entries, meta


class SafetensorsSource(TensorSource):
    """One tensor of a safetensors file, read block by block with ``pread``."""

    owns_reads = True  # every read fills a new bytearray

    def __init__(self, entry: STEntry, fds: dict[Path, int]) -> None:
        self.entry = entry
        self._fds = fds
        raw, logical = ST_DTYPES[entry.dtype]
        self._raw = np.dtype(raw)
        self.logical_dtype = logical
        self.meta = TensorMeta(entry.name, entry.shape, logical)
        self.chunks = None
        self.attrs = {LOGICAL_DTYPE_ATTR: logical} if raw != logical else {}

    @property
    def raw_dtype(self) -> np.dtype:
        return self._raw

    @property
    def stored_itemsize(self) -> int:
        return self._raw.itemsize

    def _fd(self) -> int:
        fd = self._fds.get(self.entry.path)
        if fd is None:
            fd = self._fds[self.entry.path] = os.open(self.entry.path, os.O_RDONLY)
        return fd

    def _pread(self, block: Block, view: memoryview) -> None:
        off = self.entry.begin + block.start * self._raw.itemsize
        got = 0
        while got < view.nbytes:
            n = os.preadv(self._fd(), [view[got:]], off + got)
            if n <= 0:
                raise CorruptCheckpoint(f"'{self.entry.path}' ended inside tensor '{self.entry.name}'")
            got += n

    def read_raw(self, block: Block) -> np.ndarray:
        buf = bytearray(block.size * self._raw.itemsize)
        self._pread(block, memoryview(buf))
        return np.frombuffer(buf, dtype=self._raw).reshape(block.shape)

    @property
    def reads_into(self) -> bool:
        """float32 as stored: read straight into the engine's reused buffers;
        bfloat16: mapped and widened into them by a kernel."""
        return self._raw == np.float32 or self.bf16_bits

    def read_into(self, block: Block, out: np.ndarray) -> np.ndarray:
        if self.bf16_bits:
            return self.widen_bits_into(block, out, self._map(block))
        flat = out[: block.size]
        self._pread(block, memoryview(flat).cast("B"))
        return flat

    @property
    def maps(self) -> bool:
        return self._raw == np.float32

    def map_block(self, block: Block) -> np.ndarray | None:
        """The block's float32 values mapped from the file, read-only (the page cache's
        own pages: no copy; mapped as one range, ``MAP_POPULATE``); unmapped when
        the array goes."""
        return self._map(block) if self.maps else None

    def _map(self, block: Block) -> np.ndarray | None:
        """The block's stored values, mapped read-only (None where that cannot be)."""
        if not block.size:
            return None
        item = self._raw.itemsize
        off = self.entry.begin + block.start * item
        lo = off - off % mmap.ALLOCATIONGRANULARITY
        length = off - lo + block.size * item
        if off + block.size * item > self.entry.end:
            return None
        try:
            mm = mmap.mmap(self._fd(), length, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                           prot=mmap.PROT_READ, offset=lo)
        except (OSError, ValueError):
            return None
        return np.frombuffer(mm, dtype=self._raw, count=block.size, offset=off - lo)

    def stored_bytes(self) -> int:
        return self.entry.end - self.entry.begin

    def fingerprint(self) -> str:
        st = self.entry.path.stat()
        e = self.entry
        return digest([e.name, e.dtype, list(e.shape), e.path.name, e.begin, e.end, st.st_size, st.st_mtime_ns])



def is_safetensors_input(path: str | os.PathLike) -> bool:
    p = Path(path)
    if p.is_file():
        return p.suffix == ".safetensors"
    if p.is_dir() and not (p / "zarr.json").exists():
        return (p / INDEX_NAME).exists() or any(p.glob("*.safetensors"))
    return False


def _scan_index(d: Path) -> tuple[list[Path], dict[str, Any]]:
    try:
        index = json.loads((d / INDEX_NAME).read_text())
    except ValueError:
        raise CorruptCheckpoint(f"'{d / INDEX_NAME}' is not valid JSON") from None
    wm = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wm, dict) or not wm:
        raise CorruptCheckpoint(f"'{d / INDEX_NAME}' has no weight_map")
    shards: list[Path] = []
    for name, shard in wm.items():
        check_name(name, str(d / INDEX_NAME))
        if not isinstance(shard, str) or "/" in shard or "\\" in shard or ".." in shard or not shard:
            raise CorruptCheckpoint(f"'{d / INDEX_NAME}': shard name {shard!r} of '{name}' is not a plain "
                                    "file name")
        p = d / shard
        if not p.is_file():
            raise CorruptCheckpoint(f"'{d / INDEX_NAME}' maps '{name}' to missing shard '{shard}'")
        if p not in shards:
            shards.append(p)
    return shards, index



def scan_checkpoint(src: str | os.PathLike) -> tuple[list[TensorSource], dict[str, Any]]:
    """Validate a safetensors file or a sharded directory (index json), and return
    its tensors as sources (model order) and facts for attributes."""
    p = Path(src)
    if not p.exists():
        raise StoreNotFound(str(src))
    info: dict[str, Any] = {"source": str(p)}
    if p.is_file():
        files, index = [p], None
    elif (p / INDEX_NAME).exists():
        files, index = _scan_index(p)
    else:
        files, index = sorted(p.glob("*.safetensors")), None
        if not files:
            raise InvalidStore(f"'{p}' holds no .safetensors file")
    entries: list[STEntry] = []
    metas: list[dict[str, str] | None] = []
    for f in files:
        es, meta = read_header(f)
        entries.extend(es)
        metas.append(meta)
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise CorruptCheckpoint(f"tensor(s) {', '.join(dup[:3])} appear in more than one shard")
    if index is not None:
        wm = index["weight_map"]
        for e in entries:
            if e.name not in wm:
                raise CorruptCheckpoint(f"shard '{e.path.name}' holds '{e.name}', which the index does not list")
            if wm[e.name] != e.path.name:
                raise CorruptCheckpoint(f"the index maps '{e.name}' to '{wm[e.name]}' but it is in "
                                        f"'{e.path.name}'")
        missing = set(wm) - set(names)
        if missing:
            raise CorruptCheckpoint(f"the index lists '{sorted(missing)[0]}', which no shard holds")
        if isinstance(index.get("metadata"), dict):
            info["index_metadata"] = index["metadata"]
    if len(files) == 1 and metas[0] is not None:
        info["safetensors_metadata"] = metas[0]
    fds: dict[Path, int] = {}
    return [SafetensorsSource(e, fds) for e in entries], info



class SafetensorsFormat(Format):
    """A ``.safetensors`` file, or a directory of shards (with ``model.safetensors.index.json``)."""

    name = "safetensors"

    @classmethod
    def detect(cls, path: Path) -> bool:
        return is_safetensors_input(path)

    @classmethod
    def open(cls, path: Path, missing: str = "error", unfinished_ok: bool = False) -> Checkpoint:
        sources, info = scan_checkpoint(path)
        return Checkpoint(cls.name, sources, {"import": info})


# -- writing ---------------------------------------------------------------------
def _itemsize(st_dtype: str) -> int:
    return np.dtype(ST_DTYPES[st_dtype][0]).itemsize


def out_tensor(name: str, st_dtype: str, shape, stream) -> OutTensor:
    """An :class:`OutTensor` of a safetensors dtype (``F32``, ``I8``, ...)."""
    return OutTensor(name, st_dtype, tuple(shape), _itemsize(st_dtype), stream)


def st_order(tensors: list[OutTensor]) -> list[OutTensor]:
    """The safetensors library's order: dtype rank descending, then name."""
    return sorted(tensors, key=lambda t: (-_RANK[t.dtype], t.name))


def write_safetensors(path: Path, tensors: list[OutTensor], metadata: dict[str, str] | None) -> int:
    """Write one file (to ``path``), streaming each tensor's bytes; returns its size."""
    ordered = st_order(tensors)
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    off = 0
    for t in ordered:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [off, off + t.nbytes]}
        off += t.nbytes
    hb = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for t in ordered:
            write_stream(f, t.name, t.nbytes, t.stream)
        f.flush()
        os.fsync(f.fileno())
    return 8 + len(hb) + off



def write_shards(dest: Path, tensors: list[OutTensor], max_shard_size: int,
                 single_metadata: dict[str, str] | None = None) -> list[Path]:
    """Write ``tensors`` as shards of at most ``max_shard_size`` bytes (greedy, in
    order) named as Hugging Face names them, with an index when there are
    several; ``single_metadata`` goes into a lone file's header."""
    shards = split_greedy(tensors, max_shard_size)
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    st_meta = single_metadata if n == 1 else {"format": "pt"}
    paths = []
    for fname, shard in zip(names, shards):
        write_safetensors(dest / fname, shard, st_meta)
        paths.append(dest / fname)
    if n > 1:
        index_meta = {"total_size": sum(t.nbytes for t in tensors)}
        wm = {t.name: fname for fname, shard in zip(names, shards) for t in shard}
        (dest / INDEX_NAME).write_text(json.dumps({"metadata": index_meta,
                                                   "weight_map": dict(sorted(wm.items()))}, indent=2) + "\n")
    return paths


def dense_tensor(src: TensorSource, dtype: str, streams: ByteStreams) -> OutTensor:
    """``src`` as a dense safetensors tensor: in its own dtype (``keep``; float32 when
    quantized) or cast to ``dtype``; integer tensors as they are."""
    if not src.is_float:
        st, cast = st_dtype_of(src.logical_dtype), None
    elif dtype == "keep":
        st, cast = ("F32", "float32") if src.quantized else (st_dtype_of(src.logical_dtype), None)
    else:
        st, cast = st_dtype_of(dtype), dtype
    return out_tensor(src.meta.name, st, src.meta.shape, streams.dense(src, cast))


def imported_metadata(ckpt: Checkpoint) -> dict[str, str] | None:
    """The safetensors header metadata a store kept from its import (one file only)."""
    imported = ckpt.attrs.get("import", {})
    return imported.get("safetensors_metadata") if isinstance(imported, dict) else None


class DenseExporter(Exporter):
    """Every tensor dense (quantized ones dequantized) as safetensors shards."""

    name = "dense"

    def write(self, ckpt: Checkpoint, dest: Path, streams: ByteStreams, *, dtype: str,
              max_shard_size: int) -> list[Path]:
        out = [dense_tensor(s, dtype, streams) for s in ckpt.sources]
        return write_shards(dest, out, max_shard_size, imported_metadata(ckpt))
