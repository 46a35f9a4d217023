"""The streaming engine: tensors through the pipeline with bounded memory.

Orchestration only: opens sources and sinks, plans blocks within the memory
budget, reads the next block on a background thread while the current one is
computed (read-ahead), writes on another (write-behind, one block in
flight), shows progress and folds statistics.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import shutil
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from . import kernels as K
from .config import CompressionConfig, is_embedding_layer
from .errors import ConfigError, EmptyModel, InvalidStore, ResumeMismatch
from .layout import Block, TensorMeta, output_chunks, plan_blocks
from .pipeline import NONFINITE_POLICIES, TensorPipeline, skipped_stats
from .result import CompressionResult, WeightTensor
from .safety import RUN_ATTR, aside, bad_member_name, check_apart, claim_output, put_in_place
from .safetensors_io import AUX_DIR, copy_aux, is_safetensors_input, scan_checkpoint
from .stats import StageStats
from .store import (
    CODECS,
    LOGICAL_DTYPE_ATTR,
    MASK_GROUP,
    MISSING_CHUNKS,
    TENSOR_ORDER_ATTR,
    MemorySink,
    TensorSource,
    ZarrSink,
    _digest,
    group_sources,
    open_input,
    sources_from_arrays,
    stored_nbytes,
)

__all__ = ["EngineOptions", "compress_model", "estimate_compressed_size", "load_sources", "restore", "verify"]

log = logging.getLogger("streamcompress")

#: Measured bytes of peak RSS per block element (scripts/peak_memory.py), for sizing blocks:
#: read-ahead block, working block, per-stage copy, score keys, write-behind
#: block, raw read buffer and zarr's decoded chunks.
_BYTES_PER_ELEMENT = 80


def parse_size(text: str | int) -> int:
    """``"256MB"``, ``"1GiB"``, ``"512k"`` or an int -> bytes.

    Examples
    --------
    >>> parse_size("256MB"), parse_size("1GiB"), parse_size(1000)
    (256000000, 1073741824, 1000)
    """
    if isinstance(text, int):
        return text
    s = str(text).strip().lower().replace(" ", "")
    units = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1 << 20, "mb": 10**6,
             "mib": 1 << 20, "g": 1 << 30, "gb": 10**9, "gib": 1 << 30, "t": 1 << 40, "tb": 10**12,
             "tib": 1 << 40}
    num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(num):]
    if unit not in units or not num:
        raise ConfigError(f"cannot read size '{text}' (e.g. 256MB, 1GiB)")
    return int(float(num) * units[unit])


@dataclass(frozen=True)
class EngineOptions:
    """How the engine runs (not what it computes, except ``nonfinite``).

    Parameters
    ----------
    memory_budget : bytes of working memory to aim for (blocks are sized from it)
    nonfinite : ``"error"`` or ``"zero"``
    save_masks : keep the prune mask (in memory: ``result.masks``; in a store:
        ``__masks__/<name>`` uint8 arrays)
    codec : output codec of a store, ``"zstd"`` (level 1) or ``"none"``
    progress : show a tqdm bar (bytes read, with ETA)
    prefetch : read ahead / write behind on background threads
    block_elems : override the block size in elements (tests)
    missing_chunks : a Zarr chunk with no stored object: ``"error"`` (default)
        or ``"fill"`` (read as the fill value, as zarr does: for stores written
        with ``write_empty_chunks=False``)
    """

    memory_budget: int = 256 << 20
    nonfinite: str = "error"
    save_masks: bool = False
    codec: str = "zstd"
    progress: bool = False
    prefetch: bool = True
    block_elems: int | None = None
    missing_chunks: str = "error"

    def __post_init__(self) -> None:
        object.__setattr__(self, "memory_budget", parse_size(self.memory_budget))
        if self.memory_budget < 1 << 20:
            raise ConfigError("memory_budget must be at least 1 MiB")
        if self.nonfinite not in NONFINITE_POLICIES:
            raise ConfigError(f"unknown nonfinite policy '{self.nonfinite}' "
                              f"(choose from {', '.join(NONFINITE_POLICIES)})")
        if self.missing_chunks not in MISSING_CHUNKS:
            raise ConfigError(f"unknown missing-chunks policy '{self.missing_chunks}' "
                              f"(choose from {', '.join(MISSING_CHUNKS)})")
        if self.codec not in CODECS:
            raise ConfigError(f"unknown codec '{self.codec}' (choose from {', '.join(CODECS)})")

    @property
    def max_block_elems(self) -> int:
        if self.block_elems is not None:
            return max(1, int(self.block_elems))
        return max(1, self.memory_budget // _BYTES_PER_ELEMENT)


class Interrupted(KeyboardInterrupt):
    """A stop was requested (SIGINT / SIGTERM); raised between blocks, at a safe point."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_stop: dict[str, int | None] = {"signum": None}


