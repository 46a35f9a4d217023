"""Quantize stages: the seed's simulated ``QuantizeInt8``, and ``Quantize``,
which stores real integer codes and scales (schemes in ``schemes.py``)."""

from __future__ import annotations

import functools

import math
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, ClassVar

import numpy as np

from .. import kernels as K
from ..errors import ConfigError
from ..layout import Block, TensorMeta
from .base import Encoding, Stage, StageRunner, ThresholdCut, merge_with
from .encodings import BLOCK_BYTES, GGMLEncoding, QuantEncoding
from .schemes import QuantGranularity, QuantScheme, ggml_fits, parse_scheme

__all__ = ["QuantizeInt8", "Quantize", "name_matches"]


@dataclass(frozen=True)
class QuantizeInt8(Stage):
    """Per-tensor symmetric int8, dequantized back to float32 (the seed's simulation).

    ``scale = max|w| / 127``; ``q = round_half_away_from_zero(w / scale)``
    clamped to [-127, 127]; ``w' = q * scale``. All-zero and empty tensors
    are unchanged. Theoretical size after: ``round(bytes * 0.25)``.
    """

    name: ClassVar[str] = "quantize_int8"
    size_factor: ClassVar[float] = 0.25

    def runner(self, meta: TensorMeta, blocks: list[Block], state: Any = None) -> StageRunner:
        return _QuantizeRunner()

    def memory_after(self, meta: TensorMeta, memory_before: int) -> int:
        v = np.float32(np.float32(memory_before) * np.float32(0.25))
        return int(np.floor(np.float64(v) + 0.5))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "configuration": {}}

    @classmethod
    def from_configuration(cls, conf: dict[str, Any]) -> QuantizeInt8:
        if conf:
            raise ConfigError(f"quantize_int8 takes no options, got {', '.join(sorted(conf))}")
        return cls()


class _QuantizeRunner(StageRunner):
    n_passes = 1

    def __init__(self) -> None:
        self.amax = np.float32(0.0)

    def observe(self, pass_index: int, block: Block, x: np.ndarray) -> None:
        m = K.absmax(x)
        if m > self.amax:
            self.amax = np.float32(m)

    @property
    def scale(self) -> np.float32:
        return np.float32(self.amax / np.float32(127.0))

    def apply(self, block: Block, x: np.ndarray, mask: np.ndarray | None) -> None:
        if self.amax == 0:
            return
        K.quantize_int8_sim(x, self.scale)

    def info(self) -> dict[str, Any]:
        return {"absmax": float(self.amax), "scale": float(self.scale)}

    splittable = True

    def take_partial(self, pass_index: int) -> np.float32:
        m, self.amax = self.amax, np.float32(0.0)
        return m

    def add_partial(self, pass_index: int, partial: np.float32 | None) -> None:
        if partial is not None and partial > self.amax:
            self.amax = np.float32(partial)

    merge_partials = merge_with(max)


def name_matches(pattern: str, name: str) -> bool:
    """``re:REGEX`` (``re.search``) or a glob matched against the whole name.

    Examples
    --------
    >>> name_matches("*.mlp.*", "model.layers.0.mlp.up_proj.weight")
    True
    >>> name_matches("re:layers\\.[01]\\.", "model.layers.12.q")
    False
    """
    if pattern.startswith("re:"):
        return re.search(pattern[3:], name) is not None
    return fnmatchcase(name, pattern)


