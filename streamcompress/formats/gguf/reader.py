"""GGUF files in: the header parsed and checked, tensors read block by block.

A GGUF file (v2/v3, little-endian) is ``GGUF``, version (u32), tensor count
and key/value count (u64), the key/value records, the tensor infos (name,
dims ``ne`` fastest first, ggml type, offset), padding to the alignment
(``general.alignment``, default 32), then the tensor data. A split model is
``NAME-00001-of-0000N.gguf`` and its siblings (as ``gguf-split`` names them),
each a GGUF file of its own, the first holding the model's key/values.

Every record is bounds-checked before anything is read; a tensor's data are
read with ``pread`` a block at a time (never a whole tensor). numpy's shape is
``ne`` reversed. F32, F16, BF16 and integer tensors are read as stored; the
ggml block types Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 are dequantized as they are
read (``blocks.dequantize_blocks``).
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import CorruptCheckpoint, InvalidStore
from ...layout import Block, TensorMeta
from ..base import Checkpoint, Format, TensorSource
from ..safetensors import SafetensorsSource, STEntry, check_name

__all__ = ["GGUFFormat", "GGUFHeader", "KV", "TensorInfo", "read_header", "split_parts", "GGUF_MAGIC",
           "TYPE_NAMES", "VT", "metadata_files", "parse_kv"]

GGUF_MAGIC = b"GGUF"
#: key/value types (GGUFValueType)
VT = {"UINT8": 0, "INT8": 1, "UINT16": 2, "INT16": 3, "UINT32": 4, "INT32": 5, "FLOAT32": 6, "BOOL": 7,
      "STRING": 8, "ARRAY": 9, "UINT64": 10, "INT64": 11, "FLOAT64": 12}
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
#: ggml type -> (name, values per block, bytes per block), for the types this reader knows
TYPE_NAMES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
              7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4),
              27: ("I64", 1, 8), 28: ("F64", 1, 8), 30: ("BF16", 1, 2)}
#: types read as they are (safetensors dtype names) and the one dequantized on reading
_DENSE = {0: "F32", 1: "F16", 30: "BF16", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64"}
_MAX_COUNT = 1 << 24
_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<n>\d{5})\.gguf$")


@dataclass(frozen=True)
class KV:
    """One key/value record: its key, type, value (scalars and strings; ``None``
    for arrays) and its exact bytes in the file."""

    key: str
    type: int
    value: Any
    raw: bytes


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ne: tuple[int, ...]
    type: int
    offset: int  # from the start of the data section

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.ne))

    @property
    def nbytes(self) -> int:
        _, per, size = TYPE_NAMES[self.type]
        n = 1
        for d in self.ne:
            n *= d
        return n // per * size


@dataclass
class GGUFHeader:
    path: Path
    version: int
    kv: list[KV]
    tensors: list[TensorInfo]
    alignment: int
    data_start: int
    size: int
    kv_bytes: bytes = field(repr=False, default=b"")

    def value(self, key: str, default: Any = None) -> Any:
        for r in self.kv:
            if r.key == key:
                return r.value
        return default


class _Cursor:
    """Reads the header in order, every read checked against the file's end."""

    def __init__(self, f, path: Path, size: int) -> None:
        self.f, self.path, self.size, self.pos = f, path, size, 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise CorruptCheckpoint(f"'{self.path}' is truncated or corrupt: {what} at byte {self.pos} runs past "
                                    f"the end of the file ({self.size} bytes)")
        b = self.f.read(n)
        if len(b) != n:
            raise CorruptCheckpoint(f"'{self.path}' ended while reading {what}")
        self.pos += n
        return b

    def unpack(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> tuple[str, bytes]:
        head = self.take(8, what)
        (n,) = struct.unpack("<Q", head)
        body = self.take(n, what)
        try:
            return body.decode("utf-8"), head + body
        except UnicodeDecodeError:
            return body.decode("utf-8", "replace"), head + body

    def value(self, vtype: int, what: str) -> tuple[Any, bytes]:
        if vtype in _SCALAR:
            fmt = _SCALAR[vtype]
            b = self.take(struct.calcsize(fmt), what)
            return struct.unpack(fmt, b)[0], b
        if vtype == VT["STRING"]:
            return self.string(what)
        if vtype == VT["ARRAY"]:
            head = self.take(12, what)
            etype, n = struct.unpack("<IQ", head)
            if n > _MAX_COUNT * 16:
                raise CorruptCheckpoint(f"'{self.path}': {what} claims {n} array items")
            if etype in _SCALAR:
                return None, head + self.take(n * struct.calcsize(_SCALAR[etype]), what)
            if etype in (VT["STRING"], VT["ARRAY"]):
                parts = [head]
                for _ in range(n):
                    parts.append(self.value(etype, what)[1])
                return None, b"".join(parts)
            raise CorruptCheckpoint(f"'{self.path}': {what} has an array of unknown type {etype}")
        raise CorruptCheckpoint(f"'{self.path}': {what} has unknown value type {vtype}")


#: the last headers read, by (path, size, mtime, inode): a run reads its input's twice (tensors, key/values)
_HEADERS: dict[tuple, GGUFHeader] = {}


def read_header(path: Path) -> GGUFHeader:
    """Parse and check one GGUF file's header (no tensor data is read)."""
    try:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
        if key in _HEADERS:
            return _HEADERS[key]
        f = open(path, "rb")
    except OSError as e:
        raise InvalidStore(f"cannot read '{path}': {e.strerror}") from None
    size = st.st_size
    with f:
        c = _Cursor(f, path, size)
        magic = c.take(4, "the magic") if size >= 4 else b""
        if magic != GGUF_MAGIC:
            raise CorruptCheckpoint(f"'{path}' is not a GGUF file (its first bytes are {magic!r}, not b'GGUF')")
        version = c.unpack("<I", "the version")
        if version not in (2, 3):
            raise CorruptCheckpoint(f"'{path}' is GGUF version {version}; versions 2 and 3 are read")
        n_tensors = c.unpack("<Q", "the tensor count")
        n_kv = c.unpack("<Q", "the key/value count")
        if n_tensors > _MAX_COUNT or n_kv > _MAX_COUNT:
            raise CorruptCheckpoint(f"'{path}' claims {n_tensors} tensors and {n_kv} key/values (corrupt header)")
        kv_start = c.pos
        kv: list[KV] = []
        for i in range(n_kv):
            key, kraw = c.string(f"key/value {i}")
            vtype = c.unpack("<I", f"the type of '{key}'")
            value, vraw = c.value(vtype, f"the value of '{key}'")
            kv.append(KV(key, vtype, value, kraw + struct.pack("<I", vtype) + vraw))
        f.seek(kv_start)
        kv_bytes = f.read(c.pos - kv_start)
        f.seek(c.pos)
        keys = [r.key for r in kv]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})[0]
            raise CorruptCheckpoint(f"'{path}' has the key '{dup}' twice")
        tensors: list[TensorInfo] = []
        for i in range(n_tensors):
            name, _ = c.string(f"the name of tensor {i}")
            nd = c.unpack("<I", f"the dimensions of '{name}'")
            if not 1 <= nd <= 4:
                raise CorruptCheckpoint(f"'{path}': tensor '{name}' has {nd} dimensions (1 to 4 allowed)")
            ne = tuple(c.unpack("<Q", f"the shape of '{name}'") for _ in range(nd))
            ttype = c.unpack("<I", f"the type of '{name}'")
            off = c.unpack("<Q", f"the offset of '{name}'")
            tensors.append(TensorInfo(name, ne, ttype, off))
        header_end = c.pos
    align = 32
    for r in kv:
        if r.key == "general.alignment":
            if r.type != VT["UINT32"] or r.value == 0 or r.value & (r.value - 1):
                raise CorruptCheckpoint(f"'{path}': general.alignment must be a power of two (u32), got {r.value!r}")
            align = r.value
    data_start = -(-header_end // align) * align
    h = GGUFHeader(path, version, kv, tensors, align, data_start, size, kv_bytes)
    _check_tensors(h)
    if len(_HEADERS) > 8:
        _HEADERS.clear()
    _HEADERS[key] = h
    return h


def _check_tensors(h: GGUFHeader) -> None:
    seen: set[str] = set()
    spans = []
    for t in h.tensors:
        where = f"'{h.path}' tensor '{t.name}'"
        check_name(t.name, f"'{h.path}'")
        if t.name in seen:
            raise CorruptCheckpoint(f"'{h.path}' has tensor '{t.name}' twice")
        seen.add(t.name)
        if t.type not in TYPE_NAMES:
            raise CorruptCheckpoint(f"{where} has ggml type number {t.type}, which streamcompress cannot read "
                                    "(F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and integer tensors)")
        per = TYPE_NAMES[t.type][1]
        if t.ne[0] % per:
            raise CorruptCheckpoint(f"{where}: a row of {t.ne[0]} values is not whole blocks of {per}")
        if t.offset % h.alignment:
            raise CorruptCheckpoint(f"{where}: offset {t.offset} is not a multiple of the alignment {h.alignment}")
        end = h.data_start + t.offset + t.nbytes
        if end > h.size:
            raise CorruptCheckpoint(f"{where} runs past the end of the file ({end} > {h.size} bytes): truncated")
        spans.append((t.offset, t.offset + t.nbytes, t.name))
    spans.sort()
    for a, b in zip(spans, spans[1:]):
        if b[0] < a[1]:
            raise CorruptCheckpoint(f"'{h.path}': tensors '{a[2]}' and '{b[2]}' overlap")


def split_parts(path: Path) -> list[Path]:
    """The files of a model: ``path`` alone, or every part of a split model
    (``NAME-0000K-of-0000N.gguf``; each must exist)."""
    m = _SPLIT.match(path.name)
    if not m:
        return [path]
    n = int(m["n"])
    parts = [path.with_name(f"{m['stem']}-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise CorruptCheckpoint(f"split model '{path.name}' lacks its part '{missing[0]}'")
    return parts


class BlockSource(SafetensorsSource):
    """A tensor of a ggml block type (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1), dequantized to
    float32 as it is read (whole blocks of 32)."""

    block_multiple = 32
    reads_into = False  # (decoded as read: no raw float32 to read into a buffer or map)
    maps = False

    def __init__(self, entry: STEntry, fds: dict[Path, int], ggml_type: int) -> None:
        super().__init__(entry, fds)
        self.scheme = TYPE_NAMES[ggml_type][0].lower()
        self.block_bytes = TYPE_NAMES[ggml_type][2]
        self._raw = np.dtype(np.float32)
        self.logical_dtype = "float32"
        self.attrs = {}
        self.meta = TensorMeta(entry.name, entry.shape, "float32")

    def read_raw(self, block: Block) -> np.ndarray:
        from .blocks import dequantize_blocks

        if block.start % 32 or block.size % 32:
            raise InvalidStore(f"tensor '{self.meta.name}': {self.scheme} is read in whole blocks of 32")
        off = self.entry.begin + block.start // 32 * self.block_bytes
        want = block.size // 32 * self.block_bytes
        buf = os.pread(self._fd(), want, off)
        if len(buf) != want:
            raise CorruptCheckpoint(f"'{self.entry.path}' ended inside tensor '{self.entry.name}'")
        return dequantize_blocks(self.scheme, np.frombuffer(buf, np.uint8)).reshape(block.shape)


class GGUFFormat(Format):
    """A ``.gguf`` file, or the first part of a split model."""

    name = "gguf"

    @classmethod
    def detect(cls, path: Path) -> bool:
        if not path.is_file():
            return False
        if path.suffix == ".gguf":
            return True
        try:
            with open(path, "rb") as f:
                return f.read(4) == GGUF_MAGIC
        except OSError:
            return False

    @classmethod
    def open(cls, path: Path, missing: str = "error", unfinished_ok: bool = False) -> Checkpoint:
        parts = split_parts(path)
        headers = [read_header(p) for p in parts]
        fds: dict[Path, int] = {}
        sources: list[TensorSource] = []
        types: dict[str, str] = {}
        for h in headers:
            for t in h.tensors:
                if t.name in types:
                    raise CorruptCheckpoint(f"tensor '{t.name}' is in more than one part of '{path.name}'")
                begin = h.data_start + t.offset
                if t.type not in _DENSE:
                    e = STEntry(t.name, "F32", t.shape, begin, begin + t.nbytes, h.path)
                    sources.append(BlockSource(e, fds, t.type))
                else:
                    e = STEntry(t.name, _DENSE[t.type], t.shape, begin, begin + t.nbytes, h.path)
                    sources.append(SafetensorsSource(e, fds))
                types[t.name] = TYPE_NAMES[t.type][0]
        first = headers[0]
        info = {"source": str(path), "gguf": {"version": first.version, "alignment": first.alignment,
                                             "parts": len(parts), "tensor_types": types}}
        return Checkpoint(cls.name, sources, {"import": info})


def metadata_files(path: Path) -> dict[str, bytes]:
    """What a store keeps of a GGUF input beside its tensors (``__aux__/gguf/``):
    the first part's key/value records as they are, and how many."""
    h = read_header(split_parts(path)[0])
    head = {"version": h.version, "n_kv": len(h.kv), "alignment": h.alignment,
            "keys": [r.key for r in h.kv]}
    return {"gguf/kv.bin": h.kv_bytes, "gguf/header.json": (json.dumps(head) + "\n").encode()}


def parse_kv(raw: bytes, n: int, where: str) -> list[KV]:
    """The ``n`` key/value records of ``raw`` (bytes as :func:`metadata_files` keeps them)."""
    import io

    c = _Cursor(io.BytesIO(raw), Path(where), len(raw))
    out = []
    for i in range(n):
        start = c.pos
        key, _ = c.string(f"key/value {i}")
        vtype = c.unpack("<I", f"the type of '{key}'")
        value, _ = c.value(vtype, f"the value of '{key}'")
        out.append(KV(key, vtype, value, raw[start:c.pos]))
    if c.pos != len(raw):
        raise CorruptCheckpoint(f"'{where}' holds {len(raw) - c.pos} bytes after its {n} key/values")
    return out
