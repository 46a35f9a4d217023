"""GGUF out: a store's tensors as one GGUF v3 file, streamed.

ggml block schemes (q8_0, q4_0, q4_1, q5_0, q5_1) become their GGML blocks from
the stored codes and scales (never quantized again); float tensors stay F32,
F16 or BF16 (or are cast to ``dtype``); integer tensors stay I8..I64. The
key/values of a GGUF input (kept in the store's ``__aux__/gguf/``) are written
as they were, in their order, with ``general.file_type`` set to what the
tensors are, ``general.quantization_version`` added when a tensor is
quantized, and the ``split.*`` keys of a split input dropped. Tensor infos
and data keep the store's tensor order, each tensor padded to the alignment
(as gguf-py and llama.cpp write them). The header is computed first (every
size is known from shapes), then tensors stream row block by row block.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ...errors import ConfigError
from ..base import AUX_DIR, ByteStreams, Checkpoint, Exporter, TensorSource, split_greedy, write_stream
from .blocks import BLOCK, BLOCK_BYTES, GGML_TYPE, ggml_rows
from .reader import GGUF_MAGIC, KV, VT, parse_kv

__all__ = ["GGUFExporter", "FILE_TYPE", "planned", "dense_kind", "source_kv", "model_kv", "header"]

#: general.file_type (LlamaFileType) of a model whose tensors are mostly of a type
FILE_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "bf16": 32}
_DENSE_TYPES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
#: dtypes written as they are stored (ggml type numbers)
_AS_STORED = {"int8": 24, "int16": 25, "int32": 26, "int64": 27, "float64": 28}
_ITEMSIZE = {"f32": 4, "f16": 2, "bf16": 2}
#: ggml's longest tensor name (GGML_MAX_NAME - 1 bytes)
_MAX_NAME = 63


def _string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _kv_u32(key: str, value: int) -> KV:
    return KV(key, VT["UINT32"], value, _string(key) + struct.pack("<II", VT["UINT32"], value))


class _Out:
    """One tensor of the file: ggml type number, ``ne``, bytes and their stream."""

    def __init__(self, name: str, ggml: int, kind: str, shape: tuple[int, ...], nbytes: int, stream) -> None:
        self.name, self.ggml, self.kind, self.shape, self.nbytes, self.stream = name, ggml, kind, shape, nbytes, stream


class GGUFExporter(Exporter):
    name = "gguf"
    single_file = True
    suffix = ".gguf"

    def write(self, ckpt: Checkpoint, dest: Path, streams: ByteStreams, *, dtype: str,
              max_shard_size: int | None) -> list[Path]:
        """One file at ``dest``; or, when ``dest`` is a directory, a split model in
        it (``model-0000i-of-0000N.gguf``, as ``gguf-split`` names and keys them)
        of parts of at most ``max_shard_size`` bytes of tensor data (a tensor
        larger than that is a part of its own)."""
        if sys.byteorder != "little":
            raise ConfigError("GGUF export needs a little-endian machine")
        outs = [self._tensor(s, dtype, streams) for s in ckpt.sources]
        kv, align = self._metadata(ckpt, outs)
        if not dest.is_dir():
            if max_shard_size is not None and sum(t.nbytes for t in outs) > max_shard_size:
                raise ConfigError(f"the model is larger than --max-shard-size ({max_shard_size} bytes): a split "
                                  "GGUF is written into a directory (give DEST without .gguf, with --format gguf)")
            _write_file(dest, kv, outs, align)
            return [dest]
        parts = split_greedy(outs, max_shard_size)
        n = len(parts)
        paths = []
        for i, part in enumerate(parts):
            split = [KV("split.no", VT["UINT16"], i, _string("split.no") + struct.pack("<IH", VT["UINT16"], i)),
                     KV("split.count", VT["UINT16"], n,
                        _string("split.count") + struct.pack("<IH", VT["UINT16"], n)),
                     KV("split.tensors.count", VT["INT32"], len(outs),
                        _string("split.tensors.count") + struct.pack("<Ii", VT["INT32"], len(outs)))]
            path = dest / f"model-{i + 1:05d}-of-{n:05d}.gguf"
            _write_file(path, (kv if i == 0 else []) + split, part, align)
            paths.append(path)
        return paths

    # -- tensors ---------------------------------------------------------------
    def _tensor(self, s: TensorSource, dtype: str, streams: ByteStreams) -> _Out:
        name, shape = s.meta.name, s.meta.shape
        if s.quantized:
            scheme = s.quantization["scheme"]
            if scheme not in BLOCK_BYTES:
                raise ConfigError(f"tensor '{name}' is {scheme}, which has no GGUF form: quantize with q8_0, q4_0, "
                                  "q4_1, q5_0 or q5_1, or export dense")
            t = planned(name, shape, scheme)
            t.stream = _blocks(s, scheme, streams.block_elems)
            return t
        kind = dense_kind(name, s.logical_dtype, s.is_float, dtype)
        t = planned(name, shape, kind)
        t.stream = streams.dense(s, None if dtype == "keep" or kind in _AS_STORED else dtype)
        return t

    # -- key/values ------------------------------------------------------------
    def _metadata(self, ckpt: Checkpoint, outs: list[_Out]) -> tuple[list[KV], int]:
        return model_kv(source_kv(ckpt.path) if ckpt.path is not None else [], outs)


def planned(name: str, shape: tuple[int, ...], kind: str) -> _Out:
    """A tensor of the file, before its bytes: ``kind`` a ggml block scheme, a
    float kind (f32, f16, bf16) or an integer dtype name; refuses what GGUF
    cannot hold (name over 63 bytes, over 4 dimensions, rows not whole blocks)."""
    if len(name.encode("utf-8")) > _MAX_NAME:
        raise ConfigError(f"tensor name '{name}' is longer than GGUF's {_MAX_NAME} bytes")
    if len(shape) > 4:
        raise ConfigError(f"tensor '{name}' has {len(shape)} dimensions; GGUF holds at most 4")
    n = 1
    for d in shape:
        n *= d
    if kind in BLOCK_BYTES:
        if len(shape) > 2 or not shape or shape[-1] % BLOCK:
            raise ConfigError(f"tensor '{name}' of shape {list(shape)} has no {kind} GGUF form: its rows must "
                              f"be whole blocks of {BLOCK} (1-D or 2-D); leave it float (--ignore, --skip-1d)")
        return _Out(name, GGML_TYPE[kind], kind, shape, n // BLOCK * BLOCK_BYTES[kind], None)
    if kind in _AS_STORED:
        return _Out(name, _AS_STORED[kind], kind, shape, n * np.dtype(kind).itemsize, None)
    return _Out(name, GGML_TYPE[kind], kind, shape, n * _ITEMSIZE[kind], None)


def dense_kind(name: str, logical_dtype: str, is_float: bool, dtype: str = "keep") -> str:
    """The GGUF kind of a dense tensor of ``logical_dtype`` (cast to ``dtype``
    unless ``keep``): integers and float64 as they are, floats f32/f16/bf16."""
    if logical_dtype in _AS_STORED or not is_float:
        if logical_dtype not in _AS_STORED:
            raise ConfigError(f"tensor '{name}' is {logical_dtype}, which GGUF does not hold")
        return logical_dtype
    kind = _DENSE_TYPES.get(logical_dtype if dtype == "keep" else dtype)
    if kind is None:
        raise ConfigError(f"tensor '{name}' is {logical_dtype}; GGUF floats are float32, float16, bfloat16 "
                          "(pass --dtype)")
    return kind


def source_kv(path: Path) -> list[KV]:
    """The key/values a model's GGUF file will carry over from ``path``: a GGUF
    input's own (first part), or those a store kept of one (``__aux__/gguf/``);
    ``split.*`` keys dropped. None for other inputs."""
    path = Path(path)
    if path.is_file():
        from .reader import read_header, split_parts

        try:
            with open(path, "rb") as f:
                if f.read(4) != GGUF_MAGIC:
                    return []
        except OSError:
            return []
        kv = read_header(split_parts(path)[0]).kv
    else:
        aux = path / AUX_DIR / "gguf"
        if not (aux / "kv.bin").is_file():
            return []
        head = json.loads((aux / "header.json").read_text())
        kv = parse_kv((aux / "kv.bin").read_bytes(), int(head["n_kv"]), str(aux / "kv.bin"))
    return [r for r in kv if not r.key.startswith("split.")]


def model_kv(kv: list[KV], outs: list[_Out]) -> tuple[list[KV], int]:
    """``kv`` with ``general.file_type`` set to what ``outs`` are, and
    ``general.quantization_version`` added when a tensor is quantized; and the
    alignment (``general.alignment``, else 32)."""
    align = 32
    for r in kv:
        if r.key == "general.alignment" and r.type == VT["UINT32"]:
            align = int(r.value)
    kv = _set(kv, _kv_u32("general.file_type", FILE_TYPE[_main_kind(outs)]))
    if any(t.kind in BLOCK_BYTES for t in outs) and not any(r.key == "general.quantization_version" for r in kv):
        kv.append(_kv_u32("general.quantization_version", 2))
    return kv, align


def header(kv: list[KV], outs: list[_Out], align: int) -> tuple[bytes, list[int]]:
    """The file's header (key/values, tensor infos, padding to ``align``) and each
    tensor's offset in the file (each padded to ``align``)."""
    infos = []
    offs = []
    off = 0
    for t in outs:
        ne = tuple(reversed(t.shape)) or (1,)
        infos.append(_string(t.name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne)
                     + struct.pack("<IQ", t.ggml, off))
        offs.append(off)
        off += -(-t.nbytes // align) * align
    head = (GGUF_MAGIC + struct.pack("<IQQ", 3, len(outs), len(kv)) + b"".join(r.raw for r in kv)
            + b"".join(infos))
    head += b"\0" * (-len(head) % align)
    return head, [len(head) + o for o in offs]


def _write_file(dest: Path, kv: list[KV], outs: list[_Out], align: int) -> None:
    """Header, then each tensor's bytes padded to ``align``."""
    head, _ = header(kv, outs, align)
    with open(dest, "wb") as f:
        f.write(head)
        for t in outs:
            write_stream(f, t.name, t.nbytes, t.stream)
            f.write(b"\0" * (-t.nbytes % align))
        f.flush()
        os.fsync(f.fileno())


def _set(kv: list[KV], new: KV) -> list[KV]:
    """``kv`` with ``new`` in the place of a record of its key (else appended)."""
    for i, r in enumerate(kv):
        if r.key == new.key:
            return kv[:i] + [new] + kv[i + 1:]
    return kv + [new]


def _main_kind(outs: list[_Out]) -> str:
    """The type of most values among the matrices (llama.cpp's file type: what the
    big tensors are); float32 when there are none."""
    count: dict[str, int] = {}
    for t in outs:
        if len(t.shape) >= 2 and t.kind in FILE_TYPE:
            n = 1
            for d in t.shape:
                n *= d
            count[t.kind] = count.get(t.kind, 0) + n
    return max(count, key=lambda k: (count[k], k)) if count else "f32"


def _blocks(s: Any, scheme: str, block_elems: int):
    """GGML blocks of a stored block-scheme tensor, a few rows at a time."""
    shape = s.meta.shape
    rows = shape[0] if len(shape) == 2 else 1
    cols = shape[-1]
    step = max(1, block_elems // max(cols, 1))
    signed_offset = {"q8_0": 0, "q4_0": 8, "q5_0": 16, "q4_1": 0, "q5_1": 0}[scheme]
    has_min = scheme in ("q4_1", "q5_1")

    def stream() -> Iterator[bytes]:
        from ...kernels import unpack_nibbles

        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            codes = s.part_rows("codes", r0, r1)
            if scheme.startswith("q4"):
                q = unpack_nibbles(codes, cols)  # (stored as nibble = q + 8 for q4_0: the unsigned code)
            else:
                q = codes.astype(np.int16) + signed_offset if signed_offset else codes
            d = s.part_rows("scale", r0, r1)
            m = s.part_rows("min", r0, r1) if has_min else None
            yield ggml_rows(scheme, q, d, m).tobytes()

    return stream
