"""One tensor's work (shared by every executor) and the executor that runs a whole
run in this process, tensor after tensor."""

from __future__ import annotations

import logging
import os
from collections import deque
from concurrent.futures import Future
from typing import Any

import numpy as np

from .. import kernels as K
from ..formats.base import LOGICAL_DTYPE_ATTR, MASK_GROUP, TensorSource, stored_nbytes
from ..layout import Block, output_chunks
from ..pipeline import TensorPipeline, skipped_stats
from ..stats import StageStats
from .io import _IO, _Progress
from .options import check_stop
from .plan import Run

__all__ = ["LocalExecutor", "create_outputs", "block_writer", "finish_tensor", "start_tensor", "process_tensor"]

log = logging.getLogger("streamcompress")


def _copy_skipped(src: TensorSource, blocks: list[Block], io: _IO, progress: _Progress, sink,
                  name: str) -> int:
    """Copy a skipped tensor unchanged; return its non-zero count."""
    nz = 0
    for b in blocks:
        check_stop()
        raw = np.ascontiguousarray(src.read_raw(b))
        progress.update(raw.nbytes)
        x = raw.reshape(-1) if raw.dtype == np.float32 or not src.is_float else src.read(b)
        nz += int(K.count_nonzero(x)) if x.dtype == np.float32 else int(np.count_nonzero(x))
        io.write(sink.write, name, b.region, raw.reshape(b.shape))
    return nz


def create_outputs(run: Run, i: int, pipe: TensorPipeline | None, sink) -> list[str]:
    """Create tensor ``i``'s output arrays (and mask); return the names that hold its data."""
    src = run.sources[i]
    name = src.meta.name
    chunks = output_chunks(src.meta.shape, run.plans[i], src.chunks)
    if pipe is None:
        attrs = {k: v for k, v in src.attrs.items() if k == LOGICAL_DTYPE_ATTR}
        sink.create(name, src.meta.shape, chunks, src.raw_dtype, attrs)
        return [name]
    specs = pipe.encoding.specs(chunks)
    for spec in specs:
        attrs = dict(spec.attrs)
        if spec.suffix == "":
            attrs["source_dtype"] = src.logical_dtype
        sink.create(name + spec.suffix, spec.shape, spec.chunks, spec.dtype, attrs)
    if pipe.want_mask:
        sink.create(f"{MASK_GROUP}/{name}", src.meta.shape, chunks, "uint8", {})
    return [name + spec.suffix for spec in specs]


def block_writer(sink, io: _IO, name: str):
    """The pipeline's ``write`` callback: a block's arrays (and mask), written behind."""

    def write(emissions, block, mask):
        io.write(_write_block, sink, name, emissions, block, mask)

    return write


def _write_block(sink, name: str, emissions, block: Block, mask) -> None:
    for suffix, region, data in emissions:
        sink.write(name + suffix, region, data)
    if mask is not None:
        sink.write(f"{MASK_GROUP}/{name}", block.region, mask.reshape(block.shape))


def finish_tensor(run: Run, i: int, pipe: TensorPipeline | None, sink, written: list[str],
                  stats: list[StageStats], infos: list[dict[str, Any]]) -> dict[str, Any]:
    """Record tensor ``i`` as complete (its files made durable first); return the record."""
    src = run.sources[i]
    name = src.meta.name
    info = {
        "skipped": pipe is None,
        "shape": list(src.meta.shape),
        "source_dtype": src.logical_dtype,
        "stages": [{**s.to_dict(), **inf} for s, inf in zip(stats, infos)],
    }
    if sink.persistent:
        info["stored_bytes"] = sum(sink.stored_bytes(n) for n in written)
        info["input_fingerprint"] = run.input_fps[i]
        info["pipeline_fingerprint"] = run.pipeline_fp
        masks = [f"{MASK_GROUP}/{name}"] if pipe is not None and pipe.want_mask else []
        sink.make_durable(written + masks)
    info["complete"] = True
    sink.update_attrs(name, {"streamcompress": info})
    log.debug("done %s", name)
    return info


