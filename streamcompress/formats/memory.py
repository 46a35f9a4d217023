"""In-memory tensors: numpy arrays as sources, and a sink that keeps outputs in memory."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from ..layout import Block, TensorMeta
from .base import TensorSource

__all__ = ["ArraySource", "sources_from_arrays", "MemorySink", "NullSink"]


class ArraySource(TensorSource):
    """An in-memory numpy array (float32/64/16 or ml_dtypes bfloat16)."""

    def __init__(self, name: str, array: Any) -> None:
        arr = np.asarray(array)
        self.array = arr
        self.logical_dtype = "bfloat16" if arr.dtype.name == "bfloat16" else arr.dtype.name
        self.meta = TensorMeta(str(name), tuple(int(s) for s in arr.shape), self.logical_dtype)
        self.chunks = None
        self.attrs = {}

    @property
    def raw_dtype(self) -> np.dtype:
        return self.array.dtype

    @property
    def stored_itemsize(self) -> int:
        return self.array.dtype.itemsize

    def read_raw(self, block: Block) -> np.ndarray:
        return np.ascontiguousarray(self.array[block.region])


def sources_from_arrays(tensors: Any) -> list[TensorSource]:
    """Wrap a mapping ``name -> array``, ``(name, array)`` pairs or objects with
    ``.name`` and ``.data`` (the seed's ``WeightTensor``)."""
    if isinstance(tensors, Mapping):
        items: Iterable[tuple[str, Any]] = tensors.items()
    else:
        items = []
        for t in tensors:
            if hasattr(t, "name") and hasattr(t, "data"):
                data = np.asarray(t.data)
                shape = getattr(t, "shape", None)
                items.append((t.name, data.reshape(shape) if shape is not None else data))
            else:
                name, arr = t
                items.append((name, arr))
    return [ArraySource(n, a) for n, a in items]


class MemorySink:
    """Keeps every output array in memory (``compress_model`` without ``output``)."""

    #: outputs outlive the process (files: made durable, sized, resumable)
    persistent = False

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self.attrs: dict[str, dict[str, Any]] = {}

    def create(self, name: str, shape, chunks, dtype, attrs: dict[str, Any]) -> None:
        self.arrays[name] = np.zeros(shape, dtype=dtype)
        self.attrs[name] = dict(attrs)

    def write(self, name: str, region: tuple, data: np.ndarray) -> None:
        self.arrays[name][region] = data

    def update_attrs(self, name: str, attrs: dict[str, Any]) -> None:
        self.attrs[name].update(attrs)

    def finish(self, attrs: dict[str, Any]) -> None:
        self.group_attrs = attrs

    def close(self) -> None:
        pass


class NullSink(MemorySink):
    """Keeps nothing but the run's records: for a pass that only measures (the
    bit budget's probe), so memory stays one block whatever the model."""

    def create(self, name: str, shape, chunks, dtype, attrs: dict[str, Any]) -> None:
        self.arrays[name] = np.zeros(0, dtype=dtype)
        self.attrs[name] = dict(attrs)

    def write(self, name: str, region: tuple, data: np.ndarray) -> None:
        pass
