"""Kernels of structured (row / column) pruning on flat-contiguous blocks.

A block is the flat range ``[start, start + x.size)`` of a 2-D tensor with
``ncols`` columns. Unit scores are accumulated in float32, one element at a
time in flat order, exactly as a sequential ``sum::<f32>()`` would.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ._jit import PJIT

__all__ = ["accumulate_row_scores", "accumulate_col_scores", "apply_unit_mask", "prune_n_m", "nm_violations"]


@numba.njit(**PJIT)
def accumulate_row_scores(x, start, ncols, acc, squared):
    """Add the block's ``|x|`` (or ``x*x``) to ``acc[row]``, sequentially per row."""
    n = x.size
    if n == 0:
        return
    r0 = start // ncols
    r1 = (start + n - 1) // ncols
    for r in prange(r0, r1 + 1):
        lo = max(start, r * ncols) - start
        hi = min(start + n, (r + 1) * ncols) - start
        s = acc[r]
        for i in range(lo, hi):
            v = x[i]
            if squared:
                s = np.float32(s + np.float32(v * v))
            else:
                s = np.float32(s + abs(v))
        acc[r] = s


@numba.njit(**PJIT)
def _accumulate_col_scores(x, start, ncols, acc, squared, nthreads):
    """Add the block's ``|x|`` (or ``x*x``) to ``acc[col]``, rows in order."""
    n = x.size
    if n == 0:
        return
    r0 = start // ncols
    r1 = (start + n - 1) // ncols
    width = max(64, (ncols + nthreads - 1) // nthreads)
    ntile = (ncols + width - 1) // width
    for t in prange(ntile):
        c0 = t * width
        c1 = min(ncols, c0 + width)
        for r in range(r0, r1 + 1):
            base = r * ncols - start
            lo = max(c0, -base)
            hi = min(c1, n - base)
            for c in range(lo, hi):
                v = x[base + c]
                if squared:
                    acc[c] = np.float32(acc[c] + np.float32(v * v))
                else:
                    acc[c] = np.float32(acc[c] + abs(v))


def accumulate_col_scores(x, start, ncols, acc, squared):
    """Add the block's ``|x|`` (or ``x*x``) to ``acc[col]``, rows in order."""
    _accumulate_col_scores(x, start, ncols, acc, squared, numba.get_num_threads())


@numba.njit(**PJIT)
def apply_unit_mask(x, start, ncols, pruned_units, by_rows, mask, want_mask):
    """Zero the elements of pruned rows (``by_rows``) or columns; in place."""
    for i in prange(x.size):
        f = start + i
        u = f // ncols if by_rows else f % ncols
        cut = pruned_units[u] != 0
        if cut:
            x[i] = 0
        if want_mask:
            mask[i] = 0 if cut else 1


@numba.njit(**PJIT)
def prune_n_m(x, n_keep, m, squared, mask, want_mask):
    """In each run of ``m`` consecutive elements, zero the ``m - n_keep`` lowest
    scores (``|x|`` or ``x*x``), lower index first on ties; in place."""
    groups = x.size // m
    for gi in prange(groups):
        base = gi * m
        cut = np.zeros(m, dtype=np.uint8)
        for _ in range(m - n_keep):
            best = -1
            best_s = np.float32(0.0)
            for j in range(m):
                if cut[j]:
                    continue
                v = x[base + j]
                s = np.float32(v * v) if squared else abs(v)
                if best < 0 or s < best_s:
                    best = j
                    best_s = s
            cut[best] = 1
        for j in range(m):
            if cut[j]:
                x[base + j] = 0
            if want_mask:
                mask[base + j] = 0 if cut[j] else 1


@numba.njit(**PJIT)
def nm_violations(x, n_keep, m):
    """Number of ``m``-groups holding more than ``n_keep`` non-zeros."""
    groups = x.size // m
    bad = np.zeros(max(groups, 1), dtype=np.int64)
    for gi in prange(groups):
        c = 0
        for j in range(m):
            if x[gi * m + j] != 0:
                c += 1
        bad[gi] = 1 if c > n_keep else 0
    return bad.sum()
