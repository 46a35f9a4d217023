"""Per-element kernels on 1-D float32 blocks (pure array functions, no I/O).

Every arithmetic result is rounded back to float32 right away, so the kernels
reproduce float32 arithmetic exactly (Numba may evaluate in float64; a single
f64 operation on f32 inputs rounded to f32 is the correctly rounded f32 result).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ._jit import JIT, PJIT, TILE

__all__ = [
    "count_nonzero",
    "count_nonfinite",
    "zero_nonfinite",
    "absmax",
    "square",
    "clip_le",
    "prune_threshold",
    "cut_below",
    "diff_stats",
]

_KEYMASK = np.uint32(0x7FFFFFFF)


@numba.njit(**PJIT)
def count_nonzero(x):
    """Number of elements ``!= 0`` (NaN counts as non-zero, as in the seed)."""
    nt = (x.size + TILE - 1) // TILE
    part = np.zeros(max(nt, 1), dtype=np.int64)
    for t in prange(nt):
        c = 0
        for i in range(t * TILE, min(x.size, (t + 1) * TILE)):
            if x[i] != 0:
                c += 1
        part[t] = c
    return part.sum()


@numba.njit(**PJIT)
def count_nonfinite(x):
    nt = (x.size + TILE - 1) // TILE
    part = np.zeros(max(nt, 1), dtype=np.int64)
    for t in prange(nt):
        c = 0
        for i in range(t * TILE, min(x.size, (t + 1) * TILE)):
            if not np.isfinite(x[i]):
                c += 1
        part[t] = c
    return part.sum()


@numba.njit(**PJIT)
def zero_nonfinite(x):
    """Replace NaN and +-inf by 0 in place."""
    for i in prange(x.size):
        if not np.isfinite(x[i]):
            x[i] = 0


@numba.njit(**PJIT)
def absmax(x):
    """max |x| with the seed's fold (``f32::max`` from 0.0, NaN ignored)."""
    nt = (x.size + TILE - 1) // TILE
    part = np.zeros(max(nt, 1), dtype=np.float32)
    for t in prange(nt):
        m = np.float32(0.0)
        for i in range(t * TILE, min(x.size, (t + 1) * TILE)):
            a = abs(x[i])
            if a > m:
                m = a
        part[t] = m
    m = np.float32(0.0)
    for t in range(part.size):
        if part[t] > m:
            m = part[t]
    return m


@numba.njit(**PJIT)
def square(x):
    """float32 ``x*x`` scores (L2 / Taylor metrics)."""
    out = np.empty(x.size, dtype=np.float32)
    for i in prange(x.size):
        out[i] = np.float32(x[i] * x[i])
    return out


def clip_le(x, keys, thr):
    """Zero every element whose key (``|x|`` bits) is ``<= thr``; ``x`` is the uint32 view."""
    cut_below(x, keys, np.uint32(int(thr) + 1), np.zeros(0, np.uint8), False)


@numba.njit(**PJIT)
def cut_below(x, keys, lim, mask, want_mask):
    """Zero ``x`` where the key (``bits & 0x7fffffff``) is ``< lim``; ``x`` is the
    block's uint32 view (+0.0 is written). A flat ``prange`` over elements:
    measured to vectorize where the same loop nested in tiles did not."""
    for i in prange(x.size):
        cut = (keys[i] & np.uint32(0x7FFFFFFF)) < lim
        if cut:
            x[i] = np.uint32(0)
        if want_mask:
            mask[i] = not cut