def request_stop(signum: int) -> None:
    """Ask a running job to stop after the block in hand (called from a signal handler)."""
    _stop["signum"] = signum


def clear_stop() -> None:
    _stop["signum"] = None


def check_stop() -> None:
    if _stop["signum"] is not None:
        raise Interrupted(_stop["signum"])


class _IO:
    """Read-ahead and write-behind threads, and a ring of reused read buffers.

    ``WRITES`` writes run at once (on as many threads: each compresses its
    chunks, so two use both cores while the main thread computes); ``write``
    first waits for the oldest when that many are in flight. A read goes to a
    ring buffer nothing else references (the block in hand, or a write in
    flight that holds the block itself, keep theirs): two buffers when writes
    take codes, up to ``WRITES + 2`` when they take the block.
    """

    #: writes in flight at once
    WRITES = 2

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.reader = ThreadPoolExecutor(1, "sc-read") if enabled else None
        self.writer = ThreadPoolExecutor(self.WRITES, "sc-write") if enabled else None
        self.pending: deque[Future] = deque()  # writes
        self.finishing: deque[Future] = deque()  # after_writes tasks
        self.ring: list[np.ndarray] = []

    def _free_buffer(self, need: int) -> np.ndarray:
        self.ring = [b for b in self.ring if b.size >= need]  # (smaller ones in use live on in their views)
        for buf in self.ring:
            if sys.getrefcount(buf) <= 3:  # the ring's, the loop's and the call's: no view of it is alive
                return buf
        buf = np.empty(need, np.float32)
        self.ring.append(buf)
        return buf

    def _reader(self, src: TensorSource, blocks: list[Block]):
        """``read(block)`` for this sweep: into the ring when the source can."""
        if not src.reads_into or not blocks:
            return src.read
        need = max(b.size for b in blocks)

        def read(b: Block) -> np.ndarray:
            return src.read_into(b, self._free_buffer(need))

        return read

    def sweep(self, src: TensorSource, blocks: list[Block], on_read):
        """A pipeline's ``sweep(readonly=False)`` over ``blocks`` of ``src``."""
        return lambda readonly=False: self.blocks(src, blocks, on_read, readonly)

    def blocks(self, src: TensorSource, blocks: list[Block], on_read, readonly: bool = False) -> Iterator:
        """``(block, flat float32)`` of each block in turn. ``readonly``: the caller
        only reads the values (a statistic sweep), so blocks the source can map
        from the page cache come mapped (no copy, no read-ahead needed)."""
        if readonly and src.maps:
            yield from self._mapped(src, blocks, on_read)
            return
        read = self._reader(src, blocks)
        if not self.enabled:
            for b in blocks:
                check_stop()
                x = read(b)
                on_read(b)
                yield b, x
            return
        fut = self.reader.submit(read, blocks[0]) if blocks else None
        try:
            for i, b in enumerate(blocks):
                check_stop()
                x = fut.result()
                fut = self.reader.submit(read, blocks[i + 1]) if i + 1 < len(blocks) else None
                on_read(b)
                yield b, x
        finally:
            if fut is not None:
                fut.cancel()
                try:
                    fut.result()
                except BaseException:  # noqa: BLE001 - the reader's error is not ours to raise
                    pass

    def _mapped(self, src: TensorSource, blocks: list[Block], on_read) -> Iterator:
        read = self._reader(src, blocks)
        for b in blocks:
            check_stop()
            x = src.map_block(b)
            if x is None:  # e.g. a block across chunks: read it (into the ring)
                x = read(b)
            on_read(b)
            yield b, x
            del x  # unmapped before the next is mapped

    def write(self, fn, *args) -> None:
        if not self.enabled:
            fn(*args)
            return
        while len(self.pending) >= self.WRITES:
            self.pending.popleft().result()
        self.pending.append(self.writer.submit(fn, *args))

    def after_writes(self, fn, *args) -> Future:
        """Run ``fn(*args)`` once every write submitted so far is done (on a writer
        thread: the caller goes on); the future holds its result, or the first
        error of those writes or of ``fn``."""
        if not self.enabled:
            self.flush()
            fut: Future = Future()
            try:
                fut.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
                fut.set_exception(e)
            return fut
        earlier = list(self.pending)
        self.pending.clear()

        def run():
            for f in earlier:  # submitted before this task: each is running or ahead in the queue
                f.result()
            return fn(*args)

        fut = self.writer.submit(run)
        self.finishing.append(fut)
        return fut

    def flush(self) -> None:
        """Wait for every write and after_writes task (raising the first error)."""
        for q in (self.pending, self.finishing):
            while q:
                q.popleft().result()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            for ex in (self.reader, self.writer):
                if ex is not None:
                    ex.shutdown(wait=True, cancel_futures=True)


