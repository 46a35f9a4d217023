"""The seed's LCG (Random metric), with jump-ahead so any block can start anywhere.

``state = state * 6364136223846793005 + 1442695040888963407 (mod 2^64)``;
value = ``float32(state >> 32) / 2^32``. Element ``i`` (flat) gets the value
after ``i + 1`` steps from ``seed``.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ._jit import JIT, PJIT, TILE

__all__ = ["random_scores", "random_unit_scores"]

_A = np.uint64(6364136223846793005)
_C = np.uint64(1442695040888963407)


@numba.njit(**JIT)
def _jump(state, steps):
    """State after ``steps`` LCG steps (binary powering of the affine map)."""
    a = np.uint64(6364136223846793005)
    c = np.uint64(1442695040888963407)
    acc_a = np.uint64(1)
    acc_c = np.uint64(0)
    s = np.uint64(steps)
    while s > np.uint64(0):
        if s & np.uint64(1):
            acc_a = acc_a * a
            acc_c = acc_c * a + c
        c = (a + np.uint64(1)) * c
        a = a * a
        s = s >> np.uint64(1)
    return acc_a * state + acc_c


@numba.njit(**PJIT)
def _random_scores(start, n, seed):
    out = np.empty(n, dtype=np.float32)
    tile = TILE
    nt = (n + tile - 1) // tile
    for t in prange(nt):
        lo = t * tile
        hi = min(n, lo + tile)
        st = _jump(seed, np.uint64(start + lo))
        for i in range(lo, hi):
            st = st * np.uint64(6364136223846793005) + np.uint64(1442695040888963407)
            out[i] = np.float32(np.float32(np.uint32(st >> np.uint64(32))) / np.float32(4294967296.0))
    return out


def random_scores(start: int, n: int, seed: int) -> np.ndarray:
    """Scores of flat elements ``start .. start+n-1`` for ``Random(seed)``.

    Examples
    --------
    >>> s = random_scores(0, 3, 7)
    >>> bool((random_scores(1, 2, 7) == s[1:]).all())
    True
    """
    return _random_scores(np.uint64(start), n, np.uint64(seed % (1 << 64)))


def random_unit_scores(units: int, seed: int) -> np.ndarray:
    """Structured ``Random(seed)`` unit scores: unit ``u`` starts at ``seed + u``, one step."""
    st = (np.uint64(seed % (1 << 64)) + np.arange(units, dtype=np.uint64)) * _A + _C
    return ((st >> np.uint64(32)).astype(np.uint32).astype(np.float32) / np.float32(4294967296.0)).astype(
        np.float32
    )
