"""``compress_model``: claim the output, prepare the run, hand it to an executor,
fold the statistics and write the results."""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import kernels as K
from ..config import CompressionConfig
from ..errors import ConfigError, EmptyModel, OutputExists
from ..formats import format_of_suffix
from ..formats.base import MASK_GROUP, TENSOR_ORDER_ATTR, stored_nbytes
from ..formats.memory import MemorySink
from ..formats.zarr import ZarrSink
from ..result import CompressionResult, WeightTensor
from ..safety import RUN_ATTR, check_apart, claim_output, remove_output, replaceable
from ..stats import StageStats
from .io import _Progress
from .local import LocalExecutor
from .options import EngineOptions
from .plan import Run, _check_resume, _prepare, load_sources

__all__ = ["compress_model"]

log = logging.getLogger("streamcompress")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from .._version import __version__

    def of(name: str) -> str:
        try:
            return version(name)  # (not imported for this: a GGUF run never loads zarr)
        except PackageNotFoundError:
            return "unknown"

    return {"streamcompress": __version__, "numpy": np.__version__, "numba": of("numba"), "zarr": of("zarr"),
            "python": platform.python_version()}


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
        fmt = format_of_suffix(output)
        if fmt is not None:
            return _compress_to_file(tensors, config, fmt, Path(output), overwrite, resume, options, executor)
    sources = load_sources(tensors, options.missing_chunks)
    if not sources:
        raise EmptyModel()
    skip = config.check([s.meta for s in sources])
    _warn_copied(sources, skip)
    K.check_threading_layer()
    run = _prepare(sources, config, skip, options)
    executor = executor or LocalExecutor()
    try:
        executor.check(run, tensors, output)  # (a cluster is reached here, before the output is made)
        if output is None:
            return _compress(run, tensors, MemorySink(), executor, False)
        return _claimed(run, tensors, output, in_paths, overwrite, resume, executor,
                        lambda out, record: ZarrSink(out, overwrite=overwrite, codec=options.codec, resume=resume,
                                                     run_record=record))
    finally:
        executor.close()


def _warn_copied(sources: list, skip: list[bool]) -> None:
    for src, sk in zip(sources, skip):
        if sk and not src.is_float:
            log.warning("tensor '%s' (%s) is not a float tensor: copied unchanged", src.meta.name,
                        src.logical_dtype)


def _claimed(run: Run, tensors: Any, output: str | os.PathLike, in_paths: list, overwrite: bool, resume: bool,
             executor: Any, make_sink, check_layer: bool = False) -> CompressionResult:
    """The run into ``make_sink(claimed path, run record)``, with the output held
    (``safety.claim_output``) for its whole length: a resumed sink is checked
    against this run's fingerprints first. ``check_layer``: the threading-layer
    check here, once the output is claimed (Numba loads on the CLI's thread
    meanwhile)."""
    with claim_output(output, in_paths, command="compress", overwrite=overwrite, resume=resume) as out:
        record = {"command": "compress", "pipeline_fingerprint": run.pipeline_fp,
                  "input_fingerprint": run.input_fp, "status": "running"}
        sink = make_sink(out, record)
        try:
            if check_layer:
                K.check_threading_layer()
            if sink.resumed:
                _check_resume(sink, run.pipeline_fp, run.input_fp)
                sink.set_run_record(record)
            return _compress(run, tensors, sink, executor, sink.resumed, out)
        finally:
            sink.close()


