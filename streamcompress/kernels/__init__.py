"""Numba kernels: pure array functions on 1-D float32 blocks (no I/O, no logging)."""

from ._jit import JIT, PJIT, TILE, check_threading_layer
from .elementwise import (
    absmax,
    clip_le,
    count_nonfinite,
    count_nonzero,
    diff_stats,
    prune_threshold,
    quantize_int8_sim,
    square,
    zero_nonfinite,
)
from .lcg import random_scores, random_unit_scores
from .quant import (
    dequantize_units,
    pack_nibbles,
    quantize_units,
    unit_absmax,
    unit_minmax,
    unit_range,
    unpack_nibbles,
)
from .select import NBINS, hist16, locate_kth
from .structured import (
    accumulate_col_scores,
    accumulate_row_scores,
    apply_unit_mask,
    nm_violations,
    prune_n_m,
)

__all__ = [
    "JIT",
    "PJIT",
    "TILE",
    "check_threading_layer",
    "absmax",
    "clip_le",
    "count_nonfinite",
    "count_nonzero",
    "diff_stats",
    "prune_threshold",
    "quantize_int8_sim",
    "square",
    "zero_nonfinite",
    "random_scores",
    "random_unit_scores",
    "dequantize_units",
    "pack_nibbles",
    "quantize_units",
    "unit_absmax",
    "unit_minmax",
    "unit_range",
    "unpack_nibbles",
    "NBINS",
    "hist16",
    "locate_kth",
    "accumulate_col_scores",
    "accumulate_row_scores",
    "apply_unit_mask",
    "nm_violations",
    "prune_n_m",
]
