"""The guard that the threading layer Numba picked is thread-safe (see ``_jit``)."""

from __future__ import annotations

import numba
import numpy as np

from .elementwise import count_nonzero

__all__ = ["check_threading_layer"]

_SAFE_LAYERS = ("omp", "tbb")


def check_threading_layer() -> str:
    """Launch a tiny parallel kernel and assert the layer is thread-safe.

    Returns the layer name; raises ``RuntimeError`` for ``workqueue``.
    """
    count_nonzero(np.ones(4, dtype=np.float32))
    layer = numba.threading_layer()
    if layer not in _SAFE_LAYERS:
        raise RuntimeError(
            f"numba threading layer '{layer}' is not thread-safe; install an OpenMP runtime "
            "(libgomp) or the 'tbb' package, or set NUMBA_THREADING_LAYER=omp"
        )
    return layer