@numba.njit(**PJIT)
def _tie_counts(keys, thr):
    n = keys.size
    nt = max((n + TILE - 1) // TILE, 1)
    ties = np.zeros(nt, dtype=np.int64)
    for t in prange(nt):
        c = 0
        for i in range(t * TILE, min(n, (t + 1) * TILE)):
            c += (keys[i] & np.uint32(0x7FFFFFFF)) == thr
        ties[t] = c
    return ties


@numba.njit(**PJIT)
def _cut_stats(x, keys, thr, lim, ranked, ties_left, offsets, mask, want_mask):
    """Zero ``x`` (float32) where the key is ``< lim``, or with ``ranked`` below
    ``thr`` plus the ties whose rank (from ``offsets`` per tile) is under
    ``ties_left``; count the ties and take :func:`diff_stats` in the same read."""
    n = x.size
    nt = max((n + TILE - 1) // TILE, 1)
    nz = np.zeros(nt, dtype=np.int64)
    sse = np.zeros(nt, dtype=np.float64)
    mx = np.zeros(nt, dtype=np.float64)
    sig = np.zeros(nt, dtype=np.float64)
    tc = np.zeros(nt, dtype=np.int64)
    for t in prange(nt):
        rank = offsets[t] if ranked else 0
        c = 0
        e = 0.0
        m = 0.0
        s = 0.0
        ties = 0
        for i in range(t * TILE, min(n, (t + 1) * TILE)):
            b = x[i]
            k = keys[i] & np.uint32(0x7FFFFFFF)
            tie = k == thr
            if ranked:
                cut = k < thr or (tie and rank < ties_left)
            else:
                cut = k < lim
            if tie:
                rank += 1
                ties += 1
            a = np.float32(0.0) if cut else b
            if cut:
                x[i] = np.float32(0.0)
            if want_mask:
                mask[i] = 0 if cut else 1
            c, e, m, s = stat_acc(b, a, c, e, m, s)
        nz[t] = c
        sse[t] = e
        mx[t] = m
        sig[t] = s
        tc[t] = ties
    return tc.sum(), tile_totals(nz, sse, mx, sig)


def prune_threshold(x, keys, thr, ties_left, mask, want_mask, all_ties=False):
    """Zero keys below ``thr`` and the first ``ties_left`` keys equal to it (flat order).

    ``x`` is the float32 block (+0.0 is written); ``keys`` its uint32 scores
    (may be ``x``'s own bits). ``mask`` (uint8, same size when ``want_mask``)
    gets 1 kept / 0 pruned. ``all_ties``: the caller knows every tie is pruned
    (no need to count them first). Returns ``(ties in this block, stats)`` with
    ``stats`` as :func:`diff_stats` of the block before and after, so the
    caller can carry the running tie count. Only a block holding the cut-off
    tie ranks its ties one by one.
    """
    thr = np.uint32(thr)
    no_offsets = np.zeros(1, np.int64)
    if all_ties:
        return _cut_stats(x, keys, thr, np.uint32(thr + 1), False, 0, no_offsets, mask, want_mask)
    if ties_left <= 0:  # every tie here is kept
        return _cut_stats(x, keys, thr, thr, False, 0, no_offsets, mask, want_mask)
    ties = _tie_counts(keys, thr)
    if int(ties.sum()) <= ties_left:  # every tie here is pruned
        return _cut_stats(x, keys, thr, np.uint32(thr + 1), False, 0, no_offsets, mask, want_mask)
    offsets = np.concatenate((np.zeros(1, np.int64), np.cumsum(ties)[:-1]))
    return _cut_stats(x, keys, thr, thr, True, ties_left, offsets, mask, want_mask)


@numba.njit(**JIT)
def stat_acc(b32, a32, c, e, m, s):
    """One element's share of :func:`diff_stats` (before ``b32``, after ``a32``),
    for kernels that transform and measure in one read. Skipping non-finite
    terms always gives what diff_stats gives: its plain sums are kept only when
    every term was finite, and its redo skips exactly these terms."""
    a = np.float64(a32)
    b = np.float64(b32)
    if a != 0:
        c += 1
    d = a - b
    if np.isfinite(d):
        e += d * d
        if abs(d) > m:
            m = abs(d)
    if np.isfinite(b):
        s += b * b
    return c, e, m, s


@numba.njit(**JIT)
def tile_totals(nz, sse, mx, sig):
    """Per-tile partial stats added in tile order: ``(nonzero, sum_sq_err, max_abs_err, sum_sq_signal)``."""
    tot_e = 0.0
    tot_s = 0.0
    tot_m = 0.0
    for t in range(nz.size):
        tot_e += sse[t]
        tot_s += sig[t]
        if mx[t] > tot_m:
            tot_m = mx[t]
    return nz.sum(), tot_e, tot_m, tot_s


@numba.njit(**PJIT)
def diff_stats(before, after):
    """Partial stats of one stage on one block.

    Returns ``(nonzero_after, sum_sq_err, max_abs_err, sum_sq_signal)``; the
    sums are float64, taken per fixed tile and added in tile order
    (deterministic for any thread count). Non-finite differences are left out
    of the error sums (a tile with any is redone with per-element checks).
    """
    n = after.size
    nt = max((n + TILE - 1) // TILE, 1)
    nz = np.zeros(nt, dtype=np.int64)
    sse = np.zeros(nt, dtype=np.float64)
    mx = np.zeros(nt, dtype=np.float64)
    sig = np.zeros(nt, dtype=np.float64)
    for t in prange(nt):
        lo = t * TILE
        hi = min(n, (t + 1) * TILE)
        c = 0
        e = 0.0
        m = 0.0
        s = 0.0
        for i in range(lo, hi):
            a = np.float64(after[i])
            b = np.float64(before[i])
            c += a != 0
            d = a - b
            e += d * d
            m = max(m, abs(d))
            s += b * b
        if not (np.isfinite(e) and np.isfinite(s)):
            e = 0.0
            m = 0.0
            s = 0.0
            for i in range(lo, hi):
                a = np.float64(after[i])
                b = np.float64(before[i])
                d = a - b
                if np.isfinite(d):
                    e += d * d
                    if abs(d) > m:
                        m = abs(d)
                if np.isfinite(b):
                    s += b * b
        nz[t] = c
        sse[t] = e
        mx[t] = m
        sig[t] = s
    return tile_totals(nz, sse, mx, sig)