def _compress_to_file(tensors: Any, config: CompressionConfig, fmt: str, output: Path, overwrite: bool,
                      resume: bool, options: EngineOptions, executor: Any) -> CompressionResult:
    """``compress IN OUT.gguf``. 1-D tensors stay float (as llama.cpp keeps norms),
    and a scheme or shape the file cannot hold is refused before any work. In
    this process the blocks go straight into the file (``formats.gguf.GGUFSink``:
    ``resume`` continues its work file); with a cluster's executor the run
    goes into a hidden work store beside OUT (``.OUT.work.zarr``: ``resume``
    continues it), which is then exported to OUT (aside, renamed into place)
    and removed."""
    from .convert import export_checkpoint

    if output.exists() and not replaceable(output):
        raise OutputExists(str(output), ours=False)
    if output.exists() and not overwrite:
        raise OutputExists(str(output))
    if not config.skip_1d:
        config = replace(config, skip_1d=True)
    sources = load_sources(tensors, options.missing_chunks)
    if not sources:
        raise EmptyModel()
    skip = config.check([s.meta for s in sources])
    for src, skipped in zip(sources, skip):
        if not skipped:
            for stage in config.stages:
                check = getattr(stage, "check_export", None)
                if check is not None:
                    check(src.meta, fmt)
    if fmt == "gguf" and (executor is None or isinstance(executor, LocalExecutor)):
        return _compress_gguf(tensors, sources, config, skip, output, overwrite, resume, options, executor)
    work = output.parent / f".{output.name}.work.zarr"
    again = resume and work.exists()
    result = compress_model(sources if not isinstance(tensors, (str, os.PathLike)) else tensors, config,
                            output=work, overwrite=work.exists() and not again, resume=again, options=options,
                            executor=executor)
    _release_memory()  # (the export's buffers reuse what the compress let go of)
    export_checkpoint(work, output, fmt=fmt, overwrite=overwrite, options=options)
    remove_output(work)
    result.stored_bytes = output.stat().st_size
    return result


def _compress_gguf(tensors: Any, sources: list, config: CompressionConfig, skip: list[bool], output: Path,
                   overwrite: bool, resume: bool, options: EngineOptions, executor: Any) -> CompressionResult:
    """The blocks of a run written straight into their places in OUT.gguf's work file."""
    from ..formats.gguf import GGUFSink
    from ..formats.gguf.writer import dense_kind, model_kv, planned, source_kv

    in_paths = [tensors] if isinstance(tensors, (str, os.PathLike)) else []
    if options.save_masks:
        raise ConfigError("--save-masks: a GGUF file holds no prune masks; write a Zarr store for them")
    _warn_copied(sources, skip)
    run = _prepare(sources, config, skip, options, form="gguf")
    outs = []
    for src, pipe in zip(sources, run.pipelines):
        if pipe is None:
            kind = dense_kind(src.meta.name, src.logical_dtype, src.is_float)
        else:
            kind = getattr(pipe.encoding, "kind", "f32")  # (a float pipeline's output is float32)
        outs.append(planned(src.meta.name, src.meta.shape, kind))
    kv, align = model_kv(source_kv(Path(tensors)) if in_paths else [], outs)
    executor = executor or LocalExecutor()
    try:
        result = _claimed(run, tensors, output, in_paths, overwrite, resume, executor,
                          lambda out, record: GGUFSink(out, outs, kv, align, resume=resume, run_record=record),
                          check_layer=True)
    finally:
        executor.close()
    result.stored_bytes = output.stat().st_size
    return result


def _release_memory() -> None:
    """Give freed heap back to the system between two phases of one run (glibc only)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


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
        if run.want_masks and sink.persistent:
            sink.create_group(MASK_GROUP)
        for i, stats, info in executor.tensors(run, resumed, sink, progress):
            done[i] = (stats, info)
    finally:
        progress.close()
        executor.close()  # (before the results are written: a cluster is done once every tensor is)

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
    if sink.persistent:
        result.stored_bytes = sum(t["stored_bytes"] for t in tensor_stats.values())
        if isinstance(tensors, (str, os.PathLike)):
            sink.copy_aux(tensors)  # config.json, tokenizer files, ...
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
    if not sink.persistent:
        result.arrays = sink.arrays
        for n in names:
            result.compressed_tensors.append(WeightTensor(n, sink.arrays[n]))
            if f"{MASK_GROUP}/{n}" in sink.arrays:
                result.masks[n] = sink.arrays[f"{MASK_GROUP}/{n}"]
    return result
