"""ggml's legacy block quantizers (Q4_0, Q4_1, Q5_0, Q5_1), bit-exact with the
reference rows of ``ggml-quants.c`` (and gguf-py's ``gguf.quants``).

Units are groups of ``g`` (32) along rows of ``L`` elements, as in
``kernels.quant``. Per unit, all in float32:

- ``_0`` kinds: ``m`` = the element of largest ``|x|`` (the first such),
  ``d = m / -half``, ``q = min(top, trunc(x / d + half + 0.5))``;
  the value is ``(q - half) * d``.
- ``_1`` kinds: ``d = (max - min) / top``, ``q = min(top, trunc((x - min) / d + 0.5))``;
  the value is ``q * d + min``.

``x / d`` is ``x * (1 / d)`` (``0`` when ``d == 0``) with ``d`` in float32 before
its float16 rounding, as ggml does. ``half`` is 8 (4 bits) or 16 (5 bits) and
``top = 2 * half - 1``. Codes here are ``q`` (0..top), unsigned. Where ``1 / d``
overflows (a block of denormals), ``x * (1 / d)`` is not finite and ggml's
int8 cast of it gives 0 on x86 (tested against ggml itself in
``scripts/ggml_peer.py``); the code is 0 here too (the block's ``d`` is 0 in
float16, so every value dequantizes to 0, or to ``min``).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ._jit import JIT, PJIT, TILE
from .elementwise import diff_tile, fold_tiles, tile_slots
from .quant import _unit, _unit_bounds

__all__ = ["quantize_units_ggml", "dequantize_units_affine", "pack_ggml_blocks", "q8_0_pass", "f16_round", "POW2"]


@numba.njit(**JIT)
def _code(t, top):
    """ggml's ``MIN(top, (int8_t)t)`` for ``t >= 0`` as x86 computes it: a
    non-finite ``t`` (``x * inf``: a block so tiny that ``1 / d`` overflows)
    converts to ``INT_MIN``, whose low byte is 0."""
    if not np.isfinite(t):
        return np.uint8(0)
    return np.uint8(min(top, max(np.float32(0.0), np.float32(np.trunc(t)))))  # (t < 0 only in a shrunk range)


@numba.njit(**JIT)
def ggml_range(xs, with_min):
    """A unit's range as ggml's rule takes it: ``(min, max)`` (``_1`` kinds), or
    ``(0, m)`` with ``m`` the first element of largest ``|x|`` (``_0`` kinds)."""
    if with_min:
        mn = np.float32(np.inf)
        mx = np.float32(-np.inf)
        for i in range(xs.size):
            v = xs[i]
            if v < mn:
                mn = v
            if v > mx:
                mx = v
        return mn, mx
    amax = np.float32(0.0)
    m = np.float32(0.0)
    for i in range(xs.size):
        v = xs[i]
        if amax < abs(v):
            amax = abs(v)
            m = v
    return np.float32(0.0), m


@numba.njit(**JIT)
def ggml_scale(lo, hi, p, half, with_min):
    """``(d, 1 / d, min)`` (float32, ``d`` before float16 rounding; ``1 / d`` 0 for
    ``d == 0``; ``min`` 0 for the ``_0`` kinds) of ``ggml_range``'s ``(lo, hi)`` times ``p``."""
    if with_min:
        lo = np.float32(lo * p)
        d = np.float32(np.float32(np.float32(hi * p) - lo) / np.float32(2 * half - 1))
    else:
        d = np.float32(np.float32(hi * p) / np.float32(-half))
        lo = np.float32(0.0)
    iv = np.float32(np.float32(1.0) / d) if d != 0 else np.float32(0.0)
    return d, iv, lo


@numba.njit(**JIT)
def ggml_code(v, iv, lo, half, with_min):
    """ggml's code ``q`` (0..top) of ``v`` for ``ggml_scale``'s ``1 / d`` and min."""
    top = np.float32(2 * half - 1)
    if with_min:
        return _code(np.float32(np.float32(np.float32(v - lo) * iv) + np.float32(0.5)), top)
    return _code(np.float32(np.float32(v * iv) + np.float32(half + 0.5)), top)


@numba.njit(**PJIT)
def quantize_units_ggml(x, start, L, g, half, with_min, d_out, m_out, codes, shrink):
    """Codes (uint8 ``q``) of the block in ``codes``, per-unit ``d`` (float32,
    before float16 rounding) in ``d_out`` and ``min`` in ``m_out`` (``_1``
    kinds; else 0), for the units the block touches (whole units only).
    ``shrink`` (float32 per unit, or empty: 1) scales each unit's range first
    (``--observer mse``): ``min`` and ``max``, or the largest-magnitude element,
    times it (1 leaves ggml's rule exact); codes then clamp at 0 as at ``top``.
    ``x`` is left as it is."""
    G = (L + g - 1) // g
    u0 = _unit(start, L, g, G)
    for j in prange(d_out.size):
        lo, hi = _unit_bounds(j, u0, start, x.size, L, g, G)
        xs = x[lo:hi]
        cs = codes[lo:hi]
        a, b = ggml_range(xs, with_min)
        d, iv, mn = ggml_scale(a, b, shrink[j] if shrink.size else np.float32(1.0), half, with_min)
        for i in range(xs.size):
            cs[i] = ggml_code(xs[i], iv, mn, half, with_min)
        m_out[j] = mn
        d_out[j] = d