class _Progress:
    def __init__(self, enabled: bool, total: int) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                            desc="compress", dynamic_ncols=True)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def on_read(self, src: TensorSource):
        """Callback counting a block of ``src`` as its stored bytes."""
        per_elem = stored_nbytes(src) / max(src.meta.size, 1)
        return lambda b: self.update(int(b.size * per_elem))

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text[-40:], refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def load_sources(tensors: Any, missing: str = "error") -> list[TensorSource]:
    """Sources from a Zarr store path, an open zarr Group, in-memory arrays, or
    already-made sources (passed through). ``missing``: see ``EngineOptions.missing_chunks``."""
    if isinstance(tensors, list) and tensors and all(isinstance(t, TensorSource) for t in tensors):
        return tensors
    if isinstance(tensors, (str, os.PathLike)):
        if is_safetensors_input(tensors):
            return scan_checkpoint(tensors)[0]  # import on the fly
        return open_input(tensors, missing)[1]
    if hasattr(tensors, "members") and hasattr(tensors, "attrs"):
        return group_sources(tensors, missing)
    return sources_from_arrays(tensors)


def _versions() -> dict[str, str]:
    import numba
    import zarr

    from . import __version__

    return {"streamcompress": __version__, "numpy": np.__version__, "numba": numba.__version__,
            "zarr": zarr.__version__, "python": platform.python_version()}


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


def _plan(src: TensorSource, stages, skipped: bool, options: EngineOptions) -> list[Block]:
    multiple = src.block_multiple
    if not skipped:
        for s in stages:
            multiple = math.lcm(multiple, s.block_multiple(src.meta))
    return plan_blocks(src.meta.shape, options.max_block_elems, src.chunks, multiple)


def _check_names(sources, pipelines) -> None:
    seen: dict[str, str] = {}
    for src, pipe in zip(sources, pipelines):
        why = bad_member_name(src.meta.name)
        if why:
            raise InvalidStore(f"tensor name {src.meta.name!r} cannot name an array in a store: {why}")
        full = tuple(max(1, d) for d in src.meta.shape)
        suffixes = [sp.suffix for sp in pipe.encoding.specs(full)] if pipe is not None else [""]
        for suf in suffixes:
            full = src.meta.name + suf
            if full in seen:
                raise InvalidStore(f"output array '{full}' of tensor '{src.meta.name}' collides with "
                                   f"tensor '{seen[full]}'")
            seen[full] = src.meta.name


