"""Quantization schemes: what a ``Quantize`` stage stores (see FORMAT.md).

A scheme is ``NAME[:GRANULARITY[:GROUP_SIZE]]``, e.g. ``int8``,
``int8:channel``, ``int4:group:64``, ``int8_asym:group:128``, ``q8_0``,
``fp8:channel`` (float8 E4M3 codes, scale ``absmax / 448``), ``fp8:block``
(one scale per 128x128 tile of a matrix, llm-compressor's FP8_BLOCK).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from ..errors import ConfigError
from ._parse import parse_count, parse_enum

__all__ = ["QuantGranularity", "QuantScheme", "parse_scheme", "SCHEME_NAMES"]


class QuantGranularity(str, Enum):
    TENSOR = "tensor"
    CHANNEL = "channel"
    GROUP = "group"
    BLOCK = "block"


#: name -> (bits, symmetric, qmin, qmax)
_NAMES = {
    "int8": (8, True, -127, 127),
    "int8_asym": (8, False, -128, 127),
    "int4": (4, True, -7, 7),
    "int4_asym": (4, False, 0, 15),
    "q8_0": (8, True, -127, 127),
    "q4_0": (4, True, -8, 7),  # ggml's legacy blocks (kernels.ggml): codes q - 8
    "q4_1": (4, False, 0, 15),  # ... value q * d + min (a float16 min per block, not a zero point)
    "q5_0": (5, True, -16, 15),
    "q5_1": (5, False, 0, 31),
    "fp8": (8, True, -448, 448),  # float8 E4M3 (e4m3fn): codes are its bit patterns
}
#: largest finite float8 E4M3 value
FP8_MAX = 448.0
SCHEME_NAMES = tuple(_NAMES)
#: default tile edge of ``block`` granularity (llm-compressor's FP8_BLOCK: 128x128)
BLOCK_EDGE = 128
_DEFAULT_GRANULARITY = {"int8": "tensor", "int8_asym": "tensor", "int4": "group", "int4_asym": "group",
                        "q8_0": "group", "fp8": "channel", "q4_0": "group", "q4_1": "group", "q5_0": "group",
                        "q5_1": "group"}
#: ggml's block types: groups of 32 along the last axis, float16 scales (GGUF writes them as they are)
GGML_BLOCKS = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1")


def ggml_fits(shape: tuple[int, ...]) -> bool:
    """A ggml block type can hold a tensor of ``shape`` in GGUF: 1-D or 2-D, its
    rows whole blocks of 32."""
    return len(shape) in (1, 2) and shape[-1] % 32 == 0


@dataclass(frozen=True)
class QuantScheme:
    """One quantization format.

    Examples
    --------
    >>> s = parse_scheme("int4:group:64")
    >>> (s.bits, s.symmetric, s.group_size, s.qmin, s.qmax)
    (4, True, 64, -7, 7)
    >>> parse_scheme("q8_0").scale_dtype
    'float16'
    """

    name: str = "int8"
    granularity: QuantGranularity = QuantGranularity.TENSOR
    group_size: int | None = None  # None: 128 for block granularity (a tile's edge), else 32
    scale_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.name not in _NAMES:
            raise ConfigError(f"unknown quantization scheme '{self.name}' (choose from {', '.join(_NAMES)})")
        object.__setattr__(self, "granularity",
                           parse_enum(QuantGranularity, self.granularity, "quantization granularity"))
        if self.group_size is None:
            object.__setattr__(self, "group_size", BLOCK_EDGE if self.granularity is QuantGranularity.BLOCK else 32)
        gs = parse_count(self.group_size, "group_size")
        if gs < 1:
            raise ConfigError("group_size must be at least 1")
        if self.bits == 4 and gs % 2:
            raise ConfigError(f"int4 group_size must be even (two codes per byte), got {gs}")
        object.__setattr__(self, "group_size", gs)
        if self.scale_dtype not in ("float32", "float16"):
            raise ConfigError(f"scale_dtype must be float32 or float16, got '{self.scale_dtype}'")
        if self.granularity is QuantGranularity.BLOCK and self.name != "fp8":
            raise ConfigError(f"block granularity (square tiles of a matrix) is for fp8 only, got "
                              f"'{self.name}:block': use fp8:block, or {self.name}:group")
        if self.ggml:
            if self.granularity is not QuantGranularity.GROUP or gs != 32 or self.scale_dtype != "float16":
                raise ConfigError(f"{self.name} is fixed: groups of 32 along the last axis, float16 scales")

    @property
    def bits(self) -> int:
        return _NAMES[self.name][0]

    @property
    def symmetric(self) -> bool:
        return _NAMES[self.name][1]

    @property
    def qmin(self) -> int:
        return _NAMES[self.name][2]

    @property
    def qmax(self) -> int:
        return _NAMES[self.name][3]

    @property
    def is_float(self) -> bool:
        """Codes are float8 E4M3 bit patterns (``fp8``), not integers."""
        return self.name == "fp8"

    @property
    def ggml(self) -> bool:
        """One of ggml's block types (``GGML_BLOCKS``)."""
        return self.name in GGML_BLOCKS

    @property
    def has_min(self) -> bool:
        """ggml's ``_1`` kinds: ``value = q * d + min``, a float16 ``min`` per unit (``W_min``)."""
        return self.name in ("q4_1", "q5_1")

    @property
    def packed(self) -> bool:
        return self.bits == 4

    @property
    def reciprocal(self) -> bool:
        """ggml's Q8_0 rounds ``x * (1/d)``; the other schemes round ``x / scale``."""
        return self.name == "q8_0"

    def effective_granularity(self, shape: tuple[int, ...]) -> QuantGranularity:
        """Channel needs >= 2 dims, group >= 1 dim, block exactly 2; otherwise one
        scale for the tensor."""
        g = self.granularity
        if g is QuantGranularity.BLOCK:
            ok = len(shape) == 2 and shape[0] > 0 and shape[1] > 0
            return g if ok else QuantGranularity.TENSOR
        if g is QuantGranularity.GROUP and len(shape) >= 1 and shape[-1] > 0:
            return g
        if g is QuantGranularity.CHANNEL and len(shape) >= 2 and shape[0] > 0:
            return g
        return QuantGranularity.TENSOR

    def units(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """``(L, g)`` of the unit layout (see ``kernels.quant``) for ``shape``."""
        n = max(math.prod(shape), 1)
        eg = self.effective_granularity(shape)
        if eg in (QuantGranularity.GROUP, QuantGranularity.BLOCK):  # (block: rows of a tile are units)
            return shape[-1], self.group_size
        if eg is QuantGranularity.CHANNEL:
            per = max(n // shape[0], 1)
            return per, per
        return n, n

    def scale_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        eg = self.effective_granularity(shape)
        if eg is QuantGranularity.GROUP:
            return tuple(shape[:-1]) + (-(-shape[-1] // self.group_size),)
        if eg is QuantGranularity.BLOCK:
            return tuple(-(-d // self.group_size) for d in shape)
        if eg is QuantGranularity.CHANNEL:
            return (shape[0],) + (1,) * (len(shape) - 1)
        return (1,)

    def unit_scales(self, shape: tuple[int, ...], u0: int, k: int) -> np.ndarray | slice:
        """Where units ``u0 .. u0+k`` (see ``units``) find their scales in the flat
        scale array: a slice, or for block granularity (one scale per tile, the
        tile's rows of ``group_size`` elements its units) an index array."""
        if self.effective_granularity(shape) is not QuantGranularity.BLOCK:
            return slice(u0, u0 + k)
        from ..kernels import tile_of_units

        return tile_of_units(shape[-1], self.group_size, u0, k)

    def code_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.packed and len(shape) >= 1:
            return tuple(shape[:-1]) + (-(-shape[-1] // 2),)
        return tuple(shape)

    @property
    def code_dtype(self) -> str:
        return "uint8" if self.packed or self.is_float else "int8"

    def scales_from_stats(self, mx: np.ndarray, mn: np.ndarray | None,
                          tensor: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(scale used, reciprocal, zero point)`` per unit from absmax (symmetric)
        or (min, max) (asymmetric). ``scale used`` is already rounded to ``scale_dtype``.
        An infinite value (kept by ``nonfinite="keep"``) or a scale past the
        scale dtype's range is a :class:`ConfigError` naming ``tensor``."""
        mx = mx.astype(np.float32)
        if not (np.isfinite(mx).all() and (mn is None or np.isfinite(mn).all())):
            raise ConfigError(f"tensor '{tensor}' holds inf (kept by --nonfinite keep): {self.spec()} cannot "
                              "store an infinite scale; use --nonfinite zero, or --quantize int8 --simulate "
                              "(the seed's stage: the tensor turns NaN)")
        if self.symmetric:
            s = (mx / np.float32(self.qmax)).astype(np.float32)  # (fp8: absmax / 448, as compressed-tensors)
            zp = np.zeros(s.shape, dtype=np.int64)
        else:
            lo = np.minimum(mn.astype(np.float32), np.float32(0))
            hi = np.maximum(mx, np.float32(0))
            s = ((hi - lo) / np.float32(self.qmax - self.qmin)).astype(np.float32)
        with np.errstate(divide="ignore", over="ignore"):
            inv = np.where(s == 0, np.float32(0), np.float32(1) / np.where(s == 0, 1, s)).astype(np.float32)
            used = s.astype(self.scale_dtype).astype(np.float32)
        if not np.isfinite(used).all():
            fix = "use --scale-dtype float32" if not self.ggml else f"{self.name} keeps float16 scales: use int8"
            raise ConfigError(f"tensor '{tensor}': a scale of {self.spec()} overflows {self.scale_dtype} (values "
                              f"up to {float(np.max(np.abs(mx))):.4g}); {fix}")
        if not self.symmetric:
            with np.errstate(divide="ignore", invalid="ignore"):
                t = np.where(used == 0, 0, (np.float32(self.qmin) - lo / np.where(used == 0, 1, used)))
            t = t.astype(np.float32).astype(np.float64)
            zp = np.clip(np.where(t < 0, -np.floor(-t + 0.5), np.floor(t + 0.5)), self.qmin, self.qmax)
            zp = zp.astype(np.int64)
        return used, inv, zp

    def spec(self) -> str:
        if self.ggml:
            return self.name
        if self.granularity in (QuantGranularity.GROUP, QuantGranularity.BLOCK):
            return f"{self.name}:{self.granularity.value}:{self.group_size}"
        return f"{self.name}:{self.granularity.value}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "granularity": self.granularity.value, "group_size": self.group_size,
                "scale_dtype": self.scale_dtype}

    def format_attrs(self, shape: tuple[int, ...]) -> dict[str, Any]:
        """The array attribute ``quantization`` that lets any reader dequantize."""
        eg = self.effective_granularity(shape)
        return {
            "scheme": self.spec(), "bits": self.bits, "symmetric": self.symmetric,
            "granularity": eg.value,
            "group_size": self.group_size if eg in (QuantGranularity.GROUP, QuantGranularity.BLOCK) else None,
            "qmin": self.qmin, "qmax": self.qmax, "packed": self.packed,
            "scale_dtype": self.scale_dtype, "shape": list(shape), "dtype": "float32",
            "type": "float" if self.is_float else "int",
            "scale": "_scale", "zero_point": None if self.symmetric or self.has_min else "_zero_point",
            **({"min": "_min"} if self.has_min else {}),
        }


def parse_scheme(text: str | QuantScheme, scale_dtype: str | None = None) -> QuantScheme:
    """``NAME[:GRANULARITY[:GROUP_SIZE]]`` -> :class:`QuantScheme`."""
    if isinstance(text, QuantScheme):
        return text
    parts = str(text).strip().lower().split(":")
    name = parts[0]
    if name not in _NAMES:
        raise ConfigError(f"unknown quantization scheme '{text}' (choose from {', '.join(_NAMES)})")
    gran = parts[1] if len(parts) > 1 else _DEFAULT_GRANULARITY[name]
    gs = None
    if len(parts) > 2:
        try:
            gs = int(parts[2])
        except ValueError:
            raise ConfigError(f"group size in '{text}' is not an integer") from None
    if len(parts) > 3:
        raise ConfigError(f"cannot read scheme '{text}' (NAME[:GRANULARITY[:GROUP_SIZE]])")
    sd = "float16" if name in GGML_BLOCKS else (scale_dtype or "float32")
    return QuantScheme(name, gran, gs, sd)

