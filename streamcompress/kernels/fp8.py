"""float8 E4M3 (``e4m3fn``: bias 7, no infinities, 448 the largest finite) codes.

``quantize_units_fp8`` is the float counterpart of ``quant.quantize_units``:
``code = e4m3(clamp(x / scale, -448, 448))`` rounded to nearest, ties to even
(what ``ml_dtypes.float8_e4m3fn`` and torch's cast do), the sign of zero kept;
``x`` becomes ``decode(code) * scale``. NaN (``nonfinite='keep'``) gives code 0,
as the int schemes give NaN code 0.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from ._jit import JIT, PJIT
from .quant import _unit

__all__ = ["e4m3_values", "quantize_units_fp8", "dequantize_units_fp8"]


def e4m3_values() -> np.ndarray:
    """float32 value of each of the 256 codes (NaN for 0x7F and 0xFF)."""
    out = np.empty(256, np.float32)
    for c in range(256):
        sign = -1.0 if c & 0x80 else 1.0
        e, m = (c >> 3) & 0xF, c & 0x7
        if e == 0xF and m == 0x7:
            out[c] = np.nan
        elif e == 0:
            out[c] = sign * m * 2.0 ** -9
        else:
            out[c] = sign * (1 + m / 8) * 2.0 ** (e - 7)
    return out


@numba.njit(**JIT)
def _rne(t):
    """Round float ``t >= 0`` to the nearest integer, ties to even (exact in float64)."""
    r = math.floor(t)
    f = t - r
    if f > 0.5 or (f == 0.5 and (np.int64(r) & 1) == 1):
        r += 1.0
    return np.int64(r)


@numba.njit(**JIT)
def _encode(v):
    """E4M3 code of float32 ``v`` with ``|v| <= 448`` (or NaN), round to nearest even.

    In float64, exactly: below 2**-6 the steps are 2**-9 (subnormal codes 0..8, 8
    being the smallest normal); above, ``|v| = fr * 2**ex`` and the 3-bit mantissa
    is ``rne(|v| / 2**(ex - 4)) - 8`` (16 carries into the exponent)."""
    neg = v < 0 or (v == 0 and math.copysign(1.0, v) < 0)
    sign = np.uint8(0x80) if neg else np.uint8(0)
    a = abs(np.float64(v))
    if a != a:
        return np.uint8(0)
    if a < 0.015625:
        return np.uint8(sign | np.uint8(_rne(a * 512.0)))
    fr, ex = math.frexp(a)
    q = _rne(fr * 16.0)  # |v| / 2**(ex - 4), in [8, 16]
    e = np.int64(ex) - 1 + 7
    if q == 16:
        q = 8
        e += 1
    return np.uint8(sign | np.uint8((e << 3) | (q - 8)))


@numba.njit(**PJIT)
def quantize_units_fp8(x, start, L, g, scales, values, codes):
    """Codes of the block in ``codes`` (uint8), ``x`` becomes ``values[code] * scale``
    per unit (see ``quant.quantize_units`` for units; a zero scale gives code 0)."""
    G = (L + g - 1) // g
    u0 = _unit(start, L, g, G)
    hi = np.float32(448.0)
    for i in prange(x.size):
        s = scales[_unit(start + i, L, g, G) - u0]
        if s == 0:
            codes[i] = np.uint8(0)
            x[i] = np.float32(0.0)
            continue
        t = np.float32(x[i] / s)
        t = min(max(t, -hi), hi) if t == t else t
        c = _encode(t)
        codes[i] = c
        x[i] = np.float32(values[c] * s)


@numba.njit(**PJIT)
def dequantize_units_fp8(codes, start, L, g, scales, values, out):
    """``out = values[code] * scale`` per unit (float32)."""
    G = (L + g - 1) // g
    u0 = _unit(start, L, g, G)
    for i in prange(codes.size):
        out[i] = np.float32(values[codes[i]] * scales[_unit(start + i, L, g, G) - u0])