@numba.njit(**PJIT)
def dequantize_units_affine(codes, start, L, g, scales, mins, out):
    """``out = codes * scale + min`` per unit (float32: ggml's ``_1`` kinds)."""
    G = (L + g - 1) // g
    u0 = _unit(start, L, g, G)
    for i in prange(codes.size):
        j = _unit(start + i, L, g, G) - u0
        out[i] = np.float32(np.float32(np.float32(codes[i]) * scales[j]) + mins[j])



@numba.njit(**PJIT)
def pack_ggml_blocks(q, d16, m16, bits, out):
    """ggml block bytes of ``d16.size`` blocks of 32 into ``out`` (uint8, ``d16.size *
    block bytes``): per block ``d`` (the float16 bits ``d16``, little-endian), then
    ``m`` (``m16``, when it is not empty: ``_1`` kinds), then for ``bits`` 5
    ``qh`` (bit 4 of value ``j`` in bit ``j`` of a little-endian uint32), then
    ``qs``: the 32 bytes of ``q`` for ``bits`` 8 (int8 codes as their bytes),
    else 16 bytes whose low nibbles are values 0..15 and high nibbles values
    16..31. ``q`` holds the unsigned codes (uint8)."""
    nb = d16.size
    bb = out.size // nb if nb else 0
    with_min = m16.size > 0
    for u in prange(nb):
        o = u * bb
        out[o] = np.uint8(d16[u] & 0xFF)
        out[o + 1] = np.uint8(d16[u] >> 8)
        o += 2
        if with_min:
            out[o] = np.uint8(m16[u] & 0xFF)
            out[o + 1] = np.uint8(m16[u] >> 8)
            o += 2
        base = u * 32
        if bits == 8:
            for j in range(32):
                out[o + j] = q[base + j]
            continue
        if bits == 5:
            qh = np.uint32(0)
            for j in range(32):
                qh |= np.uint32((q[base + j] >> 4) & 1) << np.uint32(j)
            for j in range(4):
                out[o + j] = np.uint8((qh >> np.uint32(8 * j)) & np.uint32(0xFF))
            o += 4
        for j in range(16):
            out[o + j] = np.uint8((q[base + j] & 0x0F) | ((q[base + 16 + j] & 0x0F) << 4))


#: 2**k as float64 at index k + 200 (powers of two by table, not pow)
POW2 = 2.0 ** np.arange(-200, 201, dtype=np.float64)


@numba.njit(**JIT)
def _f32_of_bits(key, pow2):
    """The float32 of non-negative bits ``key`` (no NaN), in float64 arithmetic."""
    ex = np.int64(key >> np.uint32(23))
    mant = np.int64(key & np.uint32(0x7FFFFF))
    if ex == 0:
        return np.float32(mant * pow2[200 - 149])
    if ex == 255:
        return np.float32(np.inf)
    return np.float32((8388608 + mant) * pow2[200 + ex - 150])


@numba.njit(**JIT)
def f16_round(v, e, pow2):
    """``(float16 bits, float32 value)`` of a float32 ``v >= 0`` rounded to float16 to
    nearest, ties to even, as numpy's ``astype(np.float16)`` (an overflow gives
    inf, ``0x7C00``); ``e``: ``2**e <= v < 2**(e + 2)`` (when ``v > 0``). In
    float64, exactly: the value over its float16 quantum, rounded with ``rint``."""
    if v == 0:
        return np.uint16(0), np.float32(0.0)
    if not v < np.inf:
        return np.uint16(0x7C00), np.float32(np.inf)
    w = np.float64(v)
    if w >= pow2[200 + e + 1]:
        e += 1
    if e < -14:  # float16 subnormal: quantum 2**-24
        r = np.rint(w * pow2[200 + 24])
        return np.uint16(r), np.float32(r * pow2[200 - 24])
    r = np.rint(w * pow2[200 + 10 - e])  # 11 significant bits
    if r == 2048.0:
        r = 1024.0
        e += 1
    if e > 15:
        return np.uint16(0x7C00), np.float32(np.inf)
    return np.uint16(((e + 15) << 10) | (np.int64(r) - 1024)), np.float32(r * pow2[200 + e - 10])


