"""The stage contract.

A *stage* is a frozen, validated config object (``Prune``, ``QuantizeInt8``,
``Clip``). For each tensor it makes a *runner*, which the engine drives:

1. ``n_passes`` statistic sweeps: for each block in flat order,
   ``observe(pass_index, block, x)`` with ``x`` the output of the previous
   stages (recomputed on the fly), then ``end_pass(pass_index)``;
2. one final sweep where ``apply(block, x, mask)`` transforms ``x`` in place.

``begin_sweep()`` is called before every sweep, so runners with state carried
from block to block (the prune tie counter) restart it. Runners never do I/O.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from ..kernels import hist16, locate_kth
from ..layout import Block, TensorMeta

__all__ = ["Stage", "StageRunner", "KthSelector", "IdentityRunner", "f32_floor_product"]


def f32_floor_product(fraction: float, count: int) -> int:
    """``floor(fraction as f32 * count as f32)`` as the seed computes it (saturating at 0)."""
    v = np.float32(np.float32(fraction) * np.float32(count))
    return int(np.floor(v)) if v > 0 else 0


class StageRunner(ABC):
    """Per-tensor state machine of one stage (see module docstring)."""

    n_passes: int = 0

    def begin_sweep(self) -> None:  # noqa: B027 - optional hook
        """Reset state carried from block to block within one sweep."""

    def observe(self, pass_index: int, block: Block, x: np.ndarray) -> None:  # noqa: B027
        """Accumulate a statistic of stage input ``x`` (pass ``pass_index``)."""

    def end_pass(self, pass_index: int) -> None:  # noqa: B027
        """Derive what the next pass (or the apply sweep) needs."""

    @abstractmethod
    def apply(self, block: Block, x: np.ndarray, mask: np.ndarray | None) -> None:
        """Transform ``x`` in place; clear ``mask`` (uint8) where elements are pruned."""

    def info(self) -> dict[str, Any]:
        """Per-tensor facts for the report (threshold, scale, ...)."""
        return {}


class IdentityRunner(StageRunner):
    """A runner that changes nothing (e.g. prune with k = 0, all-zero tensor)."""

    def __init__(self, **info: Any) -> None:
        self._info = info

    def apply(self, block: Block, x: np.ndarray, mask: np.ndarray | None) -> None:
        return None

    def info(self) -> dict[str, Any]:
        return dict(self._info)


class KthSelector:
    """Finds the exact k-th smallest key (1-based) in two histogram passes.

    After both passes: ``threshold`` holds the key bits, ``below`` the count of
    keys strictly smaller and ``ties`` the count equal to it.
    """

    n_passes = 2

    def __init__(self, k: int) -> None:
        self.k = int(k)
        self._hist = np.zeros(1 << 16, dtype=np.int64)
        self._high = -1
        self._below_high = 0
        self.threshold: int | None = None
        self.below = 0
        self.ties = 0

    def observe(self, pass_index: int, keys: np.ndarray) -> None:
        if pass_index == 0:
            self._hist += hist16(keys)
        else:
            self._hist += hist16(keys, self._high)

    def end_pass(self, pass_index: int) -> None:
        if pass_index == 0:
            self._high, self._below_high = locate_kth(self._hist, self.k)
        else:
            low, below_low = locate_kth(self._hist, self.k - self._below_high)
            self.threshold = (self._high << 16) | low
            self.below = self._below_high + below_low
            self.ties = int(self._hist[low])
        self._hist[:] = 0


class Stage(ABC):
    """A pipeline stage: a frozen config that makes per-tensor runners."""

    name: ClassVar[str]

    def validate(self) -> None:  # noqa: B027 - stages without range checks
        """Raise the seed's range error for this stage, if any."""

    def check_tensor(self, meta: TensorMeta) -> None:  # noqa: B027
        """Raise the seed's per-tensor error for ``meta``, if any."""

    @abstractmethod
    def runner(self, meta: TensorMeta) -> StageRunner:
        """A fresh runner for one tensor (cheap: big buffers come with the passes)."""

    def memory_after(self, memory_before: int) -> int:
        """The seed's theoretical bytes after this stage."""
        return memory_before

    #: Multiplier of ``estimate_compressed_size`` (the seed's metadata-only estimate).
    size_factor: ClassVar[float] = 1.0

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., "configuration": {...}}``."""
