"""``--target-bpw``: one measuring pass of every candidate scheme over the selected
tensors, then the exact choice of a scheme per tensor within the bit budget."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

from ..config import CompressionConfig
from ..errors import ConfigError, EmptyModel
from ..formats.memory import NullSink
from ..stages import Quantize
from ..stages.probe import SchemeProbe, default_candidates, plan_bits
from ..stages.schemes import QuantScheme, ggml_fits
from .compress import _compress
from .local import LocalExecutor
from .options import EngineOptions
from .plan import _prepare, load_sources

__all__ = ["BitPlan", "plan_bit_budget", "OBJECTIVES"]

#: what the bit budget minimizes: the sum of each tensor's squared error over its sum of squares, or the plain sum
OBJECTIVES = ("relative", "sse")


@dataclass
class BitPlan:
    """The scheme chosen for each selected tensor, and what it costs."""

    target_bpw: float
    candidates: tuple[QuantScheme, ...]
    observer: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    exact: bool = True
    objective: str = "relative"
    #: the output whose stored bits were counted: ``zarr`` or ``gguf``
    form: str = "zarr"

    @property
    def params(self) -> int:
        return sum(r["params"] for r in self.rows)

    @property
    def bits(self) -> int:
        return sum(r["bits"] for r in self.rows)

    @property
    def sse(self) -> float:
        return sum(r["sse"] for r in self.rows)

    def bits_per_weight(self) -> float:
        return self.bits / self.params if self.params else 0.0

    def quantize_stage(self) -> Quantize:
        """The quantize stage that applies the plan (one exact-name override per tensor),
        each with its candidate as measured (its scale dtype too)."""
        by_spec = {c.spec(): c for c in self.candidates}
        ov = tuple((f"re:^{re.escape(r['name'])}$", by_spec[r["scheme"]]) for r in self.rows)
        return Quantize(self.candidates[0], overrides=ov, observer=self.observer)

    def to_dict(self) -> dict[str, Any]:
        return {"target_bpw": self.target_bpw, "bits_per_weight": self.bits_per_weight(), "exact": self.exact,
                "candidates": [c.spec() for c in self.candidates],
                "scale_dtypes": [c.scale_dtype for c in self.candidates], "observer": self.observer,
                "objective": self.objective, "form": self.form, "sum_sq_err": self.sse, "tensors": self.rows}

    def table(self) -> str:
        width = max([len(r["name"]) for r in self.rows] + [6])
        lines = [f"{'tensor':<{width}}  {'scheme':<16} {'bits/w':>7} {'mse':>11}"]
        for r in self.rows:
            lines.append(f"{r['name']:<{width}}  {r['scheme']:<16} {r['bits'] / r['params']:>7.3f} "
                         f"{r['sse'] / r['params']:>11.4g}")
        lines.append(f"bit budget {self.target_bpw:g}: {self.bits_per_weight():.4f} bits per weight over "
                     f"{len(self.rows)} tensors ({self.params} params), total squared error {self.sse:.6g}"
                     + ("" if self.exact else " (the search was thinned: near-optimal)"))
        return "\n".join(lines)


def plan_bit_budget(tensors: Any, config: CompressionConfig, target_bpw: float,
                    candidates: tuple[str | QuantScheme, ...] | None = None, observer: str = "minmax",
                    options: EngineOptions | None = None, objective: str = "relative",
                    form: str = "zarr") -> BitPlan:
    """Measure each candidate on each tensor ``config`` selects (one streaming pass,
    nothing written), then choose a candidate per tensor minimizing the total
    squared error with at most ``target_bpw`` stored bits per weight over those
    tensors (``stages.probe.plan_bits``: exact). ``config``'s stages are not
    used: only its selection (``ignore``, ``include``, ``skip_1d``, ...).

    ``objective``: ``relative`` (default) weighs each tensor's squared error by
    1 / its sum of squares, so the sum is of each tensor's noise-to-signal
    ratio: a layer's output noise follows its weights' relative error, whatever
    their scale; ``sse`` is the plain total squared error (large-valued
    tensors then count for more). ``form``: the output whose stored bits are
    counted, a store (``zarr``) or a GGUF (``gguf``: the ggml kinds as blocks).
    ``candidates``: by default ``stages.probe.default_candidates(form)``; into a
    GGUF only ggml's block types, 1-D tensors are left out (they stay float
    there, as ``compress IN OUT.gguf`` keeps them), and every other selected
    tensor must fit the blocks (2-D, rows of whole blocks of 32), checked
    before the measuring pass."""
    options = options or EngineOptions()
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown bit-budget objective '{objective}' (choose from {', '.join(OBJECTIVES)})")
    if not (isinstance(target_bpw, (int, float)) and math.isfinite(target_bpw) and target_bpw > 0):
        raise ConfigError(f"--target-bpw must be a positive number of bits per weight, got {target_bpw!r}")
    probe = SchemeProbe(tuple(default_candidates(form) if candidates is None else candidates), observer, form)
    sources = load_sources(tensors, options.missing_chunks)
    if not sources:
        raise EmptyModel()
    cfg = replace(config, stages=(probe,), skip_1d=config.skip_1d or form == "gguf")  # (GGUF: 1-D stay float)
    skip = cfg.check([s.meta for s in sources])
    picked = [(s, sk) for s, sk in zip(sources, skip) if not sk and s.is_float and s.meta.size]
    if not picked:
        raise ConfigError("no tensor is selected for the bit budget (see --ignore, --include, --skip-1d)")
    for s, _ in picked if form == "gguf" else ():  # (1-D left out above: what is left is 2-D or more)
        if not ggml_fits(s.meta.shape):
            raise ConfigError(f"tensor '{s.meta.name}' of shape {list(s.meta.shape)} cannot be a ggml block type "
                              "in GGUF (rows must be whole blocks of 32, 2-D): --ignore it")
    skip = [sk or not s.is_float or not s.meta.size for s, sk in zip(sources, skip)]
    run = _prepare(sources, cfg, skip, options)
    result = _compress(run, tensors, NullSink(), LocalExecutor(), False)
    sse, bits, cost = [], [], []
    for src, _ in picked:
        st = result.tensor_stats[src.meta.name]["stages"][0]
        sse.append(st["probe_sse"])
        bits.append(probe.bits(src.meta))
        w = 1.0 / st["sum_sq_signal"] if objective == "relative" and st["sum_sq_signal"] > 0 else 1.0
        cost.append([e * w for e in st["probe_sse"]])
    params = sum(s.meta.size for s, _ in picked)
    picks, exact = plan_bits(cost, bits, math.floor(target_bpw * params))
    plan = BitPlan(float(target_bpw), probe.candidates, observer, exact=exact, objective=objective, form=form)
    for (src, _), k, e, b in zip(picked, picks, sse, bits):
        plan.rows.append({"name": src.meta.name, "params": src.meta.size, "scheme": probe.candidates[k].spec(),
                          "bits": int(b[k]), "sse": float(e[k]),
                          "candidates": {c.spec(): {"bits": int(bb), "sse": float(ee)}
                                         for c, bb, ee in zip(probe.candidates, b, e)}})
    return plan
