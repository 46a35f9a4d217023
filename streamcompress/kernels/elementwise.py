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
    "cut_plan",
    "prune_threshold_measured",
    "cut_below",
    "diff_stats",
    "widen_bf16",
]

_KEYMASK = np.uint32(0x7FFFFFFF)


@numba.njit(**PJIT)
def count_nonzero(x):
    """Number of elements ``!= 0`` (NaN counts as non-zero, as in the seed)."""
    nt = (x.size + TILE - 1) // TILE
    part = np.zeros(max(nt, 1), dtype=np.int64)
    for t in prange(nt):
        c = 0
        xs = x[t * TILE:(t + 1) * TILE]  # 0-based slices: see quantize_units
        for i in range(xs.size):
            if xs[i] != 0:
                c += 1
        part[t] = c
    return part.sum()


@numba.njit(**PJIT)
def count_nonfinite(x):
    nt = (x.size + TILE - 1) // TILE
    part = np.zeros(max(nt, 1), dtype=np.int64)
    for t in prange(nt):
        c = 0
        xs = x[t * TILE:(t + 1) * TILE]
        for i in range(xs.size):
            if not np.isfinite(xs[i]):
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
def _absmax_bits(u):
    nt = (u.size + TILE - 1) // TILE
    part = np.zeros(max(nt, 1), dtype=np.uint32)
    for t in prange(nt):
        m = np.uint32(0)
        us = u[t * TILE:(t + 1) * TILE]
        for i in range(us.size):
            k = us[i] & _KEYMASK
            k = k if k <= np.uint32(0x7F800000) else np.uint32(0)  # NaN ignored, inf kept
            m = max(m, k)
        part[t] = m
    return part.max()


def absmax(x: np.ndarray) -> np.float32:
    """max |x| with the seed's fold (``f32::max`` from 0.0, NaN ignored).

    Taken as the largest ``bits & 0x7fffffff`` that is not NaN: for float32
    the bit order is the |x| order, and the integer max vectorizes where the
    float one does not (measured 10x).
    """
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    return np.uint32(_absmax_bits(x.view(np.uint32))).view(np.float32)


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
def _cut_counting(x, keys, thr, lim, mask, want_mask):
    """``cut_below(x, keys, lim)`` that also returns how many keys equal ``thr``."""
    n = x.size
    ties = 0
    for i in prange(n):
        k = keys[i] & np.uint32(0x7FFFFFFF)
        ties += k == thr
        cut = k < lim
        if cut:
            x[i] = np.uint32(0)
        if want_mask:
            mask[i] = not cut
    return ties


