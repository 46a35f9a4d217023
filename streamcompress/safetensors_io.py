"""Safetensors in and out, streaming (store layer).

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
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .errors import InvalidStore, StoreNotFound
from .layout import Block, TensorMeta
from .safety import bad_member_name
from .store import AUX_DIR_NAME, LOGICAL_DTYPE_ATTR, ArraySource, TensorSource

__all__ = [
    "ST_DTYPES",
    "SafetensorsSource",
    "is_safetensors_input",
    "scan_checkpoint",
    "write_safetensors",
    "st_dtype_of",
    "aux_files",
    "copy_aux",
    "AUX_DIR",
    "INDEX_NAME",
    "CorruptCheckpoint",
]

#: safetensors dtype -> (numpy dtype of the stored bytes, logical dtype)
ST_DTYPES: dict[str, tuple[str, str]] = {
    "F64": ("float64", "float64"), "F32": ("float32", "float32"), "F16": ("uint16", "float16"),
    "BF16": ("uint16", "bfloat16"), "I64": ("int64", "int64"), "I32": ("int32", "int32"),
    "I16": ("int16", "int16"), "I8": ("int8", "int8"), "U64": ("uint64", "uint64"),
    "U32": ("uint32", "uint32"), "U16": ("uint16", "uint16"), "U8": ("uint8", "uint8"),
    "BOOL": ("bool", "bool"),
}
#: the safetensors library's dtype order (files list tensors by descending rank)
_RANK = {d: i for i, d in enumerate(["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16",
                                     "I32", "U32", "F32", "F64", "I64", "U64"])}
_MAX_HEADER = 100 * 1000 * 1000
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".npz", ".gguf")
INDEX_NAME = "model.safetensors.index.json"
#: directory of a store holding the checkpoint's non-tensor files
AUX_DIR = AUX_DIR_NAME


class CorruptCheckpoint(InvalidStore):
    """A safetensors file or index that is malformed (nothing is written)."""


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

    def read_raw(self, block: Block) -> np.ndarray:
        isz = self._raw.itemsize
        off = self.entry.begin + block.start * isz
        want = block.size * isz
        buf = bytearray(want)
        view = memoryview(buf)
        got = 0
        while got < want:
            n = os.preadv(self._fd(), [view[got:]], off + got)
            if n <= 0:
                raise CorruptCheckpoint(f"'{self.entry.path}' ended inside tensor '{self.entry.name}'")
            got += n
        return np.frombuffer(buf, dtype=self._raw).reshape(block.shape)

    def stored_bytes(self) -> int:
        return self.entry.end - self.entry.begin

    def fingerprint(self) -> str:
        from .store import _digest

        st = self.entry.path.stat()
        e = self.entry
        return _digest([e.name, e.dtype, list(e.shape), e.path.name, e.begin, e.end, st.st_size, st.st_mtime_ns])


def is_safetensors_input(path: str | os.PathLike) -> bool:
    p = Path(path)
    if p.is_file():
        return p.suffix in (".safetensors", ".npz")
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
    """Validate a safetensors file, a sharded directory (index json) or an .npz,
    and return its tensors as sources (model order) and facts for attributes."""
    p = Path(src)
    if not p.exists():
        raise StoreNotFound(str(src))
    info: dict[str, Any] = {"source": str(p)}
    if p.is_file() and p.suffix == ".npz":
        try:
            npz = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CorruptCheckpoint(f"'{p}' is not a readable .npz: {e}") from None
        sources: list[TensorSource] = []
        for k in npz.files:
            check_name(k, str(p))
            sources.append(ArraySource(k, npz[k]))  # an npz member loads whole (zip)
        return sources, info
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


#: the non-tensor files of a Hugging Face checkpoint (config, tokenizer, chat
#: template, sentence-transformers modules, model card)
_AUX_NAMES = frozenset({
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "preprocessor_config.json", "processor_config.json", "chat_template.json",
    "chat_template.jinja", "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model",
    "sentencepiece.bpe.model", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
    "data_config.json", "README.md", "LICENSE", "LICENSE.txt", "NOTICE",
})
#: custom model code (``trust_remote_code``) and tiktoken vocabularies
_AUX_PREFIXES = ("modeling_", "configuration_", "tokenization_", "processing_", "image_processing_")
_AUX_MAX_BYTES = 256 << 20


def _is_aux(f: Path) -> bool:
    if f.name in _AUX_NAMES or f.suffix == ".tiktoken":
        return True
    return f.suffix == ".py" and f.name.startswith(_AUX_PREFIXES)


def aux_files(src: str | os.PathLike) -> list[tuple[str, Path]]:
    """Non-tensor files to carry along (config.json, tokenizer files, ...):
    ``(relative path, absolute path)``.

    From a checkpoint directory (or a single file's directory): the known
    Hugging Face config, tokenizer and model-code files, at the top level and
    one level down (sentence-transformers keeps ``1_Pooling/config.json``),
    never inside a Zarr store or a hidden directory, never over 256 MiB;
    nothing else there is copied. From a store: everything in its ``__aux__``.
    """
    p = Path(src)
    if p.is_file():
        p = p.parent if p.suffix == ".safetensors" else None
        if p is None:
            return []
    if (p / "zarr.json").exists():
        aux = p / AUX_DIR
        return [(str(f.relative_to(aux)), f) for f in sorted(aux.rglob("*")) if f.is_file()] if aux.is_dir() else []
    candidates = [f for f in sorted(p.iterdir()) if f.is_file()]
    for d in sorted(p.iterdir()):
        if d.is_dir() and not d.name.startswith(".") and not (d / "zarr.json").exists():
            candidates += [f for f in sorted(d.iterdir()) if f.is_file()]
    out = []
    for f in candidates:
        rel = f.relative_to(p)
        if not _is_aux(f) or f.stat().st_size > _AUX_MAX_BYTES:
            continue
        out.append((str(rel), f))
    return out


def copy_aux(src: str | os.PathLike, dest_dir: Path) -> list[str]:
    """Copy the non-tensor files of ``src`` (checkpoint dir or store) into ``dest_dir``."""
    import shutil

    copied = []
    for rel, path in aux_files(src):
        target = dest_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        copied.append(rel)
    return copied


# -- writing ---------------------------------------------------------------------
@dataclass
class OutTensor:
    """A tensor to write: safetensors dtype, shape, and a block streamer."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    stream: Callable[[], Iterable[bytes]]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(ST_DTYPES[self.dtype][0]).itemsize


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
            written = 0
            for chunk in t.stream():
                f.write(chunk)
                written += len(chunk)
            if written != t.nbytes:
                raise InvalidStore(f"tensor '{t.name}' streamed {written} bytes, expected {t.nbytes}")
        f.flush()
        os.fsync(f.fileno())
    return 8 + len(hb) + off