def start_tensor(run: Run, i: int, pipe: TensorPipeline | None, sink, io: _IO,
                 progress: _Progress) -> tuple[list[StageStats], Future]:
    """Compress tensor ``i`` into ``sink``; its completion (files made durable, then
    the record) runs behind, after its writes. Returns its per-stage stats and
    the future of the info recorded on its array."""
    src, blocks, stages = run.sources[i], run.plans[i], run.config.stages
    progress.describe(src.meta.name)
    written = create_outputs(run, i, pipe, sink)

    if pipe is None:
        nz = _copy_skipped(src, blocks, io, progress, sink, src.meta.name)
        stats, infos = skipped_stats(stages, src.meta, nz), [{} for _ in stages]
    else:
        stats, infos = pipe.run(io.sweep(src, blocks, progress.on_read(src)), block_writer(sink, io, src.meta.name))
        progress.update(pipe.skipped_sweeps * stored_nbytes(src))
    return stats, io.after_writes(finish_tensor, run, i, pipe, sink, written, stats, infos)


def process_tensor(run: Run, i: int, pipe: TensorPipeline | None, sink, io: _IO,
                   progress: _Progress) -> tuple[list[StageStats], dict[str, Any]]:
    """Compress tensor ``i`` into ``sink`` and mark it complete (durable first).

    Returns its per-stage stats and the info recorded on its array.
    """
    stats, info = start_tensor(run, i, pipe, sink, io, progress)
    return stats, info.result()


class LocalExecutor:
    """Runs a :class:`Run` in this process, tensor after tensor in model order
    (read-ahead, write-behind and completion on background threads: a tensor's
    completion, made durable and then recorded, runs behind while later tensors
    are computed, up to ``BEHIND`` of them).

    An executor does three things for the engine: each global stage's pass
    over every selected tensor (``global_pass``), every tensor not kept from
    an earlier run (``tensors``, yielding ``(index, stats, info)`` in any
    order), and ``close``. See ``streamcompress.distributed.DaskExecutor``.
    """

    #: tensors whose completion (made durable, recorded) may run behind the tensor in hand
    BEHIND = 16

    def __init__(self) -> None:
        self.io: _IO | None = None

    def _io(self, run: Run) -> _IO:
        if self.io is None:
            self.io = _IO(run.options.prefetch)
        return self.io

    def check(self, run: Run, tensors: Any, output: str | os.PathLike | None) -> None:
        """Refuse what this executor cannot run (nothing, here); called before the output is made."""

    def global_pass(self, run: Run, gi: int, p: int, progress: _Progress) -> None:
        io = self._io(run)
        for src, pipe, blocks in zip(run.sources, run.pipelines, run.plans):
            if pipe is not None:
                progress.describe(f"{run.config.stages[gi].name} pass {p + 1}: {src.meta.name}")
                pipe.global_pass(gi, p, io.sweep(src, blocks, progress.on_read(src)))

    def tensors(self, run: Run, resumed: dict[int, dict[str, Any]], sink, progress: _Progress):
        io = self._io(run)
        behind: deque = deque()
        for i in range(len(run.sources)):
            if i in resumed:  # in model order: global stages carry state from tensor to tensor
                for state, d in zip(run.states, resumed[i]["stages"]):
                    if state is not None:
                        state.resume_tensor(d)
                continue
            behind.append((i, *start_tensor(run, i, run.pipelines[i], sink, io, progress)))
            while behind and (behind[0][2].done() or len(behind) > self.BEHIND):
                j, stats, info = behind.popleft()
                yield j, stats, info.result()
        while behind:
            j, stats, info = behind.popleft()
            yield j, stats, info.result()

    def close(self) -> None:
        io, self.io = self.io, None  # (once: a second close must not raise the first one's leftovers)
        if io is not None:
            io.close()
