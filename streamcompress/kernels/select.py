"""Exact k-th smallest selection over IEEE-754 bits, by two 2^16-bin histograms.

For non-negative float32 scores the uint32 bit pattern is monotone in the
value, so the k-th smallest score is found exactly by a histogram of the high
16 bits (pass 1) and, inside the chosen high bin, of the low 16 bits (pass 2).
Keys are taken as ``bits & 0x7fffffff`` so a float32 array's own bits give the
|x| order without a copy (NaN sorts above +inf).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ._jit import PJIT

__all__ = ["hist16", "hist16_window", "locate_kth", "NBINS"]

NBINS = 1 << 16


@numba.njit(**PJIT)
def _hist16(u, low, high_match, nthreads):
    n = u.size
    nslots = min(nthreads, max(1, n // 4096))
    per = (n + nslots - 1) // nslots
    slots = np.zeros((nslots, 65536), dtype=np.int64)
    for s in prange(nslots):
        lo = s * per
        hi = min(n, lo + per)
        h = slots[s]
        if low:
            for i in range(lo, hi):
                key = u[i] & np.uint32(0x7FFFFFFF)
                if (key >> np.uint32(16)) == high_match:
                    h[key & np.uint32(0xFFFF)] += 1
        else:
            for i in range(lo, hi):
                key = u[i] & np.uint32(0x7FFFFFFF)
                h[key >> np.uint32(16)] += 1
    out = np.zeros(65536, dtype=np.int64)
    for s in range(nslots):
        out += slots[s]
    return out


@numba.njit(**PJIT)
def _hist16_window(u, win_lo, win, nthreads):
    """High-16-bit histogram, plus into ``win[j]`` (added to) the low-16-bit
    histogram of the keys whose high bits are ``win_lo + j``."""
    n = u.size
    nwin = win.shape[0]
    nslots = min(nthreads, max(1, n // 4096))
    per = (n + nslots - 1) // nslots
    slots = np.zeros((nslots, 65536), dtype=np.int64)
    wslots = np.zeros((nslots, nwin, 65536), dtype=np.int32)
    for s in prange(nslots):
        lo = s * per
        hi = min(n, lo + per)
        h = slots[s]
        w = wslots[s]
        for i in range(lo, hi):
            key = u[i] & np.uint32(0x7FFFFFFF)
            top = np.int64(key >> np.uint32(16))
            h[top] += 1
            j = top - win_lo
            if j >= 0 and j < nwin:
                w[j, key & np.uint32(0xFFFF)] += 1
    out = np.zeros(65536, dtype=np.int64)
    for s in range(nslots):
        out += slots[s]
        for j in range(nwin):
            for b in range(65536):
                win[j, b] += wslots[s, j, b]
    return out


def hist16_window(keys: np.ndarray, win_lo: int, win: np.ndarray) -> np.ndarray:
    """:func:`hist16` of the high bits, and the low-bit histograms of the high
    bins ``win_lo .. win_lo + len(win) - 1`` added into ``win`` (int64, shape
    ``(nwin, 65536)``), in one read of ``keys``."""
    if keys.size >= 1 << 31:
        raise ValueError("hist16_window takes blocks of fewer than 2**31 keys")
    return _hist16_window(keys, np.int64(win_lo), win, numba.get_num_threads())


def hist16(keys: np.ndarray, high: int | None = None) -> np.ndarray:
    """Histogram of 16 bits of ``keys & 0x7fffffff``.

    Parameters
    ----------
    keys : uint32 array (1-D)
        Score bits, e.g. ``float32_array.view(np.uint32)``.
    high : int, optional
        ``None`` bins the high 16 bits; an int bins the low 16 bits of the keys
        whose high 16 bits equal it.

    Examples
    --------
    >>> import numpy as np
    >>> h = hist16(np.array([1.0, -2.0], dtype=np.float32).view(np.uint32))
    >>> int(h.sum())
    2
    """
    if high is None:
        return _hist16(keys, False, np.uint32(0), numba.get_num_threads())
    return _hist16(keys, True, np.uint32(high), numba.get_num_threads())


def locate_kth(hist: np.ndarray, k: int) -> tuple[int, int]:
    """Return ``(bin, count_below)`` of the bin holding the k-th smallest (1-based).

    Examples
    --------
    >>> import numpy as np
    >>> locate_kth(np.array([2, 0, 3]), 3)
    (2, 2)
    """
    cum = np.cumsum(hist)
    if k < 1 or k > int(cum[-1]):
        raise ValueError(f"k={k} outside 1..{int(cum[-1])}")
    b = int(np.searchsorted(cum, k, side="left"))
    below = int(cum[b - 1]) if b > 0 else 0
    return b, below
