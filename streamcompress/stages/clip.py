"""Clip stage: zero every |w| at or below the tensor's percentile of |w| (the seed's Clip)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .. import kernels as K
from ..errors import ConfigError, InvalidPercentile
from ..layout import Block, TensorMeta
from ._parse import parse_real
from .base import IdentityRunner, KthSelector, SelectorRunner, Stage, StageRunner

__all__ = ["Clip"]


@dataclass(frozen=True)
class Clip(Stage):
    """``idx = min(max(ceil(p*n) - 1, 0), n - 1)`` (float32 product); threshold =
    sorted(|w|)[idx]; zero every ``|w| <= threshold`` (ties over-prune)."""

    percentile: float
    name: ClassVar[str] = "clip"

    def __post_init__(self) -> None:
        object.__setattr__(self, "percentile", parse_real(self.percentile, "percentile"))

    def validate(self) -> None:
        p = np.float32(self.percentile)
        if not (p > 0.0 and p <= 1.0):
            raise InvalidPercentile(self.percentile)

    def rank(self, n: int) -> int:
        """1-based rank of the threshold among the sorted |w|."""
        v = np.float32(np.float32(self.percentile) * np.float32(n))
        idx = max(math.ceil(float(v)) - 1, 0)
        return min(idx, n - 1) + 1

    def runner(self, meta: TensorMeta, blocks: list[Block], state: Any = None) -> StageRunner:
        if meta.size == 0:
            return IdentityRunner()
        return _ClipRunner(self.rank(meta.size), meta.size)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "configuration": {"percentile": self.percentile}}

    @classmethod
    def from_configuration(cls, conf: dict[str, Any]) -> Clip:
        if "percentile" not in conf:
            raise ConfigError("clip stage needs 'percentile'")
        return cls(**conf)


class _ClipRunner(SelectorRunner):
    def __init__(self, k: int, n: int) -> None:
        self.sel = KthSelector(k, n)

    counts_nonfinite = True

    def observe(self, pass_index: int, block: Block, x: np.ndarray) -> int | None:
        return self.sel.observe(pass_index, x.view(np.uint32))

    def apply(self, block: Block, x: np.ndarray, mask: np.ndarray | None) -> None:
        K.clip_le(x.view(np.uint32), x.view(np.uint32), np.uint32(self.sel.threshold))

    def info(self) -> dict[str, Any]:
        return {"threshold_bits": self.sel.threshold}
