"""NumPy ``.npz`` archives in (a member loads whole: zip members cannot be read in parts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import CorruptCheckpoint
from .base import Checkpoint, Format, TensorSource
from .memory import ArraySource
from .safetensors import check_name

__all__ = ["NpzFormat"]


class NpzFormat(Format):
    name = "npz"

    @classmethod
    def detect(cls, path: Path) -> bool:
        return path.is_file() and path.suffix == ".npz"

    @classmethod
    def open(cls, path: Path, missing: str = "error", unfinished_ok: bool = False) -> Checkpoint:
        try:
            npz = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CorruptCheckpoint(f"'{path}' is not a readable .npz: {e}") from None
        sources: list[TensorSource] = []
        for k in npz.files:
            check_name(k, str(path))
            sources.append(ArraySource(k, npz[k]))
        return Checkpoint(cls.name, sources, {"import": {"source": str(path)}})