@numba.njit(**PJIT)
def _tie_counts(keys, thr):
    n = keys.size
    nt = max((n + TILE - 1) // TILE, 1)
    ties = np.zeros(nt, dtype=np.int64)
    for t in prange(nt):
        c = 0
        ks = keys[t * TILE:(t + 1) * TILE]
        for i in range(ks.size):
            c += (ks[i] & np.uint32(0x7FFFFFFF)) == thr
        ties[t] = c
    return ties


@numba.njit(**PJIT)
def _cut_ranked(x, keys, thr, ties_left, offset, mask, want_mask):
    """Cut keys below ``thr`` and the first ``ties_left`` equal to it; ``offset[t]``:
    the ties in tiles before tile ``t``."""
    n = x.size
    nt = offset.size
    for t in prange(nt):
        rank = offset[t]
        for i in range(t * TILE, min(n, (t + 1) * TILE)):
            k = keys[i] & np.uint32(0x7FFFFFFF)
            cut = False
            if k < thr:
                cut = True
            elif k == thr:
                if rank < ties_left:
                    cut = True
                rank += 1
            if cut:
                x[i] = np.uint32(0)
            if want_mask:
                mask[i] = 0 if cut else 1


def prune_threshold(x, keys, thr, ties_left, mask, want_mask, all_ties=False):
    """Zero keys below ``thr`` and the first ``ties_left`` keys equal to it (flat order).

    ``x`` is the block's ``uint32`` view (taken by the caller; +0.0 is written).
    ``mask`` (uint8, same size when ``want_mask``) gets 1 kept / 0 pruned.
    Returns the number of ties in this block, so the caller can carry the
    running tie count to the next block. Only a block holding the cut-off tie
    ranks its ties one by one; the others are a plain comparison. ``all_ties``:
    the caller knows every tie is pruned (no separate count first).
    """
    thr = np.uint32(thr)
    lim, offsets, total = cut_plan(keys, thr, ties_left, all_ties)
    if offsets.size == 0 and total is None:  # count the ties while cutting
        return int(_cut_counting(x, keys, thr, lim, mask, want_mask))
    if offsets.size == 0:
        cut_below(x, keys, lim, mask, want_mask)
        return total
    _cut_ranked(x, keys, thr, ties_left, offsets, mask, want_mask)
    return total


_NO_OFFSETS = np.zeros(0, dtype=np.int64)


def cut_plan(keys, thr, ties_left, all_ties=False):
    """``(lim, offsets, ties)`` of a cut at ``thr`` that prunes the keys below it and
    ``ties_left`` more keys equal to it (flat order). When every tie of the block
    is pruned (``all_ties``, or the block holds no more than ``ties_left``) the
    cut is the keys below ``lim = thr + 1``; when every one is kept
    (``ties_left <= 0``), below ``lim = thr``; ``offsets`` is then empty, and
    ``ties`` is None when the ties were not counted (the cut counts them).
    Otherwise the block holds the cut-off tie: ``offsets`` gives, per tile,
    the ties in earlier tiles (ranked one by one) and ``ties`` their total."""
    thr = np.uint32(thr)
    if all_ties:
        return np.uint32(thr + 1), _NO_OFFSETS, None
    if ties_left <= 0:  # every tie here is kept: no count first
        return thr, _NO_OFFSETS, None
    counts = _tie_counts(keys, thr)
    total = int(counts.sum())
    if total <= ties_left:  # every tie here is pruned
        return np.uint32(thr + 1), _NO_OFFSETS, total
    return thr, np.cumsum(counts) - counts, total


@numba.njit(**PJIT)
def _cut_measured(x, keys, lim, thr, mask, want_mask):
    """``cut_below(x's bits, keys, lim, mask, want_mask)`` with ``diff_stats`` of
    ``x`` before and after, tile by tile in cache: each tile's values after the
    cut go to a tile buffer, are compared with the tile as it was
    (:func:`diff_tile`: the same tiles, sums and order as ``diff_stats``), then
    copied over it (bits as they are: +0.0 where cut). Returns ``(keys equal to
    thr, nonzero, sum_sq_err, max_abs_err, sum_sq_signal)``. The keys may be
    ``x``'s own bits (every key is read before the tile is written). (Cutting
    the tile in place instead ran at a quarter of the speed: a branch per
    element, not vectorized.)"""
    n = x.size
    nt, nz, sse, mx, sig = tile_slots(n)
    ties = np.zeros(nt, dtype=np.int64)
    for t in prange(nt):
        lo = t * TILE
        hi = min(n, lo + TILE)
        xs = x[lo:hi]  # (0-based slices vectorize: see quantize_units)
        ks = keys[lo:hi]
        ms = mask[lo:hi]
        after = np.empty(hi - lo, np.float32)
        c = 0
        for i in range(hi - lo):
            k = ks[i] & _KEYMASK
            c += k == thr
            after[i] = np.float32(0.0) if k < lim else xs[i]
        if want_mask:
            for i in range(hi - lo):
                ms[i] = (ks[i] & _KEYMASK) >= lim
        nz[t], sse[t], mx[t], sig[t] = diff_tile(after, xs)
        ties[t] = c
        xs[:] = after
    c, e, m, sg = fold_tiles(nz, sse, mx, sig)
    return ties.sum(), c, e, m, sg


def prune_threshold_measured(x, keys, thr, ties_left, mask, want_mask, all_ties=False):
    """:func:`prune_threshold` of float32 ``x`` (in place) with the block's stats,
    as ``diff_stats(x before, x after)`` gives them, from the same pass:
    ``(ties in this block, (nonzero, sum_sq_err, max_abs_err, sum_sq_signal))``.
    No copy of the block, except in the one block holding the cut-off tie (its
    ties ranked one by one: copied, cut, then compared)."""
    thr = np.uint32(thr)
    lim, offsets, total = cut_plan(keys, thr, ties_left, all_ties)
    if offsets.size == 0:
        ties, *st = _cut_measured(x, keys, lim, thr, mask, want_mask)
        return int(ties), tuple(st)
    before = x.copy()
    _cut_ranked(x.view(np.uint32), keys, thr, ties_left, offsets, mask, want_mask)
    return total, diff_stats(before, x)


#: Lanes of :func:`diff_tile`'s sums: element ``i`` of a tile goes to lane
#: ``i % LANES``, so the lanes are independent chains (arrays LLVM vectorizes);
#: the order is fixed (the same on every machine and thread count).
LANES = 32


@numba.njit(**JIT)
def _fold_lanes(c, e, m, s):
    """The lanes of :func:`diff_tile` combined pairwise, in a fixed order."""
    w = LANES
    while w > 1:
        h = w // 2
        for k in range(h):
            c[k] += c[k + h]
            e[k] += e[k + h]
            m[k] = max(m[k], m[k + h])
            s[k] += s[k + h]
        w = h
    return c[0], e[0], m[0], s[0]


@numba.njit(**JIT)
def diff_tile(after, before):
    """``(nonzero_after, sum_sq_err, max_abs_err, sum_sq_signal)`` of one tile.

    The sums are float64 in :data:`LANES` lanes (element ``i`` into lane
    ``i % LANES``, each lane in element order), the lanes then added pairwise
    (``_fold_lanes``): a fixed order that vectorizes. A tile whose sums are not
    finite is redone the same way, leaving non-finite differences (and
    signals) out."""
    n = after.size
    full = n - n % LANES
    c = np.zeros(LANES, np.int64)
    e = np.zeros(LANES)
    m = np.zeros(LANES)
    s = np.zeros(LANES)
    for k in range(full // LANES):
        xa = after[k * LANES:k * LANES + LANES]  # (0-based slices vectorize: see quantize_units)
        xb = before[k * LANES:k * LANES + LANES]
        for j in range(LANES):
            a = np.float64(xa[j])
            b = np.float64(xb[j])
            d = a - b
            c[j] += np.int64(a != 0)
            e[j] += d * d
            m[j] = np.fmax(m[j], abs(d))  # (fmax, not a select: that would be a masked store)
            s[j] += b * b
    xa = after[full:]
    xb = before[full:]
    for j in range(xa.size):
        a = np.float64(xa[j])
        b = np.float64(xb[j])
        d = a - b
        c[j] += np.int64(a != 0)
        e[j] += d * d
        m[j] = np.fmax(m[j], abs(d))
        s[j] += b * b
    nz, se, mx, sg = _fold_lanes(c, e, m, s)
    if np.isfinite(se) and np.isfinite(sg):
        return nz, se, mx, sg
    e[:] = 0.0
    m[:] = 0.0
    s[:] = 0.0
    for i in range(n):
        j = i % LANES
        a = np.float64(after[i])
        b = np.float64(before[i])
        d = a - b
        if np.isfinite(d):
            e[j] += d * d
            if abs(d) > m[j]:
                m[j] = abs(d)
        if np.isfinite(b):
            s[j] += b * b
    _, se, mx, sg = _fold_lanes(c, e, m, s)  # (the count stands: it is the first pass's)
    return nz, se, mx, sg


@numba.njit(**JIT)
def tile_slots(n):
    """``(tiles, nonzero, sum_sq_err, max_abs_err, sum_sq_signal)``: the per-tile
    slots of :func:`diff_tile`'s results for a block of ``n`` elements (zeros;
    one tile when ``n`` is 0), folded by :func:`fold_tiles`."""
    nt = max((n + TILE - 1) // TILE, 1)
    return nt, np.zeros(nt, np.int64), np.zeros(nt), np.zeros(nt), np.zeros(nt)


@numba.njit(**JIT)
def fold_tiles(nz, sse, mx, sig):
    """The block's totals of its tiles' (:func:`diff_tile`), added in tile order."""
    tot_e = 0.0
    tot_s = 0.0
    tot_m = 0.0
    for t in range(sse.size):
        tot_e += sse[t]
        tot_s += sig[t]
        if mx[t] > tot_m:
            tot_m = mx[t]
    return nz.sum(), tot_e, tot_m, tot_s


@numba.njit(**JIT)
def widen_bf16(bits, out):
    """bfloat16 ``bits`` (uint16) widened to float32 bit patterns in ``out`` (a
    uint32 view of the float32 buffer, made in Python): ``bits << 16``, exact,
    NaN payloads kept. Serial: it runs on the reader thread, beside the
    parallel kernels of the block before."""
    for i in range(bits.size):
        out[i] = np.uint32(bits[i]) << np.uint32(16)


@numba.njit(**PJIT)
def diff_stats(before, after):
    """Partial stats of one stage on one block.

    Returns ``(nonzero_after, sum_sq_err, max_abs_err, sum_sq_signal)``; the
    sums are float64, taken per fixed tile (in :data:`LANES` lanes,
    :func:`diff_tile`) and added in tile order (deterministic for any thread
    count and machine). Non-finite differences are left out
    of the error sums (a tile with any is redone with per-element checks).
    """
    n = after.size
    nt, nz, sse, mx, sig = tile_slots(n)
    for t in prange(nt):
        lo = t * TILE
        hi = min(n, (t + 1) * TILE)
        nz[t], sse[t], mx[t], sig[t] = diff_tile(after[lo:hi], before[lo:hi])
    return fold_tiles(nz, sse, mx, sig)
