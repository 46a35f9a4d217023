"""Real quantization kernels: per-unit statistics, codes and dequantization.

A *unit* shares one scale. Units are described by ``(L, g)``: the tensor is
viewed as rows of ``L`` elements, each split into groups of ``g`` (the last
group of a row may be shorter). Per tensor: ``L = g = n``; per channel
(axis 0): ``L = g = n / shape[0]``; per group along the last axis:
``L = shape[-1]``. Flat element ``f`` belongs to unit
``(f // L) * ceil(L / g) + (f % L) // g``.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ._jit import JIT, PJIT, TILE
from .elementwise import diff_tile, fold_tiles, tile_slots

__all__ = ["unit_range", "tile_of_units", "unit_absmax", "unit_absmax_kept", "unit_minmax", "quantize_units",
           "quantize_units_measured", "cut_quantize_measured", "quantize_int8_sim", "dequantize_units",
           "pack_nibbles", "unpack_nibbles"]

_KEYMASK = np.uint32(0x7FFFFFFF)


@numba.njit(**JIT)
def _unit(f, L, g, G):
    return (f // L) * G + (f % L) // g


def unit_range(start: int, n: int, L: int, g: int) -> tuple[int, int]:
    """``(first unit, number of units)`` touched by flat range ``[start, start+n)``."""
    G = -(-L // g)
    u0 = (start // L) * G + (start % L) // g
    last = start + n - 1
    u1 = (last // L) * G + (last % L) // g
    return u0, u1 - u0 + 1


def tile_of_units(cols: int, edge: int, u0: int, k: int) -> np.ndarray:
    """Flat tile index of each unit ``u0 .. u0+k`` of a ``(rows, cols)`` matrix in
    ``edge x edge`` tiles, whose units are the tiles' rows: ``(row, j)`` -> tile
    ``(row // edge, j)``."""
    per_row = -(-cols // edge)
    u = np.arange(u0, u0 + k, dtype=np.int64)
    return (u // per_row // edge) * per_row + u % per_row


@numba.njit(**JIT)
def _unit_bounds(j, u0, start, n, L, g, G):
    """0-based ``[lo, hi)`` of unit ``u0 + j`` within the block ``[start, start + n)``."""
    u = u0 + j
    row = u // G
    lo = row * L + (u % G) * g
    hi = min(lo + g, row * L + L)
    return max(lo, start) - start, min(hi, start + n) - start


@numba.njit(**PJIT)
def _unit_minmax(x, start, L, g, k):
    G = (L + g - 1) // g
    u0 = _unit(start, L, g, G)
    mx = np.zeros(k, dtype=np.float32)
    mn = np.zeros(k, dtype=np.float32)
    for j in prange(k):
        lo, hi = _unit_bounds(j, u0, start, x.size, L, g, G)
        xs = x[lo:hi]  # 0-based slices: see quantize_units
        a = np.float32(0.0)
        b = np.float32(0.0)
        for i in range(xs.size):
            v = xs[i]
            if v > a:
                a = v
            if v < b:
                b = v
        mx[j] = a
        mn[j] = b
    return mx, mn


@numba.njit(**PJIT)
def _unit_absmax_bits(u, keys, lim, start, L, g, k):
    """Per unit, the largest ``|x|`` bits of the elements whose key is at least
    ``lim`` (``keys = u, lim = 0``: all of them); NaN ignored."""
    G = (L + g - 1) // g
    u0 = _unit(start, L, g, G)
    out = np.zeros(k, dtype=np.uint32)
    for j in prange(k):
        lo, hi = _unit_bounds(j, u0, start, u.size, L, g, G)
        us = u[lo:hi]
        ks = keys[lo:hi]
        m = np.uint32(0)
        for i in range(us.size):
            key = us[i] & _KEYMASK
            key = key if key <= np.uint32(0x7F800000) and (ks[i] & _KEYMASK) >= lim else np.uint32(0)
            m = max(m, key)
        out[j] = m
    return out


def unit_absmax(x: np.ndarray, start: int, L: int, g: int) -> np.ndarray:
    """max |x| of each unit touched by the block (0 for none, NaN ignored); taken
    on the bits as :func:`~streamcompress.kernels.elementwise.absmax` is."""
    _, k = unit_range(start, x.size, L, g)
    if k == 1:
        from .elementwise import absmax

        return np.array([absmax(x)], dtype=np.float32)
    u = x.view(np.uint32)
    return _unit_absmax_bits(u, u, np.uint32(0), start, L, g, k).view(np.float32)


def unit_absmax_kept(x: np.ndarray, keys: np.ndarray, lim: int, start: int, L: int, g: int) -> np.ndarray:
    """:func:`unit_absmax` of ``x`` after a cut of the elements whose key (``keys & 0x7fffffff``)
    is below ``lim`` (a cut element counts as +0.0), without making the cut."""
    _, k = unit_range(start, x.size, L, g)
    return _unit_absmax_bits(x.view(np.uint32), keys, np.uint32(lim), start, L, g, k).view(np.float32)


def unit_minmax(x: np.ndarray, start: int, L: int, g: int) -> tuple[np.ndarray, np.ndarray]:
    """(min(x, 0), max(x, 0)) of each unit touched by the block."""
    _, k = unit_range(start, x.size, L, g)
    mx, mn = _unit_minmax(x, start, L, g, k)
    return mn, mx


@numba.njit(**JIT)
def _int_code(v, s, iv, z, lo_q, hi_q, use_inv):
    """The code of ``v`` in a unit of scale ``s`` (``iv``: its inverse) and zero point ``z``."""
    tq = np.float32(v * iv) if use_inv else np.float32(v / s)
    a = abs(tq)
    r = np.float32(np.trunc(a))
    r = r + np.float32(1.0) if a - r >= np.float32(0.5) else r
    r = -r if tq < 0 else r
    r = np.float32(0.0) if r != r else r  # NaN (nonfinite='keep'): the seed's 0
    return min(max(r + z, lo_q), hi_q)  # (+ z also turns -0.0 into +0.0)


@numba.njit(**JIT)
def _quantize_run(xs, ds, cs, s, z, iv, lo_q, hi_q, use_inv, inplace):
    """One run of a unit: codes of ``xs`` in ``cs``, their values in ``xs``
    itself (``inplace``) or in ``ds`` (a buffer of the same size). (Two loops:
    one loop storing through either view does not vectorize.)"""
    if s == 0:
        q0 = min(max(z, lo_q), hi_q)
        for m in range(xs.size):
            cs[m] = np.int8(q0)
            ds[m] = np.float32(np.float32(q0 - z) * s)
    elif inplace:
        for m in range(xs.size):
            q = _int_code(xs[m], s, iv, z, lo_q, hi_q, use_inv)
            cs[m] = np.int8(q)
            xs[m] = np.float32(np.float32(q - z) * s)
    else:
        for m in range(xs.size):
            q = _int_code(xs[m], s, iv, z, lo_q, hi_q, use_inv)
            cs[m] = np.int8(q)
            ds[m] = np.float32(np.float32(q - z) * s)


@numba.njit(**JIT)
def _quantize_tile(x, start, L, g, G, u0, scales, inv, zps, lo_q, hi_q, use_inv, codes, i, end, out, o, inplace):
    """Elements ``i .. end`` of the block (one tile) quantized run by run of a
    unit: codes into ``codes``, values into ``x`` itself (``inplace``; ``out``
    is then ``x`` and ``o`` is ``i``) or into ``out`` from ``out[o]`` on."""
    while i < end:
        f = start + i
        col = f % L
        j = (f // L) * G + col // g - u0
        seg = min(end, i + min((col // g + 1) * g, L) - col)
        _quantize_run(x[i:seg], out[o:o + seg - i], codes[i:seg], scales[j], np.float32(zps[j]), inv[j],
                      lo_q, hi_q, use_inv, inplace)
        o += seg - i
        i = seg


@numba.njit(**PJIT)
def quantize_units(x, start, L, g, scales, inv, zps, qmin, qmax, use_inv, codes):
    """Codes of the block, in ``codes`` (int8: every scheme's codes fit; same size as ``x``); ``x`` becomes
    the dequantized values ``(q - zp) * scale``.

    ``q = clamp(round_half_away(x / scale) + zp, qmin, qmax)``, or with
    ``use_inv`` ``round_half_away(x * inv)`` (ggml's Q8_0 rule). A zero scale
    gives ``q = zp``. ``scales``/``inv``/``zps`` are indexed from the block's
    first unit. Work is split in fixed tiles; inside a tile the loop runs over
    runs of one unit, so the unit index is computed per run, not per element.

    All in float32 and exact: ``t = trunc(|v|)`` and ``|v| - t`` (the fraction)
    are exact, so ``t + (fraction >= 0.5)`` is ``floor(|v| + 0.5)`` of the real
    numbers; integers up to 2**24 (every clamped code) add exactly. The inner
    loops index slices from 0: with an offset index Numba's negative-index
    wrap-around check keeps LLVM from vectorizing (measured 7x slower).
    """
    G = (L + g - 1) // g
    u0 = _unit(start, L, g, G)
    n = x.size
    nt = (n + TILE - 1) // TILE
    for t in prange(nt):
        i = t * TILE
        _quantize_tile(x, start, L, g, G, u0, scales, inv, zps, np.float32(qmin), np.float32(qmax), use_inv,
                       codes, i, min(n, i + TILE), x, i, True)


@numba.njit(**PJIT)
def quantize_units_measured(x, start, L, g, scales, inv, zps, qmin, qmax, use_inv, codes):
    """:func:`quantize_units`' codes, ``x`` left as it is, with the block's stats
    as ``diff_stats(x, dequantized)`` gives them (the same tiles, sums and
    order): each tile's values go to a tile buffer, compared with the tile by
    ``diff_tile``. Returns ``(nonzero, sum_sq_err, max_abs_err, sum_sq_signal)``."""
    G = (L + g - 1) // g
    u0 = _unit(start, L, g, G)
    n = x.size
    nt, nz, sse, mx, sig = tile_slots(n)
    for t in prange(nt):
        i = t * TILE
        end = min(n, i + TILE)
        deq = np.empty(end - i, np.float32)
        _quantize_tile(x, start, L, g, G, u0, scales, inv, zps, np.float32(qmin), np.float32(qmax), use_inv,
                       codes, i, end, deq, 0, False)
        nz[t], sse[t], mx[t], sig[t] = diff_tile(deq, x[i:end])
    return fold_tiles(nz, sse, mx, sig)


@numba.njit(**PJIT)
def cut_quantize_measured(x, keys, lim, thr, offsets, ties_left, start, L, g, scales, inv, zps, qmin, qmax,
                          use_inv, codes):
    """A threshold cut then :func:`quantize_units` of what it leaves, ``x`` left as
    it is: the codes, and each stage's stats as ``diff_stats`` gives them (the
    cut's against ``x``, the quantizer's against the cut values; the same tiles,
    sums and order as ``prune_threshold_measured`` then ``quantize_units_measured``).

    The cut zeroes the elements whose key (``keys & 0x7fffffff``) is below
    ``lim``; with ``offsets`` (one per tile: the keys equal to ``thr`` in earlier
    tiles) those below ``thr`` and the first ``ties_left`` equal to it, in flat
    order instead. Returns ``(keys equal to thr, (nonzero, sum_sq_err,
    max_abs_err, sum_sq_signal) of the cut, the same of the quantizer)``."""
    G = (L + g - 1) // g
    u0 = _unit(start, L, g, G)
    n = x.size
    ranked = offsets.size > 0
    nt, nz, sse, mx, sig = tile_slots(n)
    _, qnz, qsse, qmx, qsig = tile_slots(n)
    ties = np.zeros(nt, dtype=np.int64)
    lo_q = np.float32(qmin)
    hi_q = np.float32(qmax)
    for t in prange(nt):
        lo = t * TILE
        hi = min(n, lo + TILE)
        xs = x[lo:hi]  # (0-based slices vectorize: see quantize_units)
        ks = keys[lo:hi]
        after = np.empty(hi - lo, np.float32)
        c = 0
        if ranked:
            rank = offsets[t]
            for i in range(hi - lo):
                k = ks[i] & _KEYMASK
                cut = k < thr
                if k == thr:
                    cut = rank < ties_left
                    rank += 1
                    c += 1
                after[i] = np.float32(0.0) if cut else xs[i]
        else:
            for i in range(hi - lo):
                k = ks[i] & _KEYMASK
                c += k == thr
                after[i] = np.float32(0.0) if k < lim else xs[i]
        nz[t], sse[t], mx[t], sig[t] = diff_tile(after, xs)
        ties[t] = c
        deq = np.empty(hi - lo, np.float32)
        _quantize_tile(after, start + lo, L, g, G, u0, scales, inv, zps, lo_q, hi_q, use_inv,
                       codes[lo:hi], 0, hi - lo, deq, 0, False)
        qnz[t], qsse[t], qmx[t], qsig[t] = diff_tile(deq, after)
    return ties.sum(), fold_tiles(nz, sse, mx, sig), fold_tiles(qnz, qsse, qmx, qsig)


def quantize_int8_sim(x: np.ndarray, scale: np.float32) -> None:
    """The seed's int8 on a block, in place: ``x = clamp(round_half_away(x/scale), +-127) * scale``
    (one unit for the whole block; +0.0 for codes of 0)."""
    n = x.size
    if n == 0:
        return
    if scale == 0:
        # A nonzero absmax whose scale underflows (denormals): the seed divides by
        # zero, x/0 = +-inf clamps to +-127 (0/0 and NaN give 0), times a zero scale:
        # -0.0 where x < 0, +0.0 elsewhere. (quantize_units gives every code the
        # zero point for a zero scale, the rule of the stored schemes.)
        x[...] = np.where(x < 0, np.float32(-0.0), np.float32(0.0))
        return
    s = np.array([scale], dtype=np.float32)
    quantize_units(x, 0, n, n, s, s, np.zeros(1, np.int64), -127, 127, False, np.empty(n, np.int8))


@numba.njit(**PJIT)
def dequantize_units(codes, start, L, g, scales, zps, out):
    """``out = (codes - zp) * scale`` per unit (float32)."""
    G = (L + g - 1) // g
    u0 = _unit(start, L, g, G)
    for i in prange(codes.size):
        j = _unit(start + i, L, g, G) - u0
        out[i] = np.float32(np.float32(np.int64(codes[i]) - zps[j]) * scales[j])


def pack_nibbles(nibbles: np.ndarray) -> np.ndarray:
    """Pack values 0..15 along the last axis, two per byte: element ``2i`` in the
    low nibble, ``2i+1`` in the high nibble; an odd last element pairs with 0."""
    if nibbles.shape[-1] % 2:
        pad = [(0, 0)] * (nibbles.ndim - 1) + [(0, 1)]
        nibbles = np.pad(nibbles, pad)
    lo = nibbles[..., 0::2].astype(np.uint8)
    hi = nibbles[..., 1::2].astype(np.uint8)
    return (lo | (hi << np.uint8(4))).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray, length: int) -> np.ndarray:
    """Inverse of :func:`pack_nibbles`: ``length`` values 0..15 along the last axis."""
    out = np.empty(packed.shape[:-1] + (packed.shape[-1] * 2,), dtype=np.uint8)
    out[..., 0::2] = packed & np.uint8(0x0F)
    out[..., 1::2] = packed >> np.uint8(4)
    return out[..., :length]
