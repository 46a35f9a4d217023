"""Numba kernels: pure array functions on 1-D blocks (no I/O, no logging).

Loaded lazily (PEP 562): importing the package does not import numba, so the
CLI's ``--help`` and argument errors stay fast; the first kernel used loads it.
"""

from importlib import import_module

_WHERE = {
    "JIT": "_jit",
    "PJIT": "_jit",
    "TILE": "_jit",
    "check_threading_layer": "threads",
    "absmax": "elementwise",
    "clip_le": "elementwise",
    "count_nonfinite": "elementwise",
    "count_nonzero": "elementwise",
    "cut_below": "elementwise",
    "cut_plan": "elementwise",
    "diff_stats": "elementwise",
    "prune_threshold": "elementwise",
    "prune_threshold_measured": "elementwise",
    "quantize_int8_sim": "quant",
    "square": "elementwise",
    "zero_nonfinite": "elementwise",
    "widen_bf16": "elementwise",
    "random_scores": "lcg",
    "random_unit_scores": "lcg",
    "dequantize_units": "quant",
    "tile_of_units": "quant",
    "quantize_units_ggml": "ggml",
    "unit_mse_shrink": "observe",
    "unit_mse_shrink_ggml": "observe",
    "unit_hqq_min": "observe",
    "quantize_units_affine": "observe",
    "dequantize_units_affine": "ggml",
    "pack_ggml_blocks": "ggml",
    "q8_0_pass": "ggml",
    "f16_round": "ggml",
    "POW2": "ggml",
    "e4m3_values": "fp8",
    "quantize_units_fp8": "fp8",
    "dequantize_units_fp8": "fp8",
    "pack_nibbles": "quant",
    "quantize_units": "quant",
    "quantize_units_measured": "quant",
    "cut_quantize_measured": "quant",
    "unit_absmax_kept": "quant",
    "unit_absmax": "quant",
    "unit_minmax": "quant",
    "unit_range": "quant",
    "unpack_nibbles": "quant",
    "NBINS": "select",
    "hist16": "select",
    "BandHistogram": "select",
    "locate_kth": "select",
    "accumulate_col_scores": "structured",
    "accumulate_row_scores": "structured",
    "apply_unit_mask": "structured",
    "nm_violations": "structured",
    "prune_n_m": "structured",
}

__all__ = sorted(_WHERE)


def __getattr__(name):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
