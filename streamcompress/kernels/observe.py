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

For ggml's Q4_0 / Q5_0 / Q4_1 / Q5_1 (``unit_mse_shrink_ggml``) the same grid
scales the largest-magnitude element (``_0``) or the min and the max (``_1``)
before ggml's rule makes ``d`` (and the min), and each candidate is judged as
stored: codes from the float32 ``1 / d`` as ggml makes them (clamped at 0),
values from the float16 ``d`` and min.

``hqq`` (Badri and Shaji's Half-Quadratic Quantization, with its published
defaults: ``lp = 0.7``, ``beta = 10``, ``kappa = 1.01``, 20 iterations) for
the ggml ``_1`` kinds, whose ``min`` is a float zero point: the scale ``d``
stays minmax's (float16, as stored); the min is moved to fit the lp-norm (``p < 1``) of the error,
alternating a shrinkage of the error ``e = shrink(x - (q d + m))`` with the
closed-form min ``m = mean(x - e - q d)``, ``beta`` growing by ``kappa``. As
HQQ's loop, a unit stops at its first step that does not lower its mean
``|x - (q d + m)|``; unlike HQQ's (whose test is over the whole tensor, and
which returns the min after that step), each unit stops on its own and keeps
the best min it measured, so a tensor's result does not depend on its
chunking. Codes round to nearest (half away from zero), as the stored form.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from ._jit import JIT, PJIT
from .ggml import f16_round, ggml_code, ggml_range, ggml_scale
from .quant import _unit, _unit_bounds

__all__ = ["unit_mse_shrink", "unit_mse_shrink_ggml", "unit_hqq_min", "quantize_units_affine"]


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


@numba.njit(**JIT)
def _round_half_away64(t):
    r = np.floor(abs(t) + 0.5)
    return -r if t < 0 else r


@numba.njit(**JIT)
def _hqq_unit(xs, d, m, top, iters, lp, beta, kappa):
    """The min HQQ settles on for one unit (float64; see the module docstring)."""
    n = xs.size
    if d == 0 or n == 0:
        return m
    best = np.inf
    bm = m
    for _ in range(iters):
        err = 0.0
        acc = 0.0
        for i in range(n):
            v = np.float64(xs[i])
            q = min(max(_round_half_away64((v - m) / d), 0.0), top)
            e = v - (q * d + m)
            a = abs(e)
            err += a
            we = 0.0
            if a > 0:
                t = a - (1.0 / beta) * a ** (lp - 1.0)
                if t > 0:
                    we = t if e > 0 else -t
            acc += (v - we) - q * d
        if err < best:
            best = err
            bm = m
        else:
            break
        m = acc / n
        beta *= kappa
    return bm


@numba.njit(**PJIT)
def unit_hqq_min(x, start, L, g, d, m, top, iters, lp, beta, kappa, out):
    """``out[j]``: the min (float32) HQQ gives unit ``j`` of the block (whole units
    only) from its scale ``d[j]`` (kept) and minmax's min ``m[j]``; codes ``0..top``."""
    G = (L + g - 1) // g
    u0 = _unit(start, L, g, G)
    for j in prange(d.size):
        lo, hi = _unit_bounds(j, u0, start, x.size, L, g, G)
        out[j] = np.float32(_hqq_unit(x[lo:hi], np.float64(d[j]), np.float64(m[j]), np.float64(top),
                                      iters, lp, beta, kappa))


@numba.njit(**PJIT)
def quantize_units_affine(x, start, L, g, d, m, top, codes):
    """Codes ``q = clamp(round_half_away((x - m) / d), 0, top)`` (uint8) of the block
    for per-unit ``d`` and ``m`` (float32, as stored; ``d == 0`` gives 0)."""
    G = (L + g - 1) // g
    u0 = _unit(start, L, g, G)
    hi_q = np.float32(top)
    for j in prange(d.size):
        lo, hi = _unit_bounds(j, u0, start, x.size, L, g, G)
        xs = x[lo:hi]
        cs = codes[lo:hi]
        dj = d[j]
        mj = m[j]
        for i in range(xs.size):
            if dj == 0:
                cs[i] = 0
            else:
                r = _round_half_away(np.float32(np.float32(xs[i] - mj) / dj))
                cs[i] = np.uint8(min(max(r, np.float32(0.0)), hi_q))


@numba.njit(**JIT)
def _f16v(v, pow2):
    """``v`` (float32) rounded to float16 as numpy rounds it, as float32 (any sign)."""
    a = abs(v)
    if a == 0 or not a < np.inf:
        return v
    _, e = math.frexp(a)
    r = f16_round(np.float32(a), e - 1, pow2)[1]
    return r if v > 0 else -r


@numba.njit(**JIT)
def _ggml_sq_error(xs, p, half, with_min, lo, hi, pow2):
    """Squared error of one unit stored as ggml's kind with its range
    (``ggml_range``'s ``lo, hi``) times ``p``: its codes as ``quantize_units_ggml``
    makes them, its values from the float16 ``d`` and min."""
    d, iv, mn = ggml_scale(lo, hi, p, half, with_min)
    d16 = _f16v(d, pow2)
    m16 = _f16v(mn, pow2)
    e = 0.0
    for i in range(xs.size):
        q = ggml_code(xs[i], iv, mn, half, with_min)
        if with_min:
            r = np.float32(np.float32(np.float32(q) * d16) + m16)
        else:
            r = np.float32(np.float32(np.float32(np.int64(q) - half)) * d16)
        dd = np.float64(r) - np.float64(xs[i])
        e += dd * dd
    return e


@numba.njit(**PJIT)
def unit_mse_shrink_ggml(x, start, L, g, half, with_min, steps, pow2, out):
    """``out[j]``: the shrink factor (float32) of unit ``j`` of the block (whole units
    only) stored as ggml's ``_0`` (``with_min`` false) or ``_1`` kind (``half``: 8 for
    4 bits, 16 for 5): the first of least squared error (see the module docstring)."""
    G = (L + g - 1) // g
    u0 = _unit(start, L, g, G)
    for j in prange(out.size):
        lo, hi = _unit_bounds(j, u0, start, x.size, L, g, G)
        xs = x[lo:hi]
        a, b = ggml_range(xs, with_min)
        best = np.inf
        bp = np.float32(1.0)
        for i in range(steps):
            p = np.float32(1.0 - i / 100.0)
            e = _ggml_sq_error(xs, p, half, with_min, a, b, pow2)
            if e < best:
                best = e
                bp = p
        out[j] = bp
