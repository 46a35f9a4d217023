"""One tensor through all stages: statistic sweeps, then the apply sweep.

The pipeline is I/O-free: the engine hands it a way to stream the tensor's
blocks (``sweep(readonly=False)`` returns a fresh iterator of ``(block, float32
array)``; ``readonly`` promises the values are only read)
and a ``write`` callback. A stage's statistic is taken on the output of the
stages before it, recomputed block by block (never a temporary full copy).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import numpy as np

from . import kernels as K
from .errors import NonFiniteError
from .layout import Block, TensorMeta
from .stages import Prune, Stage
from .stages.base import Encoding, FloatEncoding
from .stats import StageStats

__all__ = ["NONFINITE_POLICIES", "TensorPipeline", "skipped_stats"]

#: What to do with NaN/inf in a processed tensor.
NONFINITE_POLICIES = ("error", "zero", "keep")

Sweep = Callable[..., Iterable[tuple[Block, np.ndarray]]]
#: ``write(emissions, block, mask)`` with emissions ``[(suffix, region, data)]``.
Writer = Callable[[list, Block, "np.ndarray | None"], None]


def skipped_stats(stages: tuple[Stage, ...], meta: TensorMeta, nonzero: int) -> list[StageStats]:
    """Per-stage stats of a tensor that bypasses every stage (the seed's skip)."""
    nbytes = 4 * meta.size
    return [
        StageStats(
            stage_name=s.name,
            tensors_skipped=1,
            params_before=meta.size,
            nonzero_params_after=nonzero,
            memory_before_bytes=nbytes,
            memory_after_bytes=nbytes,
        )
        for s in stages
    ]


def _row(stats: tuple, n: int) -> tuple[int, float, float, float, int]:
    """A stage's ``(nonzero, sum_sq_err, max_abs_err, sum_sq_signal)`` of a block of
    ``n`` elements as plain numbers, with ``n``: one entry of a block's row."""
    nz, sse, mx, sig = stats
    return int(nz), float(sse), float(mx), float(sig), int(n)


class TensorPipeline:
    """Runs ``stages`` over one tensor.

    Parameters
    ----------
    stages : the pipeline's stages, in order
    meta : the tensor's name and shape
    blocks : the tensor's block plan (runners may depend on it)
    nonfinite : ``"error"`` (default), ``"zero"`` (NaN/inf read as 0) or ``"keep"`` (the seed's
        behaviour: NaN sorts above inf, quantizes to 0; inf poisons the scale); validated by ``EngineOptions``
    want_mask : also produce the prune mask (1 kept, 0 pruned by any prune stage)
    form : the stored form the encoding writes: ``"zarr"`` (FORMAT.md) or ``"gguf"`` (ggml blocks)
    """

    def __init__(
        self,
        stages: tuple[Stage, ...],
        meta: TensorMeta,
        blocks: list[Block],
        nonfinite: str = "error",
        want_mask: bool = False,
        states: list | None = None,
        form: str = "zarr",
    ) -> None:
        self.stages = stages
        self.meta = meta
        self.nonfinite = nonfinite
        self.want_mask = want_mask and any(isinstance(s, Prune) for s in stages)
        states = states or [None] * len(stages)
        self.runners = [s.runner(meta, blocks, st) for s, st in zip(stages, states)]
        self.global_passes = sum(st.n_passes for st in states if st is not None)
        self._stats_done = [False] * len(stages)
        #: planned sweeps found unnecessary (a selector resolved in one pass)
        self.skipped_sweeps = 0
        self._checked = False
        self.encoding: Encoding = (self.runners[-1].encoding(form) if self.runners else None) or FloatEncoding(meta)

    @property
    def n_sweeps(self) -> int:
        """Reads of the whole tensor this pipeline needs."""
        return sum(r.n_passes for r in self.runners) + self.global_passes + 1

    def _prepared(self, blocks: Iterable[tuple[Block, np.ndarray]], check: bool) -> Iterator:
        for block, x in blocks:
            if self.nonfinite == "zero":
                K.zero_nonfinite(x)
            elif check and self.nonfinite == "error":
                self._check_count(block, x, int(K.count_nonfinite(x)))
            yield block, x

    def _check_count(self, block: Block, x: np.ndarray, bad: int | None) -> None:
        if bad:
            where = f"block {block.index} (flat elements {block.start}..{block.start + x.size - 1})"
            raise NonFiniteError(self.meta.name, bad, where)

    def _begin(self, upto: int, carries: list | None) -> None:
        """Start a sweep of runners ``< upto``; a block range starts from ``carries``
        (one per runner, None where nothing is carried) instead of zero."""
        for r in self.runners[:upto]:
            r.begin_sweep()
        if carries is not None:
            for r, c in zip(self.runners[:upto], carries):
                if c is not None:
                    r.start_range(c)

    def observe_sweep(self, i: int, p: int, sweep: Sweep, carries: list | None = None) -> None:
        """One sweep (of the tensor, or a block range with ``carries``) feeding stage
        ``i``'s pass ``p`` with the output of stages before it."""
        self._begin(i + 1, carries)
        r = self.runners[i]
        # the first stage's first histogram of x's own bits counts NaN/inf for free
        free = not self._checked and self.nonfinite == "error" and i == 0 and p == 0 and r.counts_nonfinite
        # stage 0's input is the tensor itself, only read here: it may come mapped, not copied
        for block, x in self._prepared(sweep(readonly=i == 0 and self.nonfinite != "zero"),
                                       not self._checked and not free):
            for prev in self.runners[:i]:
                prev.apply(block, x, None)
            bad = r.observe(p, block, x)
            if free:
                self._check_count(block, x, bad)
        if carries is None:
            self._checked = True

    def stat_passes(self, upto: int, sweep: Sweep) -> None:
        """Run the per-tensor statistic passes of stages ``< upto`` not run yet."""
        for i in range(upto):
            if self._stats_done[i]:
                continue
            runner = self.runners[i]
            planned, p = runner.n_passes, 0
            while p < runner.n_passes:  # a runner may find after a pass that it needs no more
                self.observe_sweep(i, p, sweep)
                runner.end_pass(p)
                p += 1
            self.skipped_sweeps += planned - p
            self._stats_done[i] = True

    def global_pass(self, i: int, p: int, sweep: Sweep) -> None:
        """This tensor's share of global stage ``i``'s pass ``p`` (the engine ends the pass)."""
        self.stat_passes(i, sweep)
        self.observe_sweep(i, p, sweep)

    def run(self, sweep: Sweep, write: Writer) -> tuple[list[StageStats], list[dict[str, Any]]]:
        """Stream the tensor's remaining sweeps; return per-stage stats and infos."""
        self.stat_passes(len(self.runners), sweep)
        stats = self.fold(self.apply_sweep(sweep, write))
        return stats, [r.info() for r in self.runners]

    def apply_sweep(self, sweep: Sweep, write: Writer, carries: list | None = None) -> list[list[tuple]]:
        """The apply sweep (of the tensor, or a block range with ``carries``):
        every stage on every block, each block written. Returns each block's
        per-stage ``(nonzero, sum_sq_err, max_abs_err, sum_sq_signal, n)``."""
        self._begin(len(self.runners), carries)
        per_block = []
        spare = np.empty(0, np.float32)  # one reused buffer for each stage's input (no page faults per block)
        last = len(self.runners) - 1
        # a lone stage that measures its own work leaves x as it is (blocks may come mapped)
        # and counts NaN/inf on the way
        alone = len(self.runners) == 1 and self.runners[0].measures and self.nonfinite != "zero"
        # a prune and the quantizer storing what it leaves: one pass, x left as it is
        pair = (len(self.runners) == 2 and self.runners[0].cuts and self.runners[1].fuses_cut
                and not self.want_mask)
        checks = not self._checked and self.nonfinite == "error"
        for block, x in self._prepared(sweep(readonly=alone or (pair and self.nonfinite != "zero")),
                                       checks and not alone):
            if pair:
                ties, *stats = self.runners[1].apply_measured_cut(block, x, self.runners[0].cut_of(block, x))
                self.runners[0].cut_done(ties)
                per_block.append([_row(got, x.size) for got in stats])
                write(self.encoding.emit(block, x), block, None)
                continue
            mask = np.ones(x.size, dtype=np.uint8) if self.want_mask else None
            check = (lambda bad, b=block, v=x: self._check_count(b, v, bad)) if alone and checks else None
            row = []
            for k, r in enumerate(self.runners):
                got = r.apply_measured(block, x, mask, check) if k == last else None
                if got is None:
                    got = r.apply_with_stats(block, x, mask)
                if got is None:
                    if spare.size < x.size:
                        spare = np.empty(x.size, np.float32)
                    before = spare[: x.size]
                    np.copyto(before, x)
                    r.apply(block, x, mask)
                    got = K.diff_stats(before, x)
                row.append(_row(got, x.size))
            per_block.append(row)
            write(self.encoding.emit(block, x), block, mask)
        return per_block

    def fold(self, per_block: list[list[tuple]]) -> list[StageStats]:
        """Per-stage stats of the tensor from its blocks' (in flat order: the sums are sequential)."""
        partial = [StageStats.empty(s.name) for s in self.stages]
        for row in per_block:
            partial = [
                part.merge(StageStats(nonzero_params_after=nz, sum_sq_err=sse, max_abs_err=mx,
                                      sum_sq_signal=sig, n_compared=n))
                for part, (nz, sse, mx, sig, n) in zip(partial, row)
            ]
        nbytes = 4 * self.meta.size
        return [
            part.merge(
                StageStats(
                    stage_name=s.name,
                    tensors_processed=1,
                    params_before=self.meta.size,
                    memory_before_bytes=nbytes,
                    memory_after_bytes=s.memory_after(self.meta, nbytes),
                )
            )
            for s, part in zip(self.stages, partial)
        ]

    # -- splitting one tensor over block ranges (streamcompress.distributed) -------------
    @property
    def splittable(self) -> bool:
        """Every statistic pass can be split over block ranges and merged."""
        return all(r.splittable or r.n_passes == 0 for r in self.runners)

    def prepare_split(self) -> None:
        """Before the first range is sent: statistics that cannot be merged across ranges
        (a selector's guessed window) are not taken."""
        for r in self.runners:
            r.prepare_split()
