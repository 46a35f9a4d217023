"""The stage contract.

A *stage* is a frozen, validated config object (``Prune``, ``QuantizeInt8``,
``Clip``). For each tensor it makes a *runner*, which the engine drives:

1. ``n_passes`` statistic sweeps: for each block in flat order,
   ``observe(pass_index, block, x)`` with ``x`` the output of the previous
   stages (recomputed on the fly), then ``end_pass(pass_index)``;
2. one final sweep where ``apply(block, x, mask)`` transforms ``x`` in place.

Runners are made with the tensor's block plan, so a stage can tell whether its
units (groups, channels) lie inside single blocks and need no statistic pass.
The stored form of the output is an :class:`Encoding`: float32 by default, or
codes + scales when the last stage is a real quantizer.

``begin_sweep()`` is called before every sweep, so runners with state carried
from block to block (the prune tie counter) restart it. Runners never do I/O.
"""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np

from .. import kernels as K
from ..layout import Block, TensorMeta

__all__ = ["Stage", "StageRunner", "SelectorRunner", "GlobalState", "KthSelector", "IdentityRunner",
           "f32_floor_product", "merge_with", "ArraySpec", "Encoding", "FloatEncoding", "ThresholdCut"]


def f32_floor_product(fraction: float, count: int) -> int:
    """``floor(fraction as f32 * count as f32)`` as the seed computes it (saturating at 0)."""
    v = np.float32(np.float32(fraction) * np.float32(count))
    return int(np.floor(v)) if v > 0 else 0


def merge_with(op: Callable[[Any, Any], Any]) -> staticmethod:
    """A ``merge_partials`` from a combining ``op``: the monoid whose identity is None
    (a copy that observed nothing)."""

    def merge(a: Any, b: Any) -> Any:
        return a if b is None else b if a is None else op(a, b)

    return staticmethod(merge)


@dataclass(frozen=True)
class ArraySpec:
    """One stored array of a tensor's output: ``name + suffix``."""

    suffix: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ThresholdCut:
    """A block's prune as ``kernels.cut_plan`` describes it, not yet made: the
    elements whose key (``keys & 0x7fffffff``) is below ``lim`` are zeroed, or,
    with ``offsets``, those below ``thr`` and the first ``ties_left`` equal to it."""

    keys: np.ndarray
    lim: np.uint32
    thr: np.uint32
    offsets: np.ndarray
    ties_left: int


class Encoding(ABC):
    """How a tensor's output is stored (arrays, and what each block writes)."""

    @abstractmethod
    def specs(self, out_chunks: tuple[int, ...]) -> list[ArraySpec]:
        """The arrays to create, given the chunks the block plan writes whole."""

    @abstractmethod
    def emit(self, block: Block, x: np.ndarray) -> list[tuple[str, tuple, np.ndarray]]:
        """``(suffix, region, data)`` to write for ``block`` (after every stage ran)."""


class FloatEncoding(Encoding):
    """float32 values, same shape and chunks as the tensor."""

    def __init__(self, meta: TensorMeta) -> None:
        self.meta = meta

    def specs(self, out_chunks: tuple[int, ...]) -> list[ArraySpec]:
        return [ArraySpec("", self.meta.shape, out_chunks, "float32")]

    def emit(self, block: Block, x: np.ndarray) -> list[tuple[str, tuple, np.ndarray]]:
        return [("", block.region, x.reshape(block.shape))]


