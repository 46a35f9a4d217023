"""Import safetensors / .npz checkpoints into Zarr, export Zarr to safetensors.

Orchestration only (like the engine): validation happens before anything is
written, tensors stream block by block, outputs appear atomically (written
to a temporary name, renamed at the end).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .engine import _IO, EngineOptions, _Progress, _to_dtype, check_stop
from .errors import ConfigError
from .layout import Block, output_chunks, plan_blocks
from .safetensors_io import (
    AUX_DIR,
    INDEX_NAME,
    OutTensor,
    copy_aux,
    scan_checkpoint,
    st_dtype_of,
    write_safetensors,
)
from .safety import EXPORT_MARKER, RUN_ATTR, aside, check_apart, claim_output, put_in_place
from .store import (
    TENSOR_ORDER_ATTR,
    QuantizedSource,
    TensorSource,
    ZarrSink,
    _fsync,
    open_input,
    read_region,
    stored_nbytes,
)

__all__ = ["import_checkpoint", "export_checkpoint", "EXPORT_FORMATS"]

#: chunk size of imported arrays
_IMPORT_CHUNK_BYTES = 8 << 20
EXPORT_FORMATS = ("dense", "compressed-tensors")


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
    """Copy a safetensors file, a sharded directory or an .npz into a Zarr v3
    group, chunk by chunk (raw bytes: bf16/f16 as uint16 + ``logical_dtype``).

    Returns the tensor names (model order). Non-tensor files next to the
    checkpoint go to ``STORE/__aux__/``.
    """
    options = options or EngineOptions()
    check_apart([src], store)
    sources, info = scan_checkpoint(src)  # validates everything first
    with claim_output(store, [src], command="import", overwrite=overwrite) as out:
        tmp = aside(out)
        try:
            names = _import_into(sources, info, src, tmp, options)
            put_in_place(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return names


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


# -- export ---------------------------------------------------------------------
def _block_bytes(src: TensorSource, dtype: str | None, options: EngineOptions, io: _IO,
                 progress: _Progress):
    """Streamer of ``src`` as bytes: raw stored bytes (``dtype`` None) or cast floats."""

    def stream() -> Iterator[bytes]:
        blocks = plan_blocks(src.meta.shape, options.max_block_elems, src.chunks, src.block_multiple)
        it = io.blocks(src, blocks, progress.on_read(src)) if dtype else _stream_raw(src, blocks, io, progress)
        for _, x in it:
            data = x if dtype is None else _to_dtype(x, dtype)
            yield np.ascontiguousarray(data).tobytes()

    return stream


def _array_bytes(arr: Any, tensor: str, options: EngineOptions):
    """Streamer of a stored Zarr array's raw bytes (codes, scales)."""

    def stream() -> Iterator[bytes]:
        shape = tuple(arr.shape)
        if not shape:
            yield np.ascontiguousarray(read_region(arr, (), tensor, "", options.missing_chunks)).tobytes()
            return
        for b in plan_blocks(shape, options.max_block_elems, tuple(arr.chunks)):
            data = read_region(arr, b.region, tensor, f"block {b.index}", options.missing_chunks)
            yield np.ascontiguousarray(data).tobytes()

    return stream


def _st_dtype_for(src: TensorSource, dtype: str) -> tuple[str, str | None]:
    """(safetensors dtype, cast dtype or None for raw bytes) of a dense tensor."""
    if not src.is_float:
        return st_dtype_of(src.logical_dtype), None
    if dtype == "keep":
        if isinstance(src, QuantizedSource):
            return "F32", "float32"
        return st_dtype_of(src.logical_dtype), None
    return st_dtype_of(dtype), dtype


def _ct_scheme(q: dict[str, Any]) -> dict[str, Any]:
    return {"num_bits": 8, "type": "int", "symmetric": bool(q["symmetric"]), "strategy": q["granularity"],
            "group_size": q["group_size"], "dynamic": False, "observer": "minmax", "block_structure": None,
            "actorder": None}


