"""``CompressionResult`` and the seed's summary text."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .stats import StageStats, _f32_ratio

__all__ = ["WeightTensor", "CompressionResult"]


@dataclass
class WeightTensor:
    """A named tensor (the seed's ``WeightTensor``)."""

    name: str
    data: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


@dataclass
class CompressionResult:
    """Outcome of a run: per-stage totals, per-tensor details and, for
    in-memory runs, the compressed tensors (and masks when asked).

    Totals come from the streamed statistics, so a store run needs no tensor
    in memory to report them.
    """

    stage_stats: list[StageStats]
    tensor_names: list[str]
    total_params: int
    total_nonzero: int
    tensor_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    compressed_tensors: list[WeightTensor] = field(default_factory=list)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    #: every stored array of an in-memory run (codes, ``_scale``, ... for real quantization)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    #: bytes on disk of all output arrays (store runs)
    stored_bytes: int | None = None

    def overall_sparsity(self) -> float:
        if self.total_params == 0:
            return 0.0
        return _f32_ratio(max(self.total_params - self.total_nonzero, 0), self.total_params)

    def memory_before_bytes(self) -> int:
        return self.stage_stats[0].memory_before_bytes if self.stage_stats else 0

    def memory_after_bytes(self) -> int:
        return self.stage_stats[-1].memory_after_bytes if self.stage_stats else 0

    def total_compression_ratio(self) -> float:
        if not self.stage_stats:
            return 1.0
        after = self.memory_after_bytes()
        if after == 0:
            return 1.0
        return _f32_ratio(self.memory_before_bytes(), after)

    def summary(self) -> str:
        """The seed's multi-line summary, character for character."""
        lines = [f"=== Compression Summary ({len(self.stage_stats)} stage(s)) ==="]
        for i, s in enumerate(self.stage_stats):
            lines.append(
                f"  Stage {i + 1}: [{s.stage_name}] processed={s.tensors_processed} "
                f"skipped={s.tensors_skipped} sparsity={s.sparsity():.4f} "
                f"ratio={s.compression_ratio():.3f}x "
                f"memory={s.memory_before_bytes}B->{s.memory_after_bytes}B"
            )
        lines.append(
            f"  Overall: tensors={len(self.tensor_names)} total_params={self.total_params} "
            f"nonzero={self.total_nonzero} sparsity={self.overall_sparsity():.4f} "
            f"compression_ratio={self.total_compression_ratio():.3f}x "
            f"memory={self.memory_before_bytes()}B->{self.memory_after_bytes()}B"
        )
        return "\n".join(lines)

    def error_summary(self) -> str:
        """Per-stage error statistics (beyond the seed): MSE, max |err|, SQNR."""
        lines = []
        for i, s in enumerate(self.stage_stats):
            sq = s.sqnr_db()
            sq_txt = "inf" if sq == float("inf") else f"{sq:.2f}"
            lines.append(
                f"  Stage {i + 1}: [{s.stage_name}] mse={s.mse():.6g} "
                f"max_abs_err={s.max_abs_err:.6g} sqnr={sq_txt}dB"
            )
        return "\n".join(lines)

    def bits_per_weight(self) -> float | None:
        """Stored bits per parameter (store runs), codes + scales + codec effect."""
        if self.stored_bytes is None or not self.total_params:
            return None
        return 8.0 * self.stored_bytes / self.total_params

    def processed_summary(self) -> dict[str, Any]:
        """Figures over the processed tensors alone (the seed's totals count tensors a
        stage skipped too): how many, their parameters, their stored bits per
        weight (store runs, else None), and each stage's sparsity over the
        tensors it processed."""
        infos = [self.tensor_stats.get(n, {}) for n in self.tensor_names]
        done = [i for i in infos if not i.get("skipped", True)]
        params = sum(math.prod(i["shape"]) for i in done)
        stored = sum(i.get("stored_bytes", 0) for i in done)
        sparsity = []
        for k, s in enumerate(self.stage_stats):
            ds = [i["stages"][k] for i in done if i["stages"][k].get("tensors_processed")]
            before = sum(d["params_before"] for d in ds)
            nz = sum(d["nonzero_params_after"] for d in ds)
            sparsity.append((s.stage_name, _f32_ratio(max(before - nz, 0), before) if before else 0.0))
        return {"tensors": len(done), "params": params,
                "bits_per_weight": 8.0 * stored / params if params and self.stored_bytes is not None else None,
                "stage_sparsity": sparsity}

    def to_dict(self) -> dict[str, Any]:
        return {
            "processed": self.processed_summary(),
            "summary": {
                "stored_bytes": self.stored_bytes,
                "bits_per_weight": self.bits_per_weight(),
                "tensors": len(self.tensor_names),
                "total_params": self.total_params,
                "total_nonzero": self.total_nonzero,
                "overall_sparsity": self.overall_sparsity(),
                "total_compression_ratio": self.total_compression_ratio(),
                "memory_before_bytes": self.memory_before_bytes(),
                "memory_after_bytes": self.memory_after_bytes(),
            },
            "stages": [s.to_dict() for s in self.stage_stats],
            "tensors": self.tensor_stats,
        }
