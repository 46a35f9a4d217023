"""Mergeable statistics (monoids): per block, per tensor, per stage.

A kernel returns a block's partial; the engine folds partials block by block
into a tensor's :class:`StageStats`, and tensors into the stage's totals. The
identity is :meth:`StageStats.empty` and :meth:`StageStats.merge` is
associative, so the fold order (chunks, tensors, workers) does not change the
integer fields; the float sums are taken in a fixed order by the engine.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

__all__ = ["StageStats"]


def _f32_ratio(num: int, den: int) -> float:
    """``num as f32 / den as f32`` computed in float32, as the seed does."""
    return float(np.float32(np.float32(num) / np.float32(den)))


@dataclass(frozen=True)
class StageStats:
    """Statistics of one stage (the seed's fields, plus error statistics).

    Error statistics compare the stage's output with its input over the
    processed elements: ``sum_sq_err`` (float64), ``max_abs_err``,
    ``sum_sq_signal`` (of the input) and ``n_compared``.

    Examples
    --------
    >>> a = StageStats(stage_name="prune", tensors_processed=1, params_before=10,
    ...                nonzero_params_after=5, memory_before_bytes=40, memory_after_bytes=40)
    >>> StageStats.empty("prune").merge(a) == a
    True
    >>> round(a.sparsity(), 4)
    0.5
    """

    stage_name: str = ""
    tensors_processed: int = 0
    tensors_skipped: int = 0
    params_before: int = 0
    nonzero_params_after: int = 0
    memory_before_bytes: int = 0
    memory_after_bytes: int = 0
    sum_sq_err: float = 0.0
    max_abs_err: float = 0.0
    sum_sq_signal: float = 0.0
    n_compared: int = 0

    @classmethod
    def empty(cls, stage_name: str = "") -> StageStats:
        return cls(stage_name=stage_name)

    def merge(self, other: StageStats) -> StageStats:
        if self.stage_name and other.stage_name and self.stage_name != other.stage_name:
            raise ValueError(f"cannot merge stats of '{self.stage_name}' and '{other.stage_name}'")
        return StageStats(
            stage_name=self.stage_name or other.stage_name,
            tensors_processed=self.tensors_processed + other.tensors_processed,
            tensors_skipped=self.tensors_skipped + other.tensors_skipped,
            params_before=self.params_before + other.params_before,
            nonzero_params_after=self.nonzero_params_after + other.nonzero_params_after,
            memory_before_bytes=self.memory_before_bytes + other.memory_before_bytes,
            memory_after_bytes=self.memory_after_bytes + other.memory_after_bytes,
            sum_sq_err=self.sum_sq_err + other.sum_sq_err,
            max_abs_err=max(self.max_abs_err, other.max_abs_err),
            sum_sq_signal=self.sum_sq_signal + other.sum_sq_signal,
            n_compared=self.n_compared + other.n_compared,
        )

    # -- the seed's helpers (float32 arithmetic, as in the seed) --------------
    def compression_ratio(self) -> float:
        if self.memory_after_bytes == 0:
            return 1.0
        return _f32_ratio(self.memory_before_bytes, self.memory_after_bytes)

    def sparsity(self) -> float:
        if self.params_before == 0:
            return 0.0
        zeros = max(self.params_before - self.nonzero_params_after, 0)
        return _f32_ratio(zeros, self.params_before)

    # -- error statistics -----------------------------------------------------
    def mse(self) -> float:
        return self.sum_sq_err / self.n_compared if self.n_compared else 0.0

    def sqnr_db(self) -> float:
        """Signal-to-quantization-noise ratio in dB (inf when the stage is lossless)."""
        if self.sum_sq_err == 0.0:
            return math.inf
        if self.sum_sq_signal == 0.0:
            return -math.inf
        return 10.0 * math.log10(self.sum_sq_signal / self.sum_sq_err)

    def with_counts(self, **kw) -> StageStats:
        return replace(self, **kw)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sparsity"] = self.sparsity()
        d["compression_ratio"] = self.compression_ratio()
        d["mse"] = self.mse()
        sq = self.sqnr_db()
        d["sqnr_db"] = sq if math.isfinite(sq) else None  # JSON has no inf
        return d

    @classmethod
    def from_dict(cls, d: dict) -> StageStats:
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in fields})
