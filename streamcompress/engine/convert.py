"""``import`` (any readable checkpoint into a Zarr store) and ``export`` (a store
into another format's files, by a registered exporter), streaming, made aside
and renamed into place."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import ConfigError
from ..formats import EXPORTERS, exporter, open_checkpoint
from ..formats.base import AUX_DIR, TENSOR_ORDER_ATTR, TensorSource, stored_nbytes
from ..formats.sidecar import copy_aux
from ..formats.zarr import ZarrSink
from ..layout import Block, output_chunks, plan_blocks
from ..safety import EXPORT_MARKER, RUN_ATTR, build_aside, check_apart, claim_output, fsync, mark_file_ours
from .io import _IO, _Progress
from .options import EngineOptions, check_stop
from .tools import _to_dtype

__all__ = ["import_checkpoint", "export_checkpoint", "EXPORT_FORMATS"]

#: chunk size of imported arrays
_IMPORT_CHUNK_BYTES = 8 << 20


EXPORT_FORMATS = tuple(EXPORTERS)



def _stream_raw(src: TensorSource, blocks: list[Block], io: _IO, progress: _Progress) -> Iterator:
    for b in blocks:
        check_stop()
        raw = np.ascontiguousarray(src.read_raw(b))
        progress.update(raw.nbytes)
        yield b, raw


def import_checkpoint(
    src: str | os.PathLike,
    store: str | os.PathLike,
    *,
    overwrite: bool = False,
    options: EngineOptions | None = None,
) -> list[str]:
    """Copy a checkpoint of any readable format (a safetensors file, a sharded
    directory, an .npz, ...) into a Zarr v3 group, chunk by chunk (raw bytes:
    bf16/f16 as uint16 + ``logical_dtype``).

    Returns the tensor names (model order). Non-tensor files next to the
    checkpoint go to ``STORE/__aux__/``.
    """
    options = options or EngineOptions()
    check_apart([src], store)
    ckpt = open_checkpoint(src, options.missing_chunks)  # validates everything first
    info = ckpt.attrs.get("import") if isinstance(ckpt.attrs.get("import"), dict) else {"source": str(src)}
    with claim_output(store, [src], command="import", overwrite=overwrite) as out:
        return build_aside(out, lambda tmp: _import_into(ckpt.sources, info, src, tmp, options))


def _import_into(sources: list[TensorSource], info: dict[str, Any], src: str | os.PathLike, path: Path,
                 options: EngineOptions) -> list[str]:
    sink = ZarrSink(path, codec=options.codec, run_record={"command": "import", "status": "running"})
    io = _IO(options.prefetch)
    progress = _Progress(options.progress, sum(stored_nbytes(s) for s in sources))
    try:
        for s in sources:
            per_chunk = max(1, _IMPORT_CHUNK_BYTES // s.raw_dtype.itemsize)
            blocks = plan_blocks(s.meta.shape, min(options.max_block_elems, per_chunk))
            chunks = output_chunks(s.meta.shape, blocks, None)
            sink.create(s.meta.name, s.meta.shape, chunks, s.raw_dtype, dict(s.attrs))
            for b, raw in _stream_raw(s, blocks, io, progress):
                io.write(sink.write, s.meta.name, b.region, raw.reshape(b.shape))
            io.flush()
            sink.make_durable([s.meta.name])
    finally:
        progress.close()
        io.close()
    names = [s.meta.name for s in sources]
    copied = copy_aux(src, path / AUX_DIR)
    sink.finish({TENSOR_ORDER_ATTR: names, RUN_ATTR: {"command": "import", "status": "complete"},
                 "import": {**info, "aux_files": copied}})
    return names


def export_checkpoint(
    store: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    dtype: str = "keep",
    fmt: str = "dense",
    max_shard_size: int | None = None,
    overwrite: bool = False,
    options: EngineOptions | None = None,
) -> list[Path]:
    """Write a store into directory ``dest`` with a registered exporter (``formats.EXPORTERS``).

    ``fmt="dense"``: safetensors shards, every tensor dense (quantized ones
    dequantized), in its own dtype (``keep``; float32 for quantized) or cast to
    ``dtype``. ``fmt="compressed-tensors"``: int weights ``pack-quantized`` with a
    ``quantization_config`` in ``config.json``, the rest dense (see
    ``formats.compressed_tensors``). Non-tensor files are copied.
    """
    options = options or EngineOptions()
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format '{fmt}' (choose from {', '.join(EXPORT_FORMATS)})")
    if dtype not in ("keep", "float32", "float16", "bfloat16"):
        raise ConfigError(f"export dtype must be keep, float32, float16 or bfloat16, got '{dtype}'")
    if max_shard_size is not None and max_shard_size < 1:
        raise ConfigError("max_shard_size must be positive")
    check_apart([store], dest)
    exp = exporter(fmt)
    ckpt = open_checkpoint(store, options.missing_chunks)
    if exp.single_file and Path(dest).suffix == exp.suffix:  # (else: a directory of parts)
        return [_export_file(exp, ckpt, store, Path(dest), dtype, max_shard_size, overwrite, options)]
    if max_shard_size is None and not exp.single_file:  # (a split GGUF: one part unless a size is given)
        max_shard_size = 5 * 10**9

    def build(tmp: Path) -> list[Path]:
        tmp.mkdir()
        io = _IO(options.prefetch)
        progress = _Progress(options.progress, sum(stored_nbytes(s) for s in ckpt.sources))
        try:
            copy_aux(store, tmp, exclude=("gguf",))  # (config.json first: an exporter may add to it)
            paths = exp.write(ckpt, tmp, _Streams(options, io, progress), dtype=dtype,
                              max_shard_size=max_shard_size)
        finally:
            progress.close()
            io.close()
        (tmp / EXPORT_MARKER).write_text(json.dumps({"command": "export", "format": fmt,
                                                     "source": str(store)}) + "\n")
        for f in tmp.rglob("*"):
            fsync(f)
        return [p.relative_to(tmp) for p in paths]

    with claim_output(dest, [store], command="export", overwrite=overwrite) as out:
        return [out / p for p in build_aside(out, build)]


def _export_file(exp: Any, ckpt: Any, store: str | os.PathLike, dest: Path, dtype: str, max_shard_size: int,
                 overwrite: bool, options: EngineOptions) -> Path:
    """A one-file export (GGUF): written aside, renamed into place, then marked ours."""
    def build(tmp: Path) -> None:
        io = _IO(options.prefetch)
        progress = _Progress(options.progress, sum(stored_nbytes(s) for s in ckpt.sources))
        try:
            exp.write(ckpt, tmp, _Streams(options, io, progress), dtype=dtype, max_shard_size=max_shard_size)
        finally:
            progress.close()
            io.close()

    with claim_output(dest, [store], command="export", overwrite=overwrite) as out:
        build_aside(out, build)
        mark_file_ours(out)
        return out


class _Streams:
    """The engine's :class:`~streamcompress.formats.base.ByteStreams` for exporters."""

    def __init__(self, options: EngineOptions, io: _IO, progress: _Progress) -> None:
        self.block_elems = options.max_block_elems
        self.io, self.progress = io, progress

    def dense(self, src: TensorSource, dtype: str | None):
        def stream() -> Iterator[bytes]:
            blocks = plan_blocks(src.meta.shape, self.block_elems, src.chunks, src.block_multiple)
            if dtype is None:
                it = _stream_raw(src, blocks, self.io, self.progress)
            else:
                it = self.io.blocks(src, blocks, self.progress.on_read(src))
            for _, x in it:
                data = x if dtype is None else _to_dtype(x, dtype)
                yield np.ascontiguousarray(data).tobytes()

        return stream
