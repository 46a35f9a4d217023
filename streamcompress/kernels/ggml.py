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

from ._jit import JIT, PJIT
from .quant import _unit, _unit_bounds

__all__ = ["quantize_units_ggml", "dequantize_units_affine", "pack_ggml_blocks"]


@numba.njit(**JIT)
def _code(t, top):
    """ggml's ``MIN(top, (int8_t)t)`` for ``t >= 0`` as x86 computes it: a
    non-finite ``t`` (``x * inf``: a block so tiny that ``1 / d`` overflows)
    converts to ``INT_MIN``, whose low byte is 0."""
    if not np.isfinite(t):
        return np.uint8(0)
    return np.uint8(min(top, np.float32(np.trunc(t))))


@numba.njit(**PJIT)
def quantize_units_ggml(x, start, L, g, half, with_min, d_out, m_out, codes):
    """Codes (uint8 ``q``) of the block in ``codes``, per-unit ``d`` (float32,
    before float16 rounding) in ``d_out`` and ``min`` in ``m_out`` (``_1``
    kinds; else 0), for the units the block touches (whole units only).
    ``x`` is left as it is."""
    G = (L + g - 1) // g
    u0 = _unit(start, L, g, G)
    k = d_out.size
    top = np.float32(2 * half - 1)
    for j in prange(k):
        lo, hi = _unit_bounds(j, u0, start, x.size, L, g, G)
        xs = x[lo:hi]
        cs = codes[lo:hi]
        if with_min:
            mn = np.float32(np.inf)
            mx = np.float32(-np.inf)
            for i in range(xs.size):
                v = xs[i]
                if v < mn:
                    mn = v
                if v > mx:
                    mx = v
            d = np.float32(np.float32(mx - mn) / top)
            iv = np.float32(np.float32(1.0) / d) if d != 0 else np.float32(0.0)
            for i in range(xs.size):
                t = np.float32(np.float32(np.float32(xs[i] - mn) * iv) + np.float32(0.5))
                cs[i] = _code(t, top)
            m_out[j] = mn
        else:
            amax = np.float32(0.0)
            m = np.float32(0.0)
            for i in range(xs.size):
                v = xs[i]
                if amax < abs(v):
                    amax = abs(v)
                    m = v
            d = np.float32(m / np.float32(-half))
            iv = np.float32(np.float32(1.0) / d) if d != 0 else np.float32(0.0)
            off = np.float32(half + 0.5)
            for i in range(xs.size):
                t = np.float32(np.float32(xs[i] * iv) + off)
                cs[i] = _code(t, top)
            m_out[j] = np.float32(0.0)
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
