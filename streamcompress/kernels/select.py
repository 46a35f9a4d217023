"""Exact k-th smallest selection over IEEE-754 bits, by two 2^16-bin histograms.

For non-negative float32 scores the uint32 bit pattern is monotone in the
value, so the k-th smallest score is found exactly by a histogram of the high
16 bits (pass 1) and, inside the chosen high bin, of the low 16 bits (pass 2).
Keys are taken as ``bits & 0x7fffffff`` so a float32 array's own bits give the
|x| order without a copy (NaN sorts above +inf). When the k-th key's high bin
can be guessed, one read does: :class:`BandHistogram` counts the keys below a
band of bins around the guess and histograms the band's low bits.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange
from numba.cpython.unsafe.numbers import trailing_zeros

from ._jit import PJIT

__all__ = ["hist16", "BandHistogram", "locate_kth", "NBINS"]

NBINS = 1 << 16


@numba.njit(**PJIT)
def _hist16(u, low, high_match, nthreads):
    n = u.size
    nslots = min(nthreads, max(1, n // 4096))
    per = (n + nslots - 1) // nslots
    slots = np.zeros((nslots, 65536), dtype=np.int64)
    for s in prange(nslots):
        us = u[s * per:min(n, (s + 1) * per)]  # 0-based slices: see quant.quantize_units
        h = slots[s]
        if low:
            for i in range(us.size):
                key = us[i] & np.uint32(0x7FFFFFFF)
                if (key >> np.uint32(16)) == high_match:
                    h[key & np.uint32(0xFFFF)] += 1
        else:
            for i in range(us.size):
                key = us[i] & np.uint32(0x7FFFFFFF)
                h[key >> np.uint32(16)] += 1
    out = np.zeros(65536, dtype=np.int64)
    for s in range(nslots):
        out += slots[s]
    return out


_GROUP = 64  # keys tested together before any of them is counted in the band


@numba.njit(inline="always")
def _band_count(w, sp, d):
    j, lo = d >> np.uint32(16), d & np.uint32(0xFFFF)
    v = w[j, lo]
    if v == np.uint8(255):
        sp[j, lo] += 256
        w[j, lo] = 0
    else:
        w[j, lo] = v + np.uint8(1)


@numba.njit(**PJIT)
def _band_hist(u, lo_key, span, wslots, spill, below):
    """Per-thread slot ``s``: ``below[s]`` counts the keys under ``lo_key``;
    ``wslots[s]`` (uint8, each wrap past 255 adding 256 to ``spill[s]``) the keys
    ``lo_key + d`` with ``d < span`` at ``[d >> 16, d & 0xffff]``. Returns the
    number of NaN/inf keys. Each group of 64 keys is compared at once (the
    counts are vector sums); only the keys in the band are then visited, one
    by one, from the group's bit mask."""
    n = u.size
    nslots = min(wslots.shape[0], max(1, n // 4096))
    per = (n + nslots - 1) // nslots
    bad = np.zeros(nslots, dtype=np.int64)
    for s in prange(nslots):
        us = u[s * per:min(n, (s + 1) * per)]  # 0-based slices: see quant.quantize_units
        w = wslots[s]
        sp = spill[s]
        b = np.uint32(0)  # a slice holds fewer than 2**31 keys (BandHistogram.add)
        c = np.uint32(0)
        m = us.size // _GROUP * _GROUP
        for g0 in range(0, m, _GROUP):
            grp = us[g0:g0 + _GROUP]
            mask = np.uint64(0)
            for t in range(_GROUP):
                key = grp[t] & np.uint32(0x7FFFFFFF)
                b += np.uint32(1) if key < lo_key else np.uint32(0)
                c += np.uint32(1) if key >= np.uint32(0x7F800000) else np.uint32(0)
                mask |= (np.uint64(1) if key - lo_key < span else np.uint64(0)) << np.uint64(t)
            while mask:
                t = trailing_zeros(mask)
                mask &= mask - np.uint64(1)
                _band_count(w, sp, np.uint32((grp[t] & np.uint32(0x7FFFFFFF)) - lo_key))
        for i in range(m, us.size):
            key = us[i] & np.uint32(0x7FFFFFFF)
            b += np.uint32(1) if key < lo_key else np.uint32(0)
            c += np.uint32(1) if key >= np.uint32(0x7F800000) else np.uint32(0)
            if key - lo_key < span:
                _band_count(w, sp, np.uint32(key - lo_key))
        below[s] += b
        bad[s] = c
    return bad.sum()


class BandHistogram:
    """The number of keys below a band of ``nbins`` high-16-bit bins from
    ``lo_bin``, and the low-16-bit histograms of the keys in the band, in one
    read of each block: what the exact k-th key needs when it falls in the band.

    Keys outside the band are only compared (vector sums, no table touched);
    the band's counts are uint8 cells, each wrap past 255 carried into an int32
    spill that only those cells touch (nine bins fit a core's L2: 590 KiB per
    thread), in per-thread slots kept for the whole run of blocks, folded into
    int64 totals before a spill could overflow and summed once by
    :meth:`window`.
    """

    _FOLD_AT = (1 << 31) - 1

    def __init__(self, lo_bin: int, nbins: int, threads: int | None = None) -> None:
        if not (0 <= lo_bin and nbins >= 1 and lo_bin + nbins <= 1 << 15):
            raise ValueError(f"a band of {nbins} bins from {lo_bin} is outside the 2**15 bins of |x| keys")
        t = max(1, threads or numba.get_num_threads())
        self.lo_bin = int(lo_bin)
        self.nbins = int(nbins)
        self._w = np.zeros((t, nbins, NBINS), dtype=np.uint8)
        self._sp = np.zeros((t, nbins, NBINS), dtype=np.int32)  # calloc'd: pages made only where a cell wraps
        self._below = np.zeros(t, dtype=np.int64)
        self._since = 0  # keys added since the slots were last folded
        self._W: np.ndarray | None = None  # int64 totals of folded slots

    def add(self, keys: np.ndarray) -> int:
        """Count ``keys`` (uint32, 1-D, fewer than 2**31); return how many are NaN/inf bits."""
        if keys.size >= self._FOLD_AT:
            raise ValueError("BandHistogram takes blocks of fewer than 2**31 - 1 keys")
        if self._since + keys.size > self._FOLD_AT:
            self._W = self.window()
            self._w[...] = 0
            self._sp[...] = 0
            self._since = 0
        self._since += keys.size
        return int(_band_hist(keys, np.uint32(self.lo_bin << 16), np.uint32(self.nbins << 16),
                              self._w, self._sp, self._below))

    def below(self) -> int:
        """Keys added so far below the band."""
        return int(self._below.sum())

    def window(self) -> np.ndarray:
        """``(nbins, 65536)`` int64: row ``j`` is the low-16-bit histogram of high bin ``lo_bin + j``."""
        w = self._w.sum(axis=0, dtype=np.int64) + self._sp.sum(axis=0, dtype=np.int64)
        return w if self._W is None else w + self._W


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
