"""Prune stage: the seed's ``PruningConfig`` with L1 / L2 / Taylor / Random
metrics and unstructured / row / column granularity, streamed exactly."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from enum import Enum
from typing import Any, ClassVar

import numpy as np

from .. import kernels as K
from ..errors import (
    BelowMinNonzero,
    ConfigError,
    EmptyTensor,
    InvalidSparsity,
    NotTwoDimensional,
)
from ..layout import Block, TensorMeta
from ._parse import parse_count, parse_enum, parse_real
from .base import (GlobalState, IdentityRunner, KthSelector, SelectorRunner, Stage, StageRunner, ThresholdCut,
                   f32_floor_product)

__all__ = ["Metric", "Granularity", "PruningConfig", "Prune", "PruneNM"]


class Metric(str, Enum):
    """Importance metric (the seed's ``ImportanceMetric``)."""

    L1 = "l1"
    L2 = "l2"
    TAYLOR = "taylor"
    RANDOM = "random"


class Granularity(str, Enum):
    """Pruning granularity (the seed's ``PruningGranularity``)."""

    UNSTRUCTURED = "unstructured"
    ROWS = "rows"
    COLUMNS = "columns"


@dataclass(frozen=True)
class PruningConfig:
    """The seed's ``PruningConfig``.

    ``sparsity`` is kept as given and used as float32, like the seed. Its
    range is checked when the pipeline runs (seed order: ``EmptyModel`` and
    ``EmptyPipeline`` come first), or early by ``CompressionConfig.validate``.

    Examples
    --------
    >>> PruningConfig(0.5).metric
    <Metric.L1: 'l1'>
    >>> PruningConfig(0.5, metric="random", seed=7).seed
    7
    """

    sparsity: float
    metric: Metric = Metric.L1
    granularity: Granularity = Granularity.UNSTRUCTURED
    min_nonzero: int = 1
    seed: int = 0
    #: ``"tensor"`` (the seed) or ``"global"``: one threshold over all selected tensors
    scope: str = "tensor"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sparsity", parse_real(self.sparsity, "sparsity"))
        object.__setattr__(self, "metric", parse_enum(Metric, self.metric, "metric"))
        object.__setattr__(
            self, "granularity", parse_enum(Granularity, self.granularity, "granularity")
        )
        object.__setattr__(self, "min_nonzero", parse_count(self.min_nonzero, "min_nonzero"))
        object.__setattr__(self, "seed", parse_count(self.seed, "seed", 1 << 64))
        if self.scope not in ("tensor", "global"):
            raise ConfigError(f"pruning scope must be 'tensor' or 'global', got '{self.scope}'")
        if self.scope == "global" and self.granularity is not Granularity.UNSTRUCTURED:
            raise ConfigError("global pruning is unstructured")

    @classmethod
    def unstructured_l1(cls, sparsity: float) -> PruningConfig:
        return cls(sparsity)

    @classmethod
    def structured_row_l2(cls, sparsity: float) -> PruningConfig:
        return cls(sparsity, Metric.L2, Granularity.ROWS)

    def validate(self) -> None:
        s = np.float32(self.sparsity)
        if not (0.0 <= s < 1.0):
            raise InvalidSparsity(self.sparsity)


@dataclass(frozen=True)
class Prune(Stage):
    """Prune stage (the seed's ``CompressionStage::Prune``)."""

    config: PruningConfig
    name: ClassVar[str] = "prune"

    def __post_init__(self) -> None:
        if not isinstance(self.config, PruningConfig):
            raise ConfigError(f"Prune needs a PruningConfig, got {self.config!r}")

    def validate(self) -> None:
        self.config.validate()

    def check_tensor(self, meta: TensorMeta) -> None:
        """The seed's per-tensor checks, in the seed's order."""
        cfg = self.config
        cfg.validate()
        if cfg.scope == "global":
            return  # empty tensors just contribute nothing; min_nonzero is model-wide
        n = meta.size
        if n == 0:
            raise EmptyTensor(meta.name)
        if cfg.granularity is not Granularity.UNSTRUCTURED and meta.ndim != 2:
            raise NotTwoDimensional(meta.shape, meta.name)
        if cfg.min_nonzero > n:
            raise BelowMinNonzero(cfg.min_nonzero, n, meta.name)

    def prune_count(self, meta: TensorMeta) -> tuple[int, int]:
        """``(k, units)``: how many units (elements, rows or columns) are pruned."""
        cfg = self.config
        if cfg.granularity is Granularity.UNSTRUCTURED:
            units, unit_size = meta.size, 1
        elif cfg.granularity is Granularity.ROWS:
            units, unit_size = meta.shape[0], meta.shape[1]
        else:
            units, unit_size = meta.shape[1], meta.shape[0]
        k = f32_floor_product(cfg.sparsity, units)
        cap = max(units - math.ceil(cfg.min_nonzero / unit_size), 0)
        return min(k, cap), units

    def run_state(self, metas: list[TensorMeta]) -> _GlobalPruneState | None:
        if self.config.scope != "global":
            return None
        return _GlobalPruneState(self.config, metas)

    def runner(self, meta: TensorMeta, blocks: list[Block], state: Any = None) -> StageRunner:
        self.check_tensor(meta)
        if state is not None:
            return _GlobalRunner(self.config, state)
        k, units = self.prune_count(meta)
        if k == 0:
            return IdentityRunner(pruned_units=0, units=units)
        if self.config.granularity is Granularity.UNSTRUCTURED:
            return _UnstructuredRunner(self.config, k, meta.size)
        return _StructuredRunner(self.config, meta, k, units)

    def to_dict(self) -> dict[str, Any]:
        c = self.config
        return {
            "name": self.name,
            "configuration": {
                "sparsity": c.sparsity,
                "metric": c.metric.value,
                "granularity": c.granularity.value,
                "min_nonzero": c.min_nonzero,
                "seed": c.seed,
                **({"scope": c.scope} if c.scope != "tensor" else {}),
            },
        }

    @classmethod
    def from_configuration(cls, conf: dict[str, Any]) -> Prune:
        conf = dict(conf)
        if "sparsity" not in conf:
            raise ConfigError("prune stage needs 'sparsity'")
        return cls(PruningConfig(**conf))


def score_keys(metric: Metric, seed: int, block: Block, x: np.ndarray) -> np.ndarray:
    """uint32 keys whose order is the score order (``|x|`` bits need no copy)."""
    if metric is Metric.L1:
        return x.view(np.uint32)
    if metric is Metric.RANDOM:
        return K.random_scores(block.start, x.size, seed).view(np.uint32)
    return K.square(x).view(np.uint32)


def _threshold_cut(keys: np.ndarray, sel: KthSelector, k: int, ties_seen: int) -> ThresholdCut:
    """The cut of a block at ``sel``'s threshold, ``ties_seen`` ties of the sweep before it."""
    ties_left = k - sel.below - ties_seen
    lim, offsets, _ = K.cut_plan(keys, sel.threshold, ties_left, k - sel.below >= sel.ties)
    return ThresholdCut(keys, lim, np.uint32(sel.threshold), offsets, ties_left)


def _prune_block(x, keys, threshold, ties_left, local, want_mask, all_ties, measured):
    """``(ties in the block, its stats or None)``: ``kernels.prune_threshold`` on
    ``x``, with the stats from the same pass when ``measured``."""
    args = (keys, np.uint32(threshold), ties_left, local, want_mask)
    if measured:
        return K.prune_threshold_measured(x, *args, all_ties=all_ties)
    return K.prune_threshold(x.view(np.uint32), *args, all_ties=all_ties), None


class _UnstructuredRunner(SelectorRunner):
    def __init__(self, cfg: PruningConfig, k: int, n: int) -> None:
        self.cfg = cfg
        self.k = k
        self.sel = KthSelector(k, n)
        self.ties_seen = 0
        self._empty_mask = np.zeros(0, dtype=np.uint8)

    def observe(self, pass_index: int, block: Block, x: np.ndarray) -> int | None:
        return self.sel.observe(pass_index, score_keys(self.cfg.metric, self.cfg.seed, block, x))

    @property
    def counts_nonfinite(self) -> bool:
        return self.cfg.metric is Metric.L1  # the keys are x's own bits

    def begin_sweep(self) -> None:
        self.ties_seen = 0

    def range_carry(self, partial: np.ndarray | None) -> int:
        return self.sel.ties_in(partial)

    def start_range(self, carried: int) -> None:
        self.ties_seen = int(carried)

    def apply(self, block: Block, x: np.ndarray, mask: np.ndarray | None) -> None:
        self._cut(block, x, mask, measured=False)

    def apply_with_stats(self, block: Block, x: np.ndarray, mask: np.ndarray | None) -> tuple:
        return self._cut(block, x, mask, measured=True)

    def _cut(self, block: Block, x: np.ndarray, mask: np.ndarray | None, measured: bool) -> tuple | None:
        keys = score_keys(self.cfg.metric, self.cfg.seed, block, x)
        ties_left = self.k - self.sel.below - self.ties_seen
        local = np.ones(x.size, dtype=np.uint8) if mask is not None else self._empty_mask
        ties, stats = _prune_block(x, keys, self.sel.threshold, ties_left, local, mask is not None,
                                   self.k - self.sel.below >= self.sel.ties, measured)
        self.ties_seen += ties
        if mask is not None:
            mask &= local
        return stats

    cuts = True

    def cut_of(self, block: Block, x: np.ndarray) -> ThresholdCut:
        return _threshold_cut(score_keys(self.cfg.metric, self.cfg.seed, block, x), self.sel, self.k, self.ties_seen)

    def cut_done(self, ties: int) -> None:
        self.ties_seen += ties

    def info(self) -> dict[str, Any]:
        return {"pruned_units": self.k, "threshold_bits": self.sel.threshold}


class _GlobalPruneState(GlobalState):
    """k = floor(s * total) over all selected tensors (exact decimal product),
    capped at total - min_nonzero; ties: earlier tensor, then lower flat index."""

    def __init__(self, cfg: PruningConfig, metas: list[TensorMeta]) -> None:
        total = sum(m.size for m in metas)
        if cfg.min_nonzero > total:
            raise BelowMinNonzero(cfg.min_nonzero, total, "all selected tensors")
        k = math.floor(Fraction(repr(float(cfg.sparsity))) * total)
        self.total = total
        self.k = min(k, total - cfg.min_nonzero)
        self.sel = KthSelector(self.k) if self.k else None
        self.n_passes = 2 if self.k else 0
        self.ready = self.k == 0
        self.ties_seen = 0

    def end_pass(self, pass_index: int) -> None:
        self.sel.end_pass(pass_index)
        self.ready = pass_index == 1

    def resume_tensor(self, info: dict[str, Any]) -> None:
        if "ties_end" in info:
            self.ties_seen = int(info["ties_end"])

    def take_partial(self) -> np.ndarray | None:
        return self.sel.take_partial() if self.sel is not None else None

    def add_partial(self, partial: np.ndarray | None) -> None:
        if self.sel is not None:
            self.sel.add_partial(partial)

    def tensor_carry(self, partial: np.ndarray | None) -> int:
        return self.sel.ties_in(partial) if self.sel is not None else 0

    def start_tensor(self, carried: int) -> None:
        self.ties_seen = int(carried)


class _GlobalRunner(StageRunner):
    n_passes = 0  # the statistic is the run's (see _GlobalPruneState)

    def __init__(self, cfg: PruningConfig, state: _GlobalPruneState) -> None:
        self.cfg = cfg
        self.st = state
        self.base: int | None = None
        self.local = 0

    def observe(self, pass_index: int, block: Block, x: np.ndarray) -> int | None:
        return self.st.sel.observe(pass_index, score_keys(self.cfg.metric, self.cfg.seed, block, x))

    @property
    def counts_nonfinite(self) -> bool:
        return self.cfg.metric is Metric.L1

    def begin_sweep(self) -> None:
        # Tensors are swept in model order and each finishes before the next
        # starts, so the run's tie count when this tensor is first swept after
        # the threshold is known is the number of ties in earlier tensors.
        if self.st.ready and self.base is None:
            self.base = self.st.ties_seen
        self.local = 0

    def start_range(self, carried: int) -> None:
        # a block range of a split tensor: the ties of every earlier tensor and range
        self.base = int(carried)
        self.local = 0

    def take_partial(self, pass_index: int) -> Any:
        return self.st.take_partial()

    def apply(self, block: Block, x: np.ndarray, mask: np.ndarray | None) -> None:
        self._cut(block, x, mask, measured=False)

    def apply_with_stats(self, block: Block, x: np.ndarray, mask: np.ndarray | None) -> tuple | None:
        return self._cut(block, x, mask, measured=True)

    def _cut(self, block: Block, x: np.ndarray, mask: np.ndarray | None, measured: bool) -> tuple | None:
        if self.st.k == 0:
            return None
        keys = score_keys(self.cfg.metric, self.cfg.seed, block, x)
        ties_left = self.st.k - self.st.sel.below - self.base - self.local
        local = np.ones(x.size, dtype=np.uint8) if mask is not None else np.zeros(0, np.uint8)
        ties, stats = _prune_block(x, keys, self.st.sel.threshold, ties_left, local, mask is not None,
                                   self.st.k - self.st.sel.below >= self.st.sel.ties, measured)
        self.local += ties
        self.st.ties_seen = self.base + self.local
        if mask is not None:
            mask &= local
        return stats

    @property
    def cuts(self) -> bool:
        return self.st.k > 0

    def cut_of(self, block: Block, x: np.ndarray) -> ThresholdCut:
        keys = score_keys(self.cfg.metric, self.cfg.seed, block, x)
        return _threshold_cut(keys, self.st.sel, self.st.k, self.base + self.local)

    def cut_done(self, ties: int) -> None:
        self.local += ties
        self.st.ties_seen = self.base + self.local

    def info(self) -> dict[str, Any]:
        return {"scope": "global", "model_pruned": self.st.k,
                "threshold_bits": self.st.sel.threshold if self.st.sel else None,
                "ties_end": (self.base or 0) + self.local}


class _StructuredRunner(StageRunner):
    def __init__(self, cfg: PruningConfig, meta: TensorMeta, k: int, units: int) -> None:
        self.cfg = cfg
        self.k = k
        self.units = units
        self.ncols = meta.shape[1]
        self.by_rows = cfg.granularity is Granularity.ROWS
        self.pruned = np.zeros(units, dtype=np.uint8)
        self._acc: np.ndarray | None = None
        if cfg.metric is Metric.RANDOM:
            self.n_passes = 0
            self._select(K.random_unit_scores(units, cfg.seed))
        else:
            self.n_passes = 1

    def _select(self, scores: np.ndarray) -> None:
        order = np.argsort(scores, kind="stable")
        self.pruned[order[: self.k]] = 1

    def observe(self, pass_index: int, block: Block, x: np.ndarray) -> None:
        if self._acc is None:
            self._acc = np.zeros(self.units, dtype=np.float32)
        squared = self.cfg.metric is not Metric.L1
        fn = K.accumulate_row_scores if self.by_rows else K.accumulate_col_scores
        fn(x, block.start, self.ncols, self._acc, squared)

    def end_pass(self, pass_index: int) -> None:
        scores = self._acc if self._acc is not None else np.zeros(self.units, np.float32)
        if self.cfg.metric is not Metric.L1:
            scores = np.sqrt(scores, dtype=np.float32)
        self._select(scores)
        self._acc = None

    def apply(self, block: Block, x: np.ndarray, mask: np.ndarray | None) -> None:
        local = np.ones(x.size, dtype=np.uint8) if mask is not None else np.zeros(0, np.uint8)
        K.apply_unit_mask(
            x, block.start, self.ncols, self.pruned, self.by_rows, local, mask is not None
        )
        if mask is not None:
            mask &= local

    def info(self) -> dict[str, Any]:
        return {"pruned_units": self.k, "units": self.units}


@dataclass(frozen=True)
class PruneNM(Stage):
    """N:M semi-structured pruning along the last axis (2:4 by default).

    In every run of ``m`` consecutive elements of a row, the ``m - n`` lowest
    scores are zeroed (ties: lower index first), so each group keeps at most
    ``n`` non-zeros. The last axis must be a multiple of ``m``.
    """

    n: int = 2
    m: int = 4
    metric: Metric = Metric.L1
    name: ClassVar[str] = "prune_nm"

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", parse_count(self.n, "n"))
        object.__setattr__(self, "m", parse_count(self.m, "m"))
        if not (0 < self.m <= 64) or self.n > self.m:
            raise ConfigError(f"N:M needs 0 <= N <= M <= 64, got {self.n}:{self.m}")
        metric = parse_enum(Metric, self.metric, "metric")
        if metric is Metric.RANDOM:
            raise ConfigError("N:M pruning supports the l1, l2 and taylor metrics")
        object.__setattr__(self, "metric", metric)

    def check_tensor(self, meta: TensorMeta) -> None:
        if meta.size == 0:
            raise EmptyTensor(meta.name)
        last = meta.shape[-1] if meta.shape else 1
        if last % self.m:
            raise ConfigError(f"{self.n}:{self.m} pruning needs the last axis of '{meta.name}' "
                              f"(size {last}) to be a multiple of {self.m}; --ignore it or pick another M")

    def block_multiple(self, meta: TensorMeta) -> int:
        return self.m

    def runner(self, meta: TensorMeta, blocks: list[Block], state: Any = None) -> StageRunner:
        self.check_tensor(meta)
        return _NMRunner(self)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "configuration": {"n": self.n, "m": self.m, "metric": self.metric.value}}

    @classmethod
    def from_configuration(cls, conf: dict[str, Any]) -> PruneNM:
        return cls(**conf)


class _NMRunner(StageRunner):
    def __init__(self, stage: PruneNM) -> None:
        self.st = stage

    def apply(self, block: Block, x: np.ndarray, mask: np.ndarray | None) -> None:
        local = np.ones(x.size, dtype=np.uint8) if mask is not None else np.zeros(0, np.uint8)
        K.prune_n_m(x, self.st.n, self.st.m, self.st.metric is not Metric.L1, local, mask is not None)
        if mask is not None:
            mask &= local

    def info(self) -> dict[str, Any]:
        return {"pattern": f"{self.st.n}:{self.st.m}"}