@dataclass(frozen=True)
class Quantize(Stage):
    """Quantize with a scheme; real codes + scales unless ``simulate``.

    When it is the pipeline's last stage and ``simulate`` is false, the tensor
    ``W`` is stored as codes ``W`` (int8, or uint8 with two int4 per byte),
    ``W_scale`` and, for asymmetric schemes, ``W_zero_point`` (FORMAT.md).
    Otherwise the dequantized float32 values flow on / are written.
    ``overrides`` are ``(pattern, scheme or None)``; the first pattern matching
    a tensor's name picks its scheme (None: leave the tensor unquantized).
    """

    scheme: QuantScheme = field(default_factory=QuantScheme)
    simulate: bool = False
    overrides: tuple[tuple[str, QuantScheme | None], ...] = ()
    #: how each unit's range is chosen: ``minmax`` (the range itself), ``mse`` or ``hqq``
    #: (``kernels.observe``), for the schemes that take it (``observer_applies``); the others keep minmax
    observer: str = "minmax"
    name: ClassVar[str] = "quantize"

    def __post_init__(self) -> None:
        object.__setattr__(self, "scheme", parse_scheme(self.scheme))
        ov = []
        for item in self.overrides:
            try:
                pat, sch = item
            except (TypeError, ValueError):
                raise ConfigError(f"an override must be (pattern, scheme), got {item!r}") from None
            if pat.startswith("re:"):
                try:
                    re.compile(pat[3:])
                except re.error as e:
                    raise ConfigError(f"bad regex in override '{pat}': {e}") from None
            none = sch is None or str(sch).lower() in ("none", "f32", "float32", "skip")
            ov.append((str(pat), None if none else parse_scheme(sch, self.scheme.scale_dtype)))
        object.__setattr__(self, "overrides", tuple(ov))
        if not isinstance(self.simulate, bool):
            raise ConfigError("simulate must be true or false")
        if self.observer not in OBSERVERS:
            raise ConfigError(f"unknown observer '{self.observer}' (choose from {', '.join(OBSERVERS)})")
        schemes = [self.scheme] + [o for _, o in self.overrides if o is not None]
        if self.observer != "minmax" and not any(observer_applies(self.observer, s) for s in schemes):
            raise ConfigError(f"the {self.observer} observer does not apply to "
                              f"{', '.join(dict.fromkeys(s.spec() for s in schemes))}: it is for "
                              f"{OBSERVER_SCHEMES[self.observer]}")

    def scheme_for(self, name: str) -> QuantScheme | None:
        for pat, sch in self.overrides:
            if name_matches(pat, name):
                return sch
        return self.scheme

    def runner(self, meta: TensorMeta, blocks: list[Block], state: Any = None) -> StageRunner:
        from .base import IdentityRunner

        sch = self.scheme_for(meta.name)
        if sch is None or meta.size == 0:
            return IdentityRunner(scheme=None)
        return _SchemeRunner(sch, meta, blocks, real=not self.simulate, observer=self.observer)

    def encoded_bytes(self, meta: TensorMeta, form: str = "zarr") -> int:
        """Bytes of the tensor as stored: in a store (FORMAT.md: codes, scales, zero
        points or mins) or, ``form="gguf"``, as a GGUF's ggml blocks."""
        sch = self.scheme_for(meta.name)
        if sch is None or meta.size == 0:
            return 4 * meta.size
        if form == "gguf" and sch.ggml:
            return meta.size // 32 * BLOCK_BYTES[sch.name]
        units = math.prod(sch.scale_shape(meta.shape))
        zp = 2 * units if sch.has_min else 0 if sch.symmetric else units  # (min: float16; zero point: int8)
        return math.prod(sch.code_shape(meta.shape)) + units * np.dtype(sch.scale_dtype).itemsize + zp

    def memory_after(self, meta: TensorMeta, memory_before: int) -> int:
        return self.encoded_bytes(meta)

    def estimate(self, meta: TensorMeta, size: float) -> float:
        return size * (self.encoded_bytes(meta) / (4 * meta.size)) if meta.size else size

    def _observes(self, sch: QuantScheme, meta: TensorMeta) -> bool:
        """Whether an observer other than minmax chooses ``sch``'s ranges on ``meta``."""
        return self.observer != "minmax" and observer_applies(self.observer, sch, meta.shape)

    def block_multiple(self, meta: TensorMeta) -> int:
        sch = self.scheme_for(meta.name)
        if sch is None:
            return 1
        m = 2 if sch.packed else 1
        eg = sch.effective_granularity(meta.shape)
        if eg is QuantGranularity.GROUP:
            m = math.lcm(m, sch.group_size)
        if self._observes(sch, meta):  # (whole units in each block: see _SchemeRunner)
            L, g = sch.units(meta.shape)
            m = math.lcm(m, L if eg is QuantGranularity.CHANNEL or L % g else g)
        return m

    def min_block(self, meta: TensorMeta) -> int:
        sch = self.scheme_for(meta.name)
        if sch is None or not self._observes(sch, meta):
            return 1
        L, g = sch.units(meta.shape)
        return L if sch.effective_granularity(meta.shape) is QuantGranularity.CHANNEL or L % g else g

    def check_export(self, meta: TensorMeta, fmt: str) -> None:
        """Refuse, before any work, a tensor whose scheme or shape ``fmt`` cannot hold (GGUF)."""
        sch = self.scheme_for(meta.name)
        if fmt != "gguf" or sch is None or self.simulate:
            return
        if not sch.ggml:
            raise ConfigError(f"a GGUF output holds ggml's block types (q8_0, q4_0, q4_1, q5_0, q5_1); tensor "
                              f"'{meta.name}' would be {sch.spec()}")
        if not ggml_fits(meta.shape):
            raise ConfigError(f"tensor '{meta.name}' of shape {list(meta.shape)} cannot be {sch.spec()} in GGUF (rows "
                              "must be whole blocks of 32, 1-D or 2-D): --tensor-type it to none, or --ignore it")

    def to_dict(self) -> dict[str, Any]:
        conf: dict[str, Any] = {"scheme": self.scheme.spec(), "scale_dtype": self.scheme.scale_dtype,
                                "simulate": self.simulate}
        if self.overrides:
            conf["overrides"] = [[p, s.spec() if s else None] for p, s in self.overrides]
        if self.observer != "minmax":  # (minmax runs keep the configurations, and fingerprints, they had)
            conf["observer"] = self.observer
        return {"name": self.name, "configuration": conf}

    @classmethod
    def from_configuration(cls, conf: dict[str, Any]) -> Quantize:
        conf = dict(conf)
        unknown = set(conf) - {"scheme", "scale_dtype", "simulate", "overrides", "observer"}
        if unknown:
            raise ConfigError(f"unknown quantize option(s): {', '.join(sorted(unknown))}")
        scheme = parse_scheme(conf.get("scheme", "int8"), conf.get("scale_dtype"))
        ov = conf.get("overrides", [])
        if isinstance(ov, dict):
            ov = list(ov.items())
        return cls(scheme, bool(conf.get("simulate", False)), tuple(tuple(o) for o in ov),
                   str(conf.get("observer", "minmax")))


