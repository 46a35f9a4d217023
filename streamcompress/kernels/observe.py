"""Observers: how a unit's range is chosen before its scale (``minmax`` is the
range itself, ``unit_absmax`` / ``unit_minmax``).

``mse`` (GPTQ's and llm-compressor's MSE observer, with the squared error):
for each unit, the shrink factor ``p = 1 - i / 100`` (``i < steps``, 80 by
default: down to 0.21) whose clipped range ``p * max`` (and ``p * min``)
gives the least squared error once quantized and dequantized; the first such
``p`` on ties, so ``p = 1`` (minmax) wins unless a smaller range does better.
Each candidate is judged exactly as it would be stored: its scale and zero
point as ``QuantScheme.scales_from_stats`` makes them from the clipped range
(float32 scales), its codes as ``quantize_units`` rounds them, the error
summed in float64 in element order.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ._jit import JIT, PJIT
from .quant import _unit, _unit_bounds

__all__ = ["unit_mse_shrink"]


@numba.njit(**JIT)
def _round_half_away(t):
    a = abs(t)
    r = np.float32(np.trunc(a))
    r = r + np.float32(1.0) if a - r >= np.float32(0.5) else r
    return -r if t < 0 else r


@numba.njit(**JIT)
def _candidate(mx, mn, p, symmetric, qmin, qmax):
    """``(scale, zero point)`` of the range shrunk by ``p``, as ``scales_from_stats``."""
    if symmetric:
        a = np.float32(mx * p)
        return np.float32(a / np.float32(qmax)), np.float32(0.0)
    lo = min(np.float32(mn * p), np.float32(0.0))
    hi = max(np.float32(mx * p), np.float32(0.0))
    s = np.float32(np.float32(hi - lo) / np.float32(qmax - qmin))
    if s == 0:
        return s, np.float32(min(max(0.0, qmin), qmax))
    t = np.float64(np.float32(np.float32(qmin) - np.float32(lo / s)))
    z = -np.floor(-t + 0.5) if t < 0 else np.floor(t + 0.5)
    return s, np.float32(min(max(z, np.float64(qmin)), np.float64(qmax)))


@numba.njit(**JIT)
def _sq_error(xs, s, z, lo_q, hi_q):
    """Squared error of ``xs`` quantized with ``(s, z)`` (``quantize_units``' rule, ``x / s``)."""
    e = 0.0
    for i in range(xs.size):
        v = xs[i]
        if s == 0:
            q = min(max(z, lo_q), hi_q)
        else:
            r = _round_half_away(np.float32(v / s))
            r = np.float32(0.0) if r != r else r
            q = min(max(r + z, lo_q), hi_q)
        d = np.float64(np.float32(np.float32(q - z) * s)) - np.float64(v)
        e += d * d
    return e


@numba.njit(**PJIT)
def unit_mse_shrink(x, start, L, g, mx, mn, symmetric, qmin, qmax, steps, out):
    """``out[j]``: the shrink factor (float32) of unit ``j`` of the block (whole
    units only), from its max ``mx[j]`` and min ``mn[j]`` (``minmax``'s; ``mn`` unused
    when ``symmetric``). See the module docstring."""
    G = (L + g - 1) // g
    u0 = _unit(start, L, g, G)
    lo_q = np.float32(qmin)
    hi_q = np.float32(qmax)
    for j in prange(mx.size):
        lo, hi = _unit_bounds(j, u0, start, x.size, L, g, G)
        xs = x[lo:hi]
        best = np.inf
        bp = np.float32(1.0)
        for i in range(steps):
            p = np.float32(1.0 - i / 100.0)
            s, z = _candidate(mx[j], mn[j], p, symmetric, qmin, qmax)
            e = _sq_error(xs, s, z, lo_q, hi_q)
            if e < best:
                best = e
                bp = p
        out[j] = bp