def _pipeline_fingerprint(config: CompressionConfig, options: EngineOptions) -> str:
    from . import __version__

    return _digest({"pipeline": config.to_dict(), "nonfinite": options.nonfinite, "codec": options.codec,
                    "version": __version__})


def _check_resume(sink: ZarrSink, pipeline_fp: str, input_fp: str) -> None:
    rec = sink.run_record()
    if not rec or rec.get("command", "compress") != "compress":
        raise ResumeMismatch(f"cannot resume: '{sink.path}' is not a streamcompress output "
                             "(use --overwrite to replace it)")
    if rec.get("pipeline_fingerprint") != pipeline_fp:
        raise ResumeMismatch(f"cannot resume: '{sink.path}' was made with another pipeline, options or "
                             "version (use --overwrite to start again)")
    if rec.get("input_fingerprint") != input_fp:
        raise ResumeMismatch(f"cannot resume: the input changed since '{sink.path}' was started "
                             "(use --overwrite to start again)")


@dataclass
class Run:
    """Everything one compression run decided before any work: the input's
    sources, which tensors are skipped, the block plans and pipelines, the
    global stages' states and the fingerprints. Executors take it from here."""

    sources: list[TensorSource]
    config: CompressionConfig
    options: EngineOptions
    skip: list[bool]
    states: list[Any]
    plans: list[list[Block]]
    pipelines: list[TensorPipeline | None]
    input_fps: list[str]
    pipeline_fp: str
    input_fp: str

    @property
    def want_masks(self) -> bool:
        return any(p is not None and p.want_mask for p in self.pipelines)

    @property
    def total_bytes(self) -> int:
        """Bytes the whole run reads (every sweep of every tensor)."""
        return sum(self.sweeps(i) * stored_nbytes(s) for i, s in enumerate(self.sources))

    def sweeps(self, i: int) -> int:
        p = self.pipelines[i]
        return p.n_sweeps if p is not None else 1

    def pipeline(self, i: int, states: list[Any] | None = None) -> TensorPipeline | None:
        """A fresh pipeline for tensor ``i`` (a worker's own, with the states it was sent)."""
        if self.skip[i]:
            return None
        src = self.sources[i]
        return TensorPipeline(self.config.stages, src.meta, self.plans[i], self.options.nonfinite,
                              self.options.save_masks, states if states is not None else self.states)


