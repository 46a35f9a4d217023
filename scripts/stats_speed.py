#!/usr/bin/env python
"""What one stage's error statistics cost per element, against the kernels they measure.

Every stage reports ``(nonzero, sum_sq_err, max_abs_err, sum_sq_signal)`` of its
output against its input, summed in float64 per tile in ``LANES`` fixed lanes
(``kernels.diff_tile``): the same sums on every path (a store, a GGUF, Dask),
for any thread count and machine. This times, on one thread and on one tile in
cache (``TILE`` elements, repeated), so that memory is not what is measured:

- ``diff_tile``: the engine's statistics;
- ``element order``: the same four statistics, each sum one chain in element
  order (the engine's order before the lanes);
- ``one sum``: only ``sum_sq_err``'s chain of float64 additions, in order;
- ``four lanes``: ``sum_sq_err`` and ``sum_sq_signal`` in four interleaved
  scalar lanes (a fixed order; LLVM keeps them scalar);
- ``reassociated``: ``one sum`` and then ``diff_tile`` itself compiled with
  Numba's ``fastmath`` (LLVM may reorder the additions: other last bits, in an
  order that depends on the CPU);
- ``quantize``: ``kernels.quantize_units`` (int8 per channel) on the tile;

and prints G elements per second per thread for each.

    python scripts/stats_speed.py
"""

from __future__ import annotations

import time

import numba
import numpy as np

from streamcompress import kernels as K
from streamcompress.kernels._jit import TILE
from streamcompress.kernels.elementwise import LANES, diff_tile


@numba.njit(nogil=True)
def element_order(after, before):
    c = 0
    e = m = s = 0.0
    for i in range(after.size):
        a = np.float64(after[i])
        b = np.float64(before[i])
        c += a != 0
        d = a - b
        e += d * d
        m = max(m, abs(d))
        s += b * b
    return c, e, m, s


@numba.njit(nogil=True)
def one_sum(after, before):
    e = 0.0
    for i in range(after.size):
        d = np.float64(after[i]) - np.float64(before[i])
        e += d * d
    return e


@numba.njit(nogil=True)
def four_lanes(after, before):
    e0 = e1 = e2 = e3 = 0.0
    s0 = s1 = s2 = s3 = 0.0
    for k in range(after.size // 4):
        i = 4 * k
        y0, y1, y2, y3 = (np.float64(before[i]), np.float64(before[i + 1]), np.float64(before[i + 2]),
                          np.float64(before[i + 3]))
        d0, d1 = np.float64(after[i]) - y0, np.float64(after[i + 1]) - y1
        d2, d3 = np.float64(after[i + 2]) - y2, np.float64(after[i + 3]) - y3
        e0 += d0 * d0
        e1 += d1 * d1
        e2 += d2 * d2
        e3 += d3 * d3
        s0 += y0 * y0
        s1 += y1 * y1
        s2 += y2 * y2
        s3 += y3 * y3
    return (e0 + e1) + (e2 + e3), (s0 + s1) + (s2 + s3)


#: the same functions compiled with ``fastmath`` (LLVM may reorder their additions)
one_sum_reassociated = numba.njit(nogil=True, fastmath=True)(one_sum.py_func)
reassociated = numba.njit(nogil=True, fastmath=True)(diff_tile.py_func)


def rate(f, reps=200, rounds=15) -> float:
    """The best of ``rounds`` timings of ``reps`` calls (this machine's noise is 10-50%)."""
    f()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(reps):
            f()
        best = min(best, time.perf_counter() - t)
    return reps * TILE / best / 1e9


def main() -> int:
    numba.set_num_threads(1)
    rng = np.random.default_rng(0)
    before = rng.standard_normal(TILE).astype(np.float32)
    after = before + np.float32(0.01) * rng.standard_normal(TILE).astype(np.float32)
    L = 4096
    scales = (K.unit_absmax(before, 0, L, L) / 127).astype(np.float32)
    inv = (1 / scales).astype(np.float32)
    zp = np.zeros(scales.size, np.int64)
    codes = np.empty(TILE, np.int8)
    x = before.copy()

    def quantize():
        np.copyto(x, before)
        K.quantize_units(x, 0, L, L, scales, inv, zp, -127, 127, False, codes)

    rows = [(f"diff_tile (the engine's statistics, {LANES} lanes)", lambda: diff_tile(after, before)),
            ("the same four statistics in element order", lambda: element_order(after, before)),
            ("one sum, in element order", lambda: one_sum(after, before)),
            ("two sums in four lanes, fixed order", lambda: four_lanes(after, before)),
            ("one sum, reassociated (fastmath)", lambda: one_sum_reassociated(after, before)),
            ("all four statistics, reassociated (fastmath)", lambda: reassociated(after, before)),
            ("quantize_units, int8 per channel (with a tile copy)", quantize)]
    print(f"one thread, one tile of {TILE} float32 in cache; G elements per second\n")
    print("| kernel | G elements/s |")
    print("|---|---|")
    for name, f in rows:
        print(f"| {name} | {rate(f):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