class StageRunner(ABC):
    """Per-tensor state machine of one stage (see module docstring)."""

    n_passes: int = 0

    def begin_sweep(self) -> None:  # noqa: B027 - optional hook
        """Reset state carried from block to block within one sweep."""

    def observe(self, pass_index: int, block: Block, x: np.ndarray) -> int | None:  # noqa: B027
        """Accumulate a statistic of stage input ``x`` (pass ``pass_index``).

        May return the number of NaN/inf in ``x`` when it costs nothing (a
        histogram of ``x``'s own bits); runners that do say ``counts_nonfinite``.
        """

    #: ``observe`` in pass 0 returns the count of NaN/inf in ``x``
    counts_nonfinite: bool = False

    def end_pass(self, pass_index: int) -> None:  # noqa: B027
        """Derive what the next pass (or the apply sweep) needs."""

    @abstractmethod
    def apply(self, block: Block, x: np.ndarray, mask: np.ndarray | None) -> None:
        """Transform ``x`` in place; clear ``mask`` (uint8) where elements are pruned."""

    def info(self) -> dict[str, Any]:
        """Per-tensor facts for the report (threshold, scale, ...)."""
        return {}

    #: ``apply_measured`` does the work (and leaves ``x`` as it was)
    measures: bool = False

    def apply_measured(self, block: Block, x: np.ndarray, mask: np.ndarray | None, check=None) -> tuple | None:
        """The last stage's apply and its block stats in one: ``(nonzero, sum_sq_err,
        max_abs_err, sum_sq_signal)`` as ``kernels.diff_stats(x before, x after)``
        gives them, ``x`` left as it was (nothing reads it after the last stage
        of a stored encoding); None when this runner does not (the pipeline
        then copies, applies and compares). ``check``: when given, called with
        the block's count of NaN/inf before any other error is raised (the
        pipeline's own check of the block is then left to this)."""
        return None

    def apply_with_stats(self, block: Block, x: np.ndarray, mask: np.ndarray | None) -> tuple | None:
        """``apply`` (``x`` changed as it changes it) and the block's stats in one:
        ``(nonzero, sum_sq_err, max_abs_err, sum_sq_signal)`` as
        ``kernels.diff_stats(x before, x after)`` gives them; None when this
        runner does not (nothing done: the pipeline copies, applies and compares)."""
        return None

    # -- a cut and the quantizer after it in one pass (pipeline.apply_sweep) ----------
    #: ``cut_of`` describes this runner's apply (a threshold cut) without making it
    cuts: bool = False

    def cut_of(self, block: Block, x: np.ndarray) -> ThresholdCut:
        """This block's cut, not made (``x`` left as it is); :meth:`cut_done` follows."""
        raise NotImplementedError

    def cut_done(self, ties: int) -> None:  # noqa: B027
        """The cut of the block :meth:`cut_of` described was made by another runner,
        and its block held ``ties`` keys equal to the threshold."""

    #: ``apply_measured_cut`` stores what it leaves of a ``ThresholdCut`` in one pass
    fuses_cut: bool = False

    def apply_measured_cut(self, block: Block, x: np.ndarray, cut: ThresholdCut) -> tuple:
        """``apply_measured`` of ``x`` after ``cut`` (the previous runner's), ``x``
        left as it was: ``(ties in the block, the cut's stats, this runner's stats)``."""
        raise NotImplementedError

    def encoding(self, form: str = "zarr") -> Encoding | None:
        """The stored form when this runner is the pipeline's last (None: float32).
        ``form``: ``"zarr"`` (FORMAT.md's arrays) or ``"gguf"`` (ggml blocks)."""
        return None

    # -- one tensor split over block ranges (streamcompress.distributed) -----------------
    # Each range's copy of the runner observes its blocks and returns
    # ``take_partial``; partials merge with ``merge_partials`` (a monoid, None
    # the identity) and the sum goes to the tensor's runner (``add_partial``)
    # before ``end_pass``. State carried from block to block in the apply sweep
    # (prune's tie count) starts each range at ``start_range(carried)``, where
    # ``carried`` sums ``range_carry`` of the earlier ranges' last partials.

    #: the statistic passes can be split over block ranges
    splittable: bool = False

    def prepare_split(self) -> None:  # noqa: B027
        """Take no statistic that cannot be merged across ranges."""

    def take_partial(self, pass_index: int) -> Any:
        raise NotImplementedError

    def add_partial(self, pass_index: int, partial: Any) -> None:
        raise NotImplementedError

    merge_partials = merge_with(operator.add)

    def range_carry(self, partial: Any) -> int | None:
        """After the last pass: what a range (given its last partial) adds to the
        count carried through the apply sweep (None: nothing is carried)."""
        return None

    def start_range(self, carried: Any) -> None:  # noqa: B027
        """Start the carried count of a range (after ``begin_sweep``)."""

    def merge_infos(self, infos: list[dict[str, Any]]) -> dict[str, Any]:
        """One tensor's ``info`` from its ranges' (in order)."""
        return infos[-1]


class IdentityRunner(StageRunner):
    """A runner that changes nothing (e.g. prune with k = 0, all-zero tensor)."""

    def __init__(self, **info: Any) -> None:
        self._info = info

    def apply(self, block: Block, x: np.ndarray, mask: np.ndarray | None) -> None:
        return None

    def info(self) -> dict[str, Any]:
        return dict(self._info)


#: high-16-bit bin of +inf: keys (``bits & 0x7fffffff``) from here up are inf or NaN
NONFINITE_BIN = 0x7F80
#: high-16-bit bins of keys (``bits & 0x7fffffff``)
KEY_BINS = 0x8000