@numba.njit(**PJIT)
def q8_0_pass(x, xb, qmin, qmax, pow2, out, c_step=34, c_at=2, d_step=34, d_at=0):
    """Q8_0 of a block of whole units of 32 (``x[32 u : 32 u + 32]`` is unit ``u``;
    ``xb`` its uint32 view) in one pass, with what the generic steps give:

    - ``d = absmax / 127`` (``unit_absmax``: taken on the bits, NaN ignored),
      ``1/d`` (0 for ``d == 0``), its float16 ``d`` (``f16_round``; ``pow2``
      is ``POW2``), codes as
      ``quantize_units`` makes them with ``use_inv``;
    - ``out`` (uint8) gets unit ``u``'s float16 ``d`` bits, little-endian, at
      ``u * d_step + d_at`` and its 32 int8 codes at ``u * c_step + c_at``: by
      default ggml's 34-byte blocks (``d``, then the codes); ``32, 0, 2, n``
      puts every code first (in element order), then the ``d`` s;
    - returns ``(nonzero, sum_sq_err, max_abs_err, sum_sq_signal)`` as
      ``diff_stats(x, dequantized)`` (the same tiles, sums and order), then the
      count of NaN/inf (``count_nonfinite``), the largest absmax, and whether
      an absmax was inf (1) or a float16 ``d`` overflowed (2).

    ``x`` is not changed."""
    n = x.size
    nt, nz, sse, mx, sig = tile_slots(n)
    bad = np.zeros(nt, dtype=np.int64)
    top = np.zeros(nt, dtype=np.float32)
    flags = np.zeros(nt, dtype=np.int64)
    lo_q = np.float32(qmin)
    hi_q = np.float32(qmax)
    for t in prange(nt):
        lo = t * TILE
        hi = min(n, (t + 1) * TILE)
        nb = 0
        tp = np.float32(0.0)
        fl = 0
        deq = np.empty(hi - lo, np.float32)  # (the tile's values dequantized, codes, 1/d and d: the codes
        qt = np.empty(hi - lo, np.int8)  # and sums run over the tile after the scales)
        ivs = np.empty((hi - lo) // 32, np.float32)
        sfs = np.empty((hi - lo) // 32, np.float32)
        for u in range(lo // 32, hi // 32):
            xs = x[u * 32:u * 32 + 32]
            bs = xb[u * 32:u * 32 + 32]
            key = np.uint32(0)
            for j in range(32):
                k = bs[j] & np.uint32(0x7FFFFFFF)
                nb += k >= np.uint32(0x7F800000)
                key = max(key, k if k <= np.uint32(0x7F800000) else np.uint32(0))
            amax = _f32_of_bits(key, pow2)
            if amax == np.inf:
                fl |= 1
            tp = max(tp, amax)
            s = np.float32(amax / np.float32(127))
            iv = np.float32(np.float32(1.0) / s) if s != 0 else np.float32(0.0)
            # (2**E <= amax < 2**(E + 1), so 2**(E - 7) <= amax / 127 < 2**(E - 5))
            h, sf = f16_round(s, np.int64(key >> np.uint32(23)) - 127 - 7, pow2)
            if sf == np.inf and amax != np.inf:
                fl |= 2
            o = u * d_step + d_at
            out[o] = np.uint8(h & 0xFF)
            out[o + 1] = np.uint8(h >> 8)
            ivs[u - lo // 32] = iv if sf != 0 else np.float32(0.0)  # (a float16 d of 0: every code 0)
            sfs[u - lo // 32] = sf
        xt = x[lo:hi]
        for uu in range((hi - lo) // 32):
            iv = ivs[uu]
            sf = sfs[uu]
            xs = xt[uu * 32:uu * 32 + 32]
            qs = qt[uu * 32:uu * 32 + 32]
            ds = deq[uu * 32:uu * 32 + 32]
            for j in range(32):
                tq = np.float32(xs[j] * iv)
                a = abs(tq)
                r = np.float32(np.trunc(a))
                r = r + np.float32(1.0) if a - r >= np.float32(0.5) else r
                r = -r if tq < 0 else r
                r = np.float32(0.0) if r != r else r
                q = min(max(r + np.float32(0.0), lo_q), hi_q)
                qs[j] = np.int8(q)
                ds[j] = np.float32(q * sf)
        for uu in range((hi - lo) // 32):
            o = (lo // 32 + uu) * c_step + c_at
            for j in range(32):
                out[o + j] = np.uint8(qt[uu * 32 + j])
        nz[t], sse[t], mx[t], sig[t] = diff_tile(deq, x[lo:hi])  # (diff_stats' tile)
        bad[t] = nb
        top[t] = tp
        flags[t] = fl
    tot_top = np.float32(0.0)
    fl_all = 0
    for t in range(nt):
        tot_top = max(tot_top, top[t])
        fl_all |= flags[t]
    c, e, m, sg = fold_tiles(nz, sse, mx, sig)
    return c, e, m, sg, bad.sum(), tot_top, fl_all