def export_checkpoint(
    store: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    dtype: str = "keep",
    fmt: str = "dense",
    max_shard_size: int = 5 * 10**9,
    overwrite: bool = False,
    options: EngineOptions | None = None,
) -> list[Path]:
    """Write a store as safetensors shards (+ index json) into directory ``dest``.

    ``fmt="dense"``: every tensor dense (quantized ones dequantized), in its own
    dtype (``keep``; float32 for quantized) or cast to ``dtype``.
    ``fmt="compressed-tensors"``: int8 tensors as ``W`` (I8), ``W_scale``,
    ``W_zero_point`` and a ``quantization_config`` (``format: int-quantized``)
    in ``config.json``; the rest dense. Non-tensor files are copied.
    """
    options = options or EngineOptions()
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format '{fmt}' (choose from {', '.join(EXPORT_FORMATS)})")
    if dtype not in ("keep", "float32", "float16", "bfloat16"):
        raise ConfigError(f"export dtype must be keep, float32, float16 or bfloat16, got '{dtype}'")
    if max_shard_size < 1:
        raise ConfigError("max_shard_size must be positive")
    check_apart([store], dest)
    group, sources = open_input(store, options.missing_chunks)
    with claim_output(dest, [store], command="export", overwrite=overwrite) as out:
        return _export_into(group, sources, store, out, fmt, dtype, max_shard_size, options)


def _export_into(group: Any, sources: list[TensorSource], store: str | os.PathLike, dest: Path, fmt: str,
                 dtype: str, max_shard_size: int, options: EngineOptions) -> list[Path]:
    io = _IO(options.prefetch)
    progress = _Progress(options.progress, sum(stored_nbytes(s) for s in sources))
    out: list[OutTensor] = []
    groups: dict[str, dict[str, Any]] = {}
    ignore: list[str] = []
    for s in sources:
        name = s.meta.name
        if fmt == "compressed-tensors" and isinstance(s, QuantizedSource):
            q = s.q
            if q["bits"] != 8:
                raise ConfigError(f"compressed-tensors int-quantized export needs 8-bit schemes; '{name}' "
                                  f"is {q['scheme']} (export it dense, or quantize with int8)")
            if not name.endswith(".weight"):
                raise ConfigError(f"compressed-tensors names quantized weights '<module>.weight'; got '{name}'")
            out.append(OutTensor(name, "I8", tuple(s.codes.shape), _array_bytes(s.codes, name, options)))
            sdt = "F16" if q["scale_dtype"] == "float16" else "F32"
            out.append(OutTensor(name + "_scale", sdt, tuple(s.scale.shape), _array_bytes(s.scale, name, options)))
            if s.zero_point is not None:
                out.append(OutTensor(name + "_zero_point", "I8", tuple(s.zero_point.shape),
                                     _array_bytes(s.zero_point, name, options)))
            key = json.dumps(_ct_scheme(q), sort_keys=True)
            groups.setdefault(key, {"targets": [], "weights": _ct_scheme(q)})
            groups[key]["targets"].append("re:^" + re.escape(name[: -len(".weight")]) + "$")
            continue
        st, cast = _st_dtype_for(s, dtype)
        out.append(OutTensor(name, st, s.meta.shape, _block_bytes(s, cast, options, io, progress)))
        if fmt == "compressed-tensors" and name.endswith(".weight") and s.meta.ndim == 2:
            ignore.append(name[: -len(".weight")])

    # shards: greedy in model order
    shards: list[list[OutTensor]] = [[]]
    size = 0
    for t in out:
        if shards[-1] and size + t.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    imported = group.attrs.get("import", {}) if hasattr(group, "attrs") else {}
    st_meta = imported.get("safetensors_metadata") if n == 1 else {"format": "pt"}

    tmp = aside(dest)
    tmp.mkdir()
    try:
        paths = []
        for fname, shard in zip(names, shards):
            write_safetensors(tmp / fname, shard, st_meta)
            paths.append(dest / fname)
        if n > 1:
            index_meta = {"total_size": sum(t.nbytes for t in out)}
            wm = {t.name: fname for fname, shard in zip(names, shards) for t in shard}
            (tmp / INDEX_NAME).write_text(json.dumps({"metadata": index_meta,
                                                      "weight_map": dict(sorted(wm.items()))}, indent=2) + "\n")
        copy_aux(store, tmp)
        if fmt == "compressed-tensors":
            cfg_path = tmp / "config.json"
            cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
            cfg["quantization_config"] = {
                "quant_method": "compressed-tensors",
                "format": "int-quantized",
                "quantization_status": "compressed",
                "config_groups": {f"group_{i}": {**g, "input_activations": None, "output_activations": None}
                                  for i, g in enumerate(groups.values())},
                "ignore": ignore,
            }
            cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
        (tmp / EXPORT_MARKER).write_text(json.dumps({"command": "export", "format": fmt, "source": str(store)}) + "\n")
        for f in tmp.iterdir():
            _fsync(f)
        put_in_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        progress.close()
        io.close()
    return paths

