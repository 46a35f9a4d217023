"""The stream tools beside compression: ``restore``, ``verify`` and the seed's
metadata-only ``estimate_compressed_size``."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import kernels as K
from ..config import CompressionConfig, is_embedding_layer
from ..errors import ConfigError, InvalidStore
from ..formats import open_checkpoint
from ..formats.base import LOGICAL_DTYPE_ATTR, TENSOR_ORDER_ATTR, TensorMeta, TensorSource, stored_nbytes
from ..formats.zarr import ZarrSink
from ..layout import output_chunks, plan_blocks
from ..safety import RUN_ATTR, build_aside, check_apart, claim_output
from ..stats import StageStats
from .io import _IO, _Progress
from .local import _copy_skipped
from .options import EngineOptions
from .plan import load_sources

__all__ = ["restore", "verify", "estimate_compressed_size", "VERIFY_EXACT"]


def estimate_compressed_size(tensors: Any, config: CompressionConfig) -> int:
    """The seed's metadata-only size estimate (bytes).

    0 for an empty model or pipeline; skipped embedding bytes unchanged; each
    stage maps the rest through ``Stage.estimate`` (x0.25 for the seed's int8,
    codes + scales for real quantization); rounded once at the end.

    Examples
    --------
    >>> import numpy as np
    >>> estimate_compressed_size({"w": np.zeros(10, np.float32)}, CompressionConfig.quantize_only())
    10
    """
    metas: list[TensorMeta] = [s.meta for s in load_sources(tensors)]
    if not metas or not config.stages:
        return 0
    emb = 0
    size = 0.0
    for m in metas:
        if config.skip_embedding_layers and is_embedding_layer(m.name):
            emb += 4 * m.size
            continue
        t = float(4 * m.size)
        for s in config.stages:
            t = s.estimate(m, t)
        size += t
    return emb + int(np.floor(size + 0.5))


def _to_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        import ml_dtypes

        return x.astype(ml_dtypes.bfloat16).view(np.uint16)
    return x.astype(dtype, copy=False)


def restore(
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    dtype: str = "float32",
    overwrite: bool = False,
    options: EngineOptions | None = None,
) -> list[str]:
    """Write every tensor of ``input`` back as dense ``dtype`` (float32, float16
    or bfloat16 as raw uint16 bits), dequantizing quantized tensors, streaming.

    Returns the tensor names.
    """
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ConfigError(f"restore dtype must be float32, float16 or bfloat16, got '{dtype}'")
    options = options or EngineOptions()
    check_apart([input], output)
    sources = open_checkpoint(input, options.missing_chunks).sources
    with claim_output(output, [input], command="restore", overwrite=overwrite) as out:
        return build_aside(out, lambda tmp: _restore_into(sources, tmp, dtype, options, str(input)))


def _restore_into(sources: list[TensorSource], path: Path, dtype: str, options: EngineOptions,
                  origin: str) -> list[str]:
    sink = ZarrSink(path, codec=options.codec, run_record={"command": "restore", "status": "running"})
    io = _IO(options.prefetch)
    progress = _Progress(options.progress, sum(stored_nbytes(s) for s in sources))
    stored = "uint16" if dtype == "bfloat16" else dtype
    try:
        for src in sources:
            blocks = plan_blocks(src.meta.shape, options.max_block_elems, src.chunks, src.block_multiple)
            chunks = output_chunks(src.meta.shape, blocks, src.chunks)
            if not src.is_float:  # integer / bool tensors: copied unchanged
                sink.create(src.meta.name, src.meta.shape, chunks, src.raw_dtype, dict(src.attrs))
                _copy_skipped(src, blocks, io, progress, sink, src.meta.name)
            else:
                attrs = {LOGICAL_DTYPE_ATTR: "bfloat16"} if dtype == "bfloat16" else {}
                sink.create(src.meta.name, src.meta.shape, chunks, stored, attrs)
                for b, x in io.blocks(src, blocks, progress.on_read(src)):
                    io.write(sink.write, src.meta.name, b.region, _to_dtype(x, dtype).reshape(b.shape))
            io.flush()
            sink.make_durable([src.meta.name])
    finally:
        progress.close()
        io.close()
    names = [s.meta.name for s in sources]
    sink.finish({TENSOR_ORDER_ATTR: names, RUN_ATTR: {"command": "restore", "status": "complete"},
                 "streamcompress": {"restored_from": origin, "dtype": dtype}})
    return names


#: ``stage_name`` of verify's rows for integer / bool tensors (compared exactly, not in the total)
VERIFY_EXACT = "verify_exact"


def verify(
    reference: str | os.PathLike, candidate: str | os.PathLike, options: EngineOptions | None = None
) -> dict[str, StageStats]:
    """Error statistics of ``candidate`` against ``reference``, tensor by tensor,
    streaming both (quantized tensors are dequantized on the fly; either may be
    a Zarr store or a safetensors checkpoint; integer tensors compare exactly).

    Returns ``{name: StageStats}`` (``sum_sq_err``, ``max_abs_err``,
    ``sum_sq_signal``, ``n_compared``, ``nonzero_params_after`` of the candidate)
    plus the total over the float tensors under the key ``""``. Integer and
    bool tensors (copied, never compressed) have ``stage_name`` ``VERIFY_EXACT``
    and stay out of the total.
    """
    options = options or EngineOptions()
    ref = {s.meta.name: s for s in load_sources(reference, options.missing_chunks)}
    cand = {s.meta.name: s for s in load_sources(candidate, options.missing_chunks)}
    if sorted(ref) != sorted(cand):
        missing = sorted(set(ref) ^ set(cand))
        raise InvalidStore(f"the stores hold different tensors: {', '.join(missing[:5])}")
    out: dict[str, StageStats] = {}
    total = StageStats.empty("verify")
    for name, a in ref.items():
        b = cand[name]
        if a.meta.shape != b.meta.shape:
            raise InvalidStore(f"tensor '{name}' has shape {a.meta.shape} vs {b.meta.shape}")
        exact = not (a.is_float and b.is_float)  # integer tensors: compared as float64
        blocks = plan_blocks(a.meta.shape, options.max_block_elems, a.chunks,
                             math.lcm(a.block_multiple, b.block_multiple))
        st = StageStats.empty("verify")
        for blk in blocks:
            if exact:
                x = np.asarray(a.read_raw(blk), np.float64).reshape(-1)
                y = np.asarray(b.read_raw(blk), np.float64).reshape(-1)
            else:
                x, y = a.read(blk), b.read(blk)
            nz, sse, mx, sig = K.diff_stats(x, y)
            st = st.merge(StageStats(nonzero_params_after=int(nz), sum_sq_err=float(sse),
                                     max_abs_err=float(mx), sum_sq_signal=float(sig),
                                     n_compared=int(x.size), params_before=int(x.size)))
        if exact:  # copied, not compressed: compared exactly, kept out of the float totals
            out[name] = st.with_counts(stage_name=VERIFY_EXACT, tensors_skipped=1)
            continue
        out[name] = st.with_counts(stage_name="verify", tensors_processed=1)
        total = total.merge(out[name])
    out[""] = total
    return out