class KthSelector:
    """Finds the exact k-th smallest key (1-based) in two histogram passes, or one.

    The two passes: pass 1 histograms the high 16 bits; pass 2 the low 16 bits
    of the keys in the chosen high bin. When ``n`` (the number of keys) is
    given, a first pass tries to do it in one read: it guesses the chosen bin
    from a sample of the first block (every ``SAMPLE``-th key, the block's own
    quantile at the same rank), and counts the keys below a band of bins
    around the guess (``WINDOW`` on each side) and the low bits of those in it
    (``kernels.BandHistogram``: keys outside the band are only compared). When
    the k-th key is in the band, the band's row of its bin *is* pass 2's
    histogram and ``n_passes`` drops to 1 after ``end_pass(0)``; otherwise
    the two passes follow (three in all). The result is the same either way.

    After the last pass: ``threshold`` holds the key bits, ``below`` the count
    of keys strictly smaller and ``ties`` the count equal to it.
    """

    #: high bins kept on each side of the guessed one
    WINDOW = 4
    #: one key in this many of the first block makes the guess (all of a smaller block)
    SAMPLE = 31

    def __init__(self, k: int, n: int | None = None) -> None:
        self.k = int(k)
        self.n = n
        self._one = False  # resolved by the band in one pass
        self._hist: np.ndarray | None = None  # allocated on first use
        self._band = None  # a BandHistogram while the first pass keeps one
        self._high = -1
        self._below_high = 0
        self.threshold: int | None = None
        self.below = 0
        self.ties = 0

    @property
    def n_passes(self) -> int:
        """Passes planned: 1 once the band held the k-th key, 3 with a band, else 2."""
        return 1 if self._one else 3 if self.n else 2

    def _plain(self, pass_index: int) -> int:
        """Which of the two passes ``pass_index`` is (a band's pass comes first)."""
        return pass_index - 1 if self.n else pass_index

    def _band_for(self, keys: np.ndarray) -> K.BandHistogram:
        """The band around the k-th key's bin as guessed from ``keys`` (the first block)."""
        sample = keys if keys.size <= self.SAMPLE * 4096 else np.ascontiguousarray(keys[::self.SAMPLE])
        rank = min(max(1, -(-self.k * sample.size // self.n)), sample.size)
        guess = K.locate_kth(K.hist16(sample), rank)[0]
        lo = min(max(0, guess - self.WINDOW), KEY_BINS - 2 * self.WINDOW - 1)
        return K.BandHistogram(lo, 2 * self.WINDOW + 1)

    def observe(self, pass_index: int, keys: np.ndarray) -> int | None:
        """Add ``keys`` to the pass's histogram. In the first pass, returns how many
        keys are inf or NaN bits (high bins from 0x7f80): free from the histogram."""
        if self.n and pass_index == 0:
            if self._band is None:
                if not keys.size:
                    return 0
                self._band = self._band_for(keys)
            return self._band.add(keys)
        if self._plain(pass_index) == 0:
            h = K.hist16(keys)
            self._add(h)
            return int(h[NONFINITE_BIN:].sum())
        self._add(K.hist16(keys, self._high))
        return None

    def _add(self, h: np.ndarray) -> None:
        if self._hist is None:
            self._hist = np.zeros(1 << 16, dtype=np.int64)
        self._hist += h

    def take_partial(self) -> np.ndarray | None:
        """This copy's histogram of the pass so far (None: nothing observed), then reset.

        Partials of disjoint parts of the data add up to the whole histogram
        (:meth:`add_partial`), so a pass can be split over processes (only
        selectors made without ``n``: a band is a copy's own guess).
        """
        if self._band is not None:
            raise RuntimeError("a selector's band cannot be split over ranges (make it without n)")
        h, self._hist = self._hist, None
        return h

    def add_partial(self, hist: np.ndarray | None) -> None:
        if hist is None:
            return
        if self._hist is None:
            self._hist = np.array(hist, dtype=np.int64)
        else:
            self._hist += hist

    def ties_in(self, partial: np.ndarray | None) -> int:
        """Once the threshold is known: the ties in the part of the data whose last-pass
        histogram is ``partial`` (that pass bins the low bits of keys sharing the
        threshold's high bits, so its bin at the threshold counts them)."""
        return 0 if partial is None else int(partial[self.threshold & 0xFFFF])

    def end_pass(self, pass_index: int) -> None:
        if self.n and pass_index == 0:
            band, self._band = self._band, None
            if band is not None:
                win = band.window()
                cum = np.cumsum(win.sum(axis=1))
                kk = self.k - band.below()
                if 1 <= kk <= int(cum[-1]):  # the k-th key is in the band: its row is pass 2's histogram
                    j = int(np.searchsorted(cum, kk, side="left"))
                    self._high = band.lo_bin + j
                    self._below_high = band.below() + (int(cum[j - 1]) if j else 0)
                    self._hist = win[j]
                    self._one = True
                    self._resolve()
            return
        if self._hist is None:
            self._hist = np.zeros(1 << 16, dtype=np.int64)
        if self._plain(pass_index) == 0:
            self._high, self._below_high = K.locate_kth(self._hist, self.k)
            self._hist = None  # the next pass starts from zero
        else:
            self._resolve()

    def _resolve(self) -> None:
        """The threshold from the chosen high bin's low-bit histogram (``self._hist``)."""
        low, below_low = K.locate_kth(self._hist, self.k - self._below_high)
        self.threshold = (self._high << 16) | low
        self.below = self._below_high + below_low
        self.ties = int(self._hist[low])
        self._hist = None  # 512 KiB per selector: free it once the threshold is known


class SelectorRunner(StageRunner):
    """A runner whose statistic is one :class:`KthSelector` (``self.sel``)."""

    splittable = True
    sel: KthSelector

    @property
    def n_passes(self) -> int:
        return self.sel.n_passes

    def end_pass(self, pass_index: int) -> None:
        self.sel.end_pass(pass_index)

    def prepare_split(self) -> None:
        self.sel.n = None  # a guessed band is a range's own: always take the two passes

    def take_partial(self, pass_index: int) -> Any:
        return self.sel.take_partial()

    def add_partial(self, pass_index: int, partial: Any) -> None:
        self.sel.add_partial(partial)


class GlobalState:
    """Cross-tensor statistic of one run (e.g. global pruning's histograms)."""

    n_passes: int = 0

    def end_pass(self, pass_index: int) -> None:
        """Derive what the next pass (or the apply sweeps) need."""

    def resume_tensor(self, info: dict[str, Any]) -> None:
        """A tensor finished by an earlier run is skipped: carry its recorded ``info`` on."""

    # -- splitting the passes over processes (streamcompress.distributed) ---------------
    # A worker gets a copy of the state, observes some tensors, and returns
    # ``take_partial()``; the partials are merged with ``merge_partials`` (a
    # monoid: associative, with None as the identity) and the sum is given to
    # the run's state with ``add_partial`` before ``end_pass``.

    def take_partial(self) -> Any:
        """What this copy accumulated in the current pass (then reset)."""
        return None

    def add_partial(self, partial: Any) -> None:
        """Fold a merged partial of the current pass into this state."""

    merge_partials = merge_with(operator.add)

    def tensor_carry(self, partial: Any) -> int:
        """After the last pass: what one tensor (given its last-pass partial) adds
        to the count carried from tensor to tensor in model order (e.g. ties)."""
        return 0

    def start_tensor(self, carried: int) -> None:
        """Set the carried count to its value before a tensor (the sum over earlier tensors)."""


class Stage(ABC):
    """A pipeline stage: a frozen config that makes per-tensor runners."""

    name: ClassVar[str]

    def validate(self) -> None:  # noqa: B027 - stages without range checks
        """Raise the seed's range error for this stage, if any."""

    def check_tensor(self, meta: TensorMeta) -> None:  # noqa: B027
        """Raise the seed's per-tensor error for ``meta``, if any."""

    @abstractmethod
    def runner(self, meta: TensorMeta, blocks: list[Block], state: Any = None) -> StageRunner:
        """A fresh runner for one tensor (cheap: big buffers come with the passes).

        ``state`` is this run's :meth:`run_state` (global stages only).
        """

    def run_state(self, metas: list[TensorMeta]) -> GlobalState | None:
        """Shared state of one run for a stage whose statistic spans all tensors.

        The engine sweeps every selected tensor ``n_passes`` times through the
        per-tensor runners' ``observe``, calling ``end_pass`` in between, before
        the per-tensor work. ``None`` (default): the stage is per tensor.
        """
        return None

    def memory_after(self, meta: TensorMeta, memory_before: int) -> int:
        """Theoretical bytes after this stage (the seed's ``memory_after_bytes``)."""
        return memory_before

    def estimate(self, meta: TensorMeta, size: float) -> float:
        """Metadata-only size after this stage (the seed's ``estimate_compressed_size``)."""
        return size * self.size_factor

    #: Multiplier of the seed's estimate for stages whose size is a fixed fraction.
    size_factor: ClassVar[float] = 1.0

    def block_multiple(self, meta: TensorMeta) -> int:
        """Blocks that split the last axis must split it at multiples of this."""
        return 1

    def min_block(self, meta: TensorMeta) -> int:
        """Elements a block must be able to hold (a unit this stage needs whole in one block)."""
        return 1

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., "configuration": {...}}``."""
