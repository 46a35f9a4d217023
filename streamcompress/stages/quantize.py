"""QuantizeInt8 stage: the seed's per-tensor simulated int8."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .. import kernels as K
from ..errors import ConfigError
from ..layout import Block, TensorMeta
from .base import Stage, StageRunner

__all__ = ["QuantizeInt8"]


@dataclass(frozen=True)
class QuantizeInt8(Stage):
    """Per-tensor symmetric int8, dequantized back to float32 (the seed's simulation).

    ``scale = max|w| / 127``; ``q = round_half_away_from_zero(w / scale)``
    clamped to [-127, 127]; ``w' = q * scale``. All-zero and empty tensors
    are unchanged. Theoretical size after: ``round(bytes * 0.25)``.
    """

    name: ClassVar[str] = "quantize_int8"
    size_factor: ClassVar[float] = 0.25

    def runner(self, meta: TensorMeta) -> StageRunner:
        return _QuantizeRunner()

    def memory_after(self, memory_before: int) -> int:
        v = np.float32(np.float32(memory_before) * np.float32(0.25))
        return int(np.floor(np.float64(v) + 0.5))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "configuration": {}}

    @classmethod
    def from_configuration(cls, conf: dict[str, Any]) -> QuantizeInt8:
        if conf:
            raise ConfigError(f"quantize_int8 takes no options, got {', '.join(sorted(conf))}")
        return cls()


class _QuantizeRunner(StageRunner):
    n_passes = 1

    def __init__(self) -> None:
        self.amax = np.float32(0.0)

    def observe(self, pass_index: int, block: Block, x: np.ndarray) -> None:
        m = K.absmax(x)
        if m > self.amax:
            self.amax = np.float32(m)

    @property
    def scale(self) -> np.float32:
        return np.float32(self.amax / np.float32(127.0))

    def apply(self, block: Block, x: np.ndarray, mask: np.ndarray | None) -> None:
        if self.amax == 0:
            return
        K.quantize_int8_sim(x, self.scale)

    def info(self) -> dict[str, Any]:
        return {"absmax": float(self.amax), "scale": float(self.scale)}