@functools.cache
def _e4m3() -> np.ndarray:
    """float32 values of the 256 float8 E4M3 codes (a table the kernels index)."""
    return K.e4m3_values()


#: the observers (``kernels.observe``): how a unit's range is chosen before its scale
OBSERVERS = ("minmax", "mse", "hqq")
#: what each observer other than minmax is for (``observer_applies``), as error messages say it
OBSERVER_SCHEMES = {"mse": "the int8/int4 schemes per channel or group (e.g. int4:group:32) and ggml's q4_0, "
                           "q4_1, q5_0 and q5_1",
                    "hqq": "the ggml kinds with a min, q4_1 and q5_1 (HQQ moves a float zero point; "
                           "int4_asym's integer one rounds it back to minmax's)"}
#: HQQ's published defaults (lp norm, beta, kappa, iterations)
HQQ_PARAMS = (0.7, 10.0, 1.01, 20)
#: shrink factors the MSE observer tries: 1 - i / 100 for i < 80 (GPTQ's grid and maxshrink 0.8)
MSE_STEPS = 80
_OBSERVED = (QuantGranularity.CHANNEL, QuantGranularity.GROUP)


def observer_applies(observer: str, scheme: QuantScheme, shape: tuple[int, ...] | None = None) -> bool:
    """Whether ``observer`` chooses ``scheme``'s ranges (on a tensor of ``shape``: one
    scale for the whole tensor keeps minmax); ``minmax`` always does."""
    gran = scheme.granularity if shape is None else scheme.effective_granularity(shape)
    if observer == "mse":
        return not scheme.is_float and scheme.name != "q8_0" and gran in _OBSERVED
    if observer == "hqq":
        return scheme.has_min and gran is QuantGranularity.GROUP
    return True


def _on_unit_boundary(f: int, L: int, g: int) -> bool:
    return (f % L) % g == 0