def _prepare(sources: list[TensorSource], config: CompressionConfig, skip: list[bool],
             options: EngineOptions, input_fps: list[str] | None = None) -> Run:
    stages = config.stages
    selected = [s.meta for s, sk in zip(sources, skip) if not sk]
    states = [s.run_state(selected) for s in stages]
    plans = [_plan(src, stages, sk, options) for src, sk in zip(sources, skip)]
    run = Run(sources, config, options, skip, states, plans, [], [], _pipeline_fingerprint(config, options), "")
    run.pipelines = [run.pipeline(i) for i in range(len(sources))]
    _check_names(sources, run.pipelines)  # before fingerprinting (which stats every chunk file)
    run.input_fps = input_fps if input_fps is not None else [src.fingerprint() for src in sources]
    run.input_fp = _digest(run.input_fps)
    return run


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
    if isinstance(sink, ZarrSink):
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
    (read-ahead and write-behind on two background threads).

    An executor does three things for the engine: each global stage's pass
    over every selected tensor (``global_pass``), every tensor not kept from
    an earlier run (``tensors``, yielding ``(index, stats, info)`` in any
    order), and ``close``. See ``streamcompress.distributed.DaskExecutor``.
    """

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
        behind = None
        for i in range(len(run.sources)):
            if i in resumed:  # in model order: global stages carry state from tensor to tensor
                for state, d in zip(run.states, resumed[i]["stages"]):
                    if state is not None:
                        state.resume_tensor(d)
                continue
            stats, info = start_tensor(run, i, run.pipelines[i], sink, io, progress)
            if behind is not None:  # the previous tensor completes while this one ran
                yield behind[0], behind[1], behind[2].result()
            behind = (i, stats, info)
        if behind is not None:
            yield behind[0], behind[1], behind[2].result()

    def close(self) -> None:
        if self.io is not None:
            self.io.close()
            self.io = None


def compress_model(
    tensors: Any,
    config: CompressionConfig,
    *,
    output: str | os.PathLike | None = None,
    overwrite: bool = False,
    resume: bool = False,
    options: EngineOptions | None = None,
    executor: Any = None,
) -> CompressionResult:
    """Run ``config`` over ``tensors``, streaming block by block.

    Parameters
    ----------
    tensors : path of a Zarr v3 group, an open zarr Group, a mapping
        ``name -> array``, ``(name, array)`` pairs, or ``WeightTensor`` objects.
    config : the pipeline.
    output : path of a new Zarr group to write; ``None`` keeps results in
        memory (``result.compressed_tensors``, ``result.arrays``).
    overwrite : replace an existing ``output``.
    resume : continue an interrupted run into ``output``: tensors marked
        complete (same input tensor, same pipeline) are kept, others redone;
        a different input or pipeline is refused.
    options : engine options (memory budget, NaN policy, progress, ...).
    executor : where the work runs: ``None`` for this process
        (:class:`LocalExecutor`), or a ``streamcompress.distributed.DaskExecutor``
        for a Dask cluster. The output is the same byte for byte.

    Raises
    ------
    EmptyModel, EmptyPipeline, InvalidPercentile, PruningError
        in the seed's order, before any work or output is made.

    Examples
    --------
    >>> import numpy as np
    >>> r = compress_model({"w": np.arange(1, 5, dtype=np.float32)},
    ...                    CompressionConfig.prune_only(0.5))
    >>> r.compressed_tensors[0].data.tolist()
    [0.0, 0.0, 3.0, 4.0]
    """
    options = options or EngineOptions()
    in_paths = [tensors] if isinstance(tensors, (str, os.PathLike)) else []
    if output is not None:
        check_apart(in_paths, output)  # before anything is read or made
    sources = load_sources(tensors, options.missing_chunks)
    if not sources:
        raise EmptyModel()
    metas = [s.meta for s in sources]
    skip = config.check(metas)
    for src, sk in zip(sources, skip):
        if sk and not src.is_float:
            log.warning("tensor '%s' (%s) is not a float tensor: copied unchanged", src.meta.name,
                        src.logical_dtype)
    K.check_threading_layer()
    run = _prepare(sources, config, skip, options)
    executor = executor or LocalExecutor()
    executor.check(run, tensors, output)  # (a cluster is reached here, before the output is made)
    if output is None:
        return _compress(run, tensors, MemorySink(), executor, False)
    try:
        with claim_output(output, in_paths, command="compress", overwrite=overwrite, resume=resume) as out:
            record = {"command": "compress", "pipeline_fingerprint": run.pipeline_fp,
                      "input_fingerprint": run.input_fp, "status": "running"}
            sink = ZarrSink(out, overwrite=overwrite, codec=options.codec, resume=resume, run_record=record)
            if sink.resumed:
                _check_resume(sink, run.pipeline_fp, run.input_fp)
                sink.set_run_record(record)
            return _compress(run, tensors, sink, executor, sink.resumed, out)
    finally:
        executor.close()


def _compress(run: Run, tensors: Any, sink: MemorySink | ZarrSink, executor: Any, resuming: bool,
              output: str | os.PathLike | None = None) -> CompressionResult:
    """The body of :func:`compress_model` once the output is claimed and made."""
    sources, config, options = run.sources, run.config, run.options
    progress = _Progress(options.progress, run.total_bytes)
    done: dict[int, tuple[list[StageStats], dict[str, Any]]] = {}
    try:
        for gi, state in enumerate(run.states):
            for p in range(state.n_passes if state is not None else 0):
                executor.global_pass(run, gi, p, progress)
                state.end_pass(p)
        resumed: dict[int, dict[str, Any]] = {}
        for i, (src, pipe) in enumerate(zip(sources, run.pipelines)):
            rec = sink.completed(src.meta.name) if resuming else None
            if rec is not None and rec.get("input_fingerprint") == run.input_fps[i]:
                resumed[i] = rec
                done[i] = ([StageStats.from_dict(d) for d in rec["stages"]], rec)
                progress.update((pipe.n_sweeps if pipe else 1) * stored_nbytes(src))
                log.info("kept %s (complete in the earlier run)", src.meta.name)
        if run.want_masks and isinstance(sink, ZarrSink):
            sink.create_group(MASK_GROUP)
        for i, stats, info in executor.tensors(run, resumed, sink, progress):
            done[i] = (stats, info)
    finally:
        progress.close()
        executor.close()

    totals = [StageStats.empty(s.name) for s in config.stages]
    tensor_stats: dict[str, dict[str, Any]] = {}
    for i, src in enumerate(sources):  # folded in model order: the same sums however tensors ran
        stats, info = done[i]
        totals = [t.merge(s) for t, s in zip(totals, stats)]
        tensor_stats[src.meta.name] = info
    pipeline_fp, input_fp = run.pipeline_fp, run.input_fp
    names = [s.meta.name for s in sources]
    result = CompressionResult(
        stage_stats=totals,
        tensor_names=names,
        total_params=sum(s.meta.size for s in sources),
        total_nonzero=totals[-1].nonzero_params_after,
        tensor_stats=tensor_stats,
    )
    final_attrs: dict[str, Any] = {}
    if isinstance(sink, ZarrSink):
        result.stored_bytes = sum(t["stored_bytes"] for t in tensor_stats.values())
        if isinstance(tensors, (str, os.PathLike)):
            copy_aux(tensors, Path(output) / AUX_DIR)  # config.json, tokenizer files, ...
        # one write: the results and the run's completion together
        final_attrs[RUN_ATTR] = {"command": "compress", "pipeline_fingerprint": pipeline_fp,
                                 "input_fingerprint": input_fp, "status": "complete"}
    sink.finish({
        **final_attrs,
        TENSOR_ORDER_ATTR: names,
        "streamcompress": {
            "pipeline": config.to_dict(),
            "options": {k: v for k, v in asdict(options).items() if k in ("nonfinite", "codec")},
            "versions": _versions(),
            "input": {
                "path": str(tensors) if isinstance(tensors, (str, os.PathLike)) else None,
                "fingerprint": input_fp,
            },
            "result": result.to_dict()["summary"],
            "stages": [s.to_dict() for s in totals],
        },
    })
    if isinstance(sink, MemorySink):
        result.arrays = sink.arrays
        for n in names:
            result.compressed_tensors.append(WeightTensor(n, sink.arrays[n]))
            if f"{MASK_GROUP}/{n}" in sink.arrays:
                result.masks[n] = sink.arrays[f"{MASK_GROUP}/{n}"]
    return result


def _write_block(sink, name: str, emissions, block: Block, mask) -> None:
    for suffix, region, data in emissions:
        sink.write(name + suffix, region, data)
    if mask is not None:
        sink.write(f"{MASK_GROUP}/{name}", block.region, mask.reshape(block.shape))


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
    sources = open_input(input, options.missing_chunks)[1]
    with claim_output(output, [input], command="restore", overwrite=overwrite) as out:
        tmp = aside(out)
        try:
            names = _restore_into(sources, tmp, dtype, options, str(input))
            put_in_place(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return names


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
