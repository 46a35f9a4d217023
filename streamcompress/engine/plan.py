"""Planning a run before any work: sources, skips, block plans, pipelines, global
states, and the fingerprints that resume checks."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import CompressionConfig
from ..errors import InvalidStore, ResumeMismatch
from ..formats import open_checkpoint
from ..formats.base import TensorSource, digest, stored_nbytes
from ..formats.memory import sources_from_arrays
from ..formats.zarr import group_sources
from ..layout import Block, plan_blocks
from ..pipeline import TensorPipeline
from ..safety import bad_member_name
from .options import EngineOptions

if TYPE_CHECKING:
    from ..formats.zarr import ZarrSink

__all__ = ["Run", "load_sources"]


def load_sources(tensors: Any, missing: str = "error") -> list[TensorSource]:
    """Sources from a checkpoint path (any registered format), an open zarr Group,
    in-memory arrays, or already-made sources (passed through). ``missing``:
    see ``EngineOptions.missing_chunks``."""
    if isinstance(tensors, list) and tensors and all(isinstance(t, TensorSource) for t in tensors):
        return tensors
    if isinstance(tensors, (str, os.PathLike)):
        return open_checkpoint(tensors, missing).sources
    if hasattr(tensors, "members") and hasattr(tensors, "attrs"):
        return group_sources(tensors, missing)
    return sources_from_arrays(tensors)


def _plan(src: TensorSource, stages, skipped: bool, options: EngineOptions) -> list[Block]:
    multiple = src.block_multiple
    most = options.max_block_elems
    if not skipped:
        for s in stages:
            multiple = math.lcm(multiple, s.block_multiple(src.meta))
            most = max(most, s.min_block(src.meta))
    return plan_blocks(src.meta.shape, most, src.chunks, multiple)


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
    from .._version import __version__

    return digest({"pipeline": config.to_dict(), "nonfinite": options.nonfinite, "codec": options.codec,
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
    #: the stored form of the outputs (``TensorPipeline``'s ``form``)
    form: str = "zarr"

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
                              self.options.save_masks, states if states is not None else self.states, self.form)


def _prepare(sources: list[TensorSource], config: CompressionConfig, skip: list[bool],
             options: EngineOptions, input_fps: list[str] | None = None, form: str = "zarr") -> Run:
    stages = config.stages
    selected = [s.meta for s, sk in zip(sources, skip) if not sk]
    states = [s.run_state(selected) for s in stages]
    plans = [_plan(src, stages, sk, options) for src, sk in zip(sources, skip)]
    run = Run(sources, config, options, skip, states, plans, [], [], _pipeline_fingerprint(config, options), "", form)
    run.pipelines = [run.pipeline(i) for i in range(len(sources))]
    _check_names(sources, run.pipelines)  # before fingerprinting (which stats every chunk file)
    run.input_fps = input_fps if input_fps is not None else [src.fingerprint() for src in sources]
    run.input_fp = digest(run.input_fps)
    return run