class _SchemeRunner(StageRunner):
    """Per-unit scales: from a statistic pass when units cross blocks, else per block."""

    def __init__(self, scheme: QuantScheme, meta: TensorMeta, blocks: list[Block], real: bool,
                 observer: str = "minmax") -> None:
        self.s = scheme
        self.meta = meta
        self.real = real
        self.L, self.g = scheme.units(meta.shape)
        # (a tile of block granularity spans rows: its scale always comes from a statistic pass)
        self.tiles = scheme.effective_granularity(meta.shape) is QuantGranularity.BLOCK
        self.local = not self.tiles and all(_on_unit_boundary(b.start, self.L, self.g)
                                            and _on_unit_boundary(b.start + b.size, self.L, self.g) for b in blocks)
        self.n_passes = 0 if self.local else 1
        # (an observer other than minmax needs a unit's values together: one scale per tensor keeps minmax)
        self.observer = observer if observer_applies(observer, scheme, meta.shape) else "minmax"
        if self.observer != "minmax" and not self.local:
            raise ConfigError(f"tensor '{meta.name}': the {observer} observer needs whole channels or groups in "
                              "each block, and the input's chunks split them")
        self._mx: np.ndarray | None = None
        self._mn: np.ndarray | None = None
        self._glob: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._last: tuple | None = None
        self._amax = 0.0
        # Q8_0 stored in one kernel (``apply_measured``) when every block is whole units of rows of whole units
        self._fused = real and scheme.name == "q8_0" and self.local and self.L % self.g == 0 and self.g == 32

    # -- statistics ------------------------------------------------------------
    def _block_stats(self, block: Block, x: np.ndarray):
        if self.s.symmetric:
            return K.unit_absmax(x, block.start, self.L, self.g), None
        mn, mx = K.unit_minmax(x, block.start, self.L, self.g)
        return mx, mn

    def observe(self, pass_index: int, block: Block, x: np.ndarray) -> None:
        if self._mx is None:
            units = math.prod(self.s.scale_shape(self.meta.shape))
            self._mx = np.zeros(units, np.float32)
            self._mn = np.zeros(units, np.float32)
        u0, k = K.unit_range(block.start, x.size, self.L, self.g)
        mx, mn = self._block_stats(block, x)
        at = self.s.unit_scales(self.meta.shape, u0, k)
        if isinstance(at, slice):
            np.maximum(self._mx[at], mx, out=self._mx[at])
            if mn is not None:
                np.minimum(self._mn[at], mn, out=self._mn[at])
        else:  # many units (a tile's rows) to one scale
            np.maximum.at(self._mx, at, mx)
            if mn is not None:
                np.minimum.at(self._mn, at, mn)

    splittable = True

    def take_partial(self, pass_index: int) -> Any:
        part = None if self._mx is None else (self._mx, self._mn)
        self._mx = self._mn = None
        return part

    def add_partial(self, pass_index: int, partial: Any) -> None:
        if partial is not None:
            self._mx, self._mn = self.merge_partials(None if self._mx is None else (self._mx, self._mn), partial)

    merge_partials = merge_with(lambda a, b: (np.maximum(a[0], b[0]), np.minimum(a[1], b[1])))  # (max, min)

    def merge_infos(self, infos: list[dict[str, Any]]) -> dict[str, Any]:
        return {**infos[-1], "absmax": max(i["absmax"] for i in infos)}

    def end_pass(self, pass_index: int) -> None:
        if self._mx is None:  # nothing observed (no blocks)
            units = math.prod(self.s.scale_shape(self.meta.shape))
            self._mx, self._mn = np.zeros(units, np.float32), np.zeros(units, np.float32)
        self._glob = self.s.scales_from_stats(self._mx, None if self.s.symmetric else self._mn, self.meta.name)
        self._amax = float(np.max(np.maximum(self._mx, -self._mn))) if self._mx.size else 0.0
        self._mx = self._mn = None

    def _shrunk(self, block: Block, x: np.ndarray, mx: np.ndarray, mn: np.ndarray | None):
        """The units' ranges shrunk as the MSE observer chooses (``kernels.unit_mse_shrink``)."""
        s = self.s
        p = np.empty(mx.size, np.float32)
        K.unit_mse_shrink(x, block.start, self.L, self.g, mx.astype(np.float32),
                          (mn if mn is not None else mx).astype(np.float32), s.symmetric, s.qmin, s.qmax,
                          MSE_STEPS, p)
        return (mx * p).astype(np.float32), None if mn is None else (mn * p).astype(np.float32)

    # -- apply -----------------------------------------------------------------
    def _scales(self, block: Block, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The block's units' ``(scales, inverses, zero points)``."""
        if self.local:
            mx, mn = self._block_stats(block, x)
            self._amax = max(self._amax, float(np.max(np.maximum(mx, -mn if mn is not None else mx))))
            if self.observer == "mse":
                mx, mn = self._shrunk(block, x, mx, mn)
            return self.s.scales_from_stats(mx, mn, self.meta.name)
        u0, k = K.unit_range(block.start, x.size, self.L, self.g)
        at = self.s.unit_scales(self.meta.shape, u0, k)
        return tuple(a[at] for a in self._glob)

    def apply(self, block: Block, x: np.ndarray, mask: np.ndarray | None) -> None:
        used, inv, zp = self._scales(block, x)
        if self.s.ggml and self.s.name != "q8_0":
            codes, used, zp = self._ggml(x, block.start, K.unit_range(block.start, x.size, self.L, self.g)[1])
        elif self.s.is_float:  # float8 E4M3 bit patterns
            codes = np.empty(x.size, dtype=np.uint8)
            K.quantize_units_fp8(x, block.start, self.L, self.g, used, _e4m3(), codes)
        else:
            codes = np.empty(x.size, dtype=np.int8)  # (written as they are: no int8 copy)
            K.quantize_units(x, block.start, self.L, self.g, used, inv, zp, self.s.qmin, self.s.qmax,
                             self.s.reciprocal, codes)
        if self.real:
            self._last = (block, codes, used, zp)

    def _ggml(self, x: np.ndarray, start: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ggml's Q4_0/Q4_1/Q5_0/Q5_1 (``kernels.ggml``): signed codes ``q - half``
        (``_0``) or ``q`` (``_1``), float16-rounded ``d`` and, for ``_1``, ``min``
        (in the zero point's place); ``x`` becomes the dequantized values."""
        s = self.s
        half = 8 if s.bits == 4 else 16
        if not np.isfinite(x).all():
            raise ConfigError(f"tensor '{self.meta.name}' holds inf (kept by --nonfinite keep): {s.spec()} "
                              "cannot store it; use --nonfinite zero")
        self._amax = max(self._amax, float(K.absmax(x)))
        q = np.empty(x.size, np.uint8)
        d, mn = np.empty(k, np.float32), np.empty(k, np.float32)
        p = np.empty(k if self.observer == "mse" else 0, np.float32)
        if p.size:
            K.unit_mse_shrink_ggml(x, start, self.L, self.g, half, s.has_min, MSE_STEPS, K.POW2, p)
        K.quantize_units_ggml(x, start, self.L, self.g, half, s.has_min, d, mn, q, p)
        with np.errstate(over="ignore"):
            used = d.astype(np.float16).astype(np.float32)
            mins = mn.astype(np.float16).astype(np.float32)
        if not (np.isfinite(used).all() and np.isfinite(mins).all()):
            raise ConfigError(f"tensor '{self.meta.name}': a scale of {s.spec()} overflows float16 (values up "
                              f"to {self._amax:.4g}); use int8")
        if s.has_min:
            if self.observer == "hqq":
                mins = self._hqq_mins(x, start, used, mins)
                K.quantize_units_affine(x, start, self.L, self.g, used, mins, 2 * half - 1, q)
            K.dequantize_units_affine(q, start, self.L, self.g, used, mins, x)
            return q.view(np.int8), used, mins
        codes = (q.astype(np.int16) - half).astype(np.int8)
        K.dequantize_units(codes, start, self.L, self.g, used, np.zeros(k, np.int64), x)
        return codes, used, mins

    def _hqq_mins(self, x: np.ndarray, start: int, d16: np.ndarray, m16: np.ndarray) -> np.ndarray:
        """The units' mins as HQQ moves them (``kernels.unit_hqq_min``) from minmax's
        ``m16``, for the scales ``d16``, both as stored; float16-rounded, in float32."""
        m = np.empty(d16.size, np.float32)
        lp, beta, kappa, iters = HQQ_PARAMS
        K.unit_hqq_min(x, start, self.L, self.g, d16, m16, (1 << self.s.bits) - 1, iters, lp, beta, kappa, m)
        with np.errstate(over="ignore"):
            m = m.astype(np.float16).astype(np.float32)
        if not np.isfinite(m).all():
            raise ConfigError(f"tensor '{self.meta.name}': a min of {self.s.spec()} overflows float16")
        return m

    def info(self) -> dict[str, Any]:
        out = {"scheme": self.s.spec(), "absmax": self._amax}
        if self.observer != "minmax":
            out["observer"] = self.observer
        return out

    def apply_measured(self, block: Block, x: np.ndarray, mask: np.ndarray | None, check=None) -> tuple | None:
        """Q8_0 (stored, whole units of rows of whole units): the block's codes and
        scales, its stats and its count of NaN/inf from one kernel
        (``kernels.q8_0_pass``): the same codes, scales, stats and errors as the
        statistic, ``apply``, packing and ``diff_stats`` steps (tested). Into a
        GGUF the bytes are ggml's blocks; into a store, the codes then the scales.
        Other stored integer schemes: :meth:`_int_measured`."""
        if not self._fused:
            return self._int_measured(block, x)
        n = x.size
        out = np.empty(n // 32 * 34, np.uint8)
        lay = () if self._gguf_blocks else (32, 0, 2, n)
        nz, sse, mx, sig, bad, top, flags = K.q8_0_pass(x, x.view(np.uint32), self.s.qmin, self.s.qmax, K.POW2, out,
                                                        *lay)
        if check is not None:
            check(int(bad))
        if flags & 1:
            self.s.scales_from_stats(np.array([np.inf], np.float32), None, self.meta.name)  # (its error)
        if flags & 2:
            self.s.scales_from_stats(np.array([np.float32(top)]), None, self.meta.name)
        self._amax = max(self._amax, float(top))
        if self._gguf_blocks:
            self._last = (block, out)
        else:
            self._last = (block, out[:n].view(np.int8), out[n:].view(np.float16), None)  # (scales as stored)
        return nz, sse, mx, sig

    def _int_measured(self, block: Block, x: np.ndarray) -> tuple | None:
        """Stored integer codes (not ggml's other kinds, not float8): the codes of
        ``apply`` and the block's stats from one kernel
        (``kernels.quantize_units_measured``), ``x`` left as it was."""
        if not self.real or self.s.is_float or (self.s.ggml and self.s.name != "q8_0"):
            return None
        used, inv, zp = self._scales(block, x)
        codes = np.empty(x.size, dtype=np.int8)
        got = K.quantize_units_measured(x, block.start, self.L, self.g, used, inv, zp, self.s.qmin, self.s.qmax,
                                        self.s.reciprocal, codes)
        self._last = (block, codes, used, zp)
        return got

    @property
    def fuses_cut(self) -> bool:
        """Stored symmetric integer codes of minmax scales: what a cut leaves is
        quantized in the cut's own pass (``kernels.cut_quantize_measured``)."""
        s = self.s
        return (self.real and s.symmetric and not s.is_float and not s.ggml and self.observer == "minmax")

    def apply_measured_cut(self, block: Block, x: np.ndarray, cut: ThresholdCut) -> tuple:
        """The codes of ``x`` after ``cut``, and both stages' stats, as the cut's
        ``apply_with_stats`` then :meth:`_int_measured` give them (tested)."""
        if self.local:
            if cut.offsets.size:  # the cut-off block: its cut made in a copy (once per tensor)
                cut_x = x.copy()
                K.prune_threshold(cut_x.view(np.uint32), cut.keys, cut.thr, cut.ties_left, np.zeros(0, np.uint8),
                                  False)
                mx = K.unit_absmax(cut_x, block.start, self.L, self.g)
            else:
                mx = K.unit_absmax_kept(x, cut.keys, cut.lim, block.start, self.L, self.g)
            self._amax = max(self._amax, float(np.max(mx)))
            used, inv, zp = self.s.scales_from_stats(mx, None, self.meta.name)
        else:
            used, inv, zp = self._scales(block, x)
        codes = np.empty(x.size, dtype=np.int8)
        ties, cut_stats, stats = K.cut_quantize_measured(
            x, cut.keys, cut.lim, cut.thr, cut.offsets, cut.ties_left, block.start, self.L, self.g, used, inv, zp,
            self.s.qmin, self.s.qmax, self.s.reciprocal, codes)
        self._last = (block, codes, used, zp)
        return int(ties), cut_stats, stats

    #: whether ``apply_measured`` lays its bytes out as a GGUF's blocks (set by ``encoding``)
    _gguf_blocks = False

    @property
    def measures(self) -> bool:
        return self._fused

    def encoding(self, form: str = "zarr") -> Encoding | None:
        if not self.real:
            return None
        if form == "gguf" and self.s.ggml:
            self._gguf_blocks = True
            return GGMLEncoding(self)
        return QuantEncoding(self)
