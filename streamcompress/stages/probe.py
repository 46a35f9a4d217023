"""Mixed precision to a bit budget: what each candidate scheme would cost a tensor
(``SchemeProbe``: its squared error and stored bits, all candidates in one
sweep), and the exact choice of one scheme per tensor (``plan_bits``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .. import kernels as K
from ..errors import ConfigError
from ..layout import Block, TensorMeta
from .base import Stage, StageRunner
from .quantize import _OBSERVED, OBSERVER_SCHEMES, OBSERVERS, Quantize, _SchemeRunner, observer_applies
from .schemes import GGML_BLOCKS, QuantGranularity, QuantScheme, parse_scheme

__all__ = ["SchemeProbe", "plan_bits", "DEFAULT_CANDIDATES", "GGUF_CANDIDATES", "default_candidates"]

#: the candidates of ``--target-bpw`` unless told otherwise (into a store)
DEFAULT_CANDIDATES = ("int4:group:32", "int4:group:128", "int8:channel")
#: ... and into a GGUF, which holds ggml's block types only (all of them, cheapest first:
#: q4_0 q4_1 q5_0 q5_1 q8_0)
GGUF_CANDIDATES = tuple(sorted(GGML_BLOCKS))


def default_candidates(form: str) -> tuple[str, ...]:
    """The candidates of a bit budget counted for ``form`` (``zarr`` or ``gguf``)."""
    return GGUF_CANDIDATES if form == "gguf" else DEFAULT_CANDIDATES


@dataclass(frozen=True)
class SchemeProbe(Stage):
    """Measures, per tensor, the squared error each candidate scheme would give
    (round to nearest with ``observer``'s ranges), leaving the values as they
    are. The tensor's info gets ``probe_sse`` (one per candidate)."""

    candidates: tuple[QuantScheme, ...] = ()
    observer: str = "minmax"
    #: the output's stored form, whose bits are counted: ``zarr`` (a store) or ``gguf``
    form: str = "zarr"
    name: ClassVar[str] = "probe"

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidates", tuple(parse_scheme(c) for c in self.candidates))
        if not self.candidates:
            raise ConfigError("a bit budget needs at least one candidate scheme")
        specs = [c.spec() for c in self.candidates]
        if len(set(specs)) < len(specs):
            raise ConfigError(f"a bit budget's candidates must differ in scheme: {' '.join(specs)}")
        if self.observer not in OBSERVERS:
            raise ConfigError(f"unknown observer '{self.observer}' (choose from {', '.join(OBSERVERS)})")
        if self.form not in ("zarr", "gguf"):
            raise ConfigError(f"a bit budget counts the bits of a store (zarr) or of a GGUF, not '{self.form}'")
        for c in self.candidates:
            if c.granularity not in _OBSERVED:  # (their scales come from each block alone: one pass)
                raise ConfigError(f"a bit budget's candidates are per-channel or per-group schemes (e.g. "
                                  f"int4:group:32, int8:channel), not {c.spec()}")
            if self.form == "gguf" and not c.ggml:
                raise ConfigError(f"into a GGUF a bit budget chooses among ggml's block types "
                                  f"({' '.join(GGUF_CANDIDATES)}, the default there), not {c.spec()}")
        self._quantizers()  # (their checks)
        if self.observer != "minmax" and not any(observer_applies(self.observer, c) for c in self.candidates):
            raise ConfigError(f"the {self.observer} observer does not apply to any candidate "
                              f"({' '.join(c.spec() for c in self.candidates)}): it is for "
                              f"{OBSERVER_SCHEMES[self.observer]}")

    def _quantizers(self) -> list[Quantize]:
        """One quantize stage per candidate, with the observer where it applies (else minmax)."""
        return [Quantize(c, observer=self.observer if observer_applies(self.observer, c) else "minmax")
                for c in self.candidates]

    def _unit(self, c: QuantScheme, meta: TensorMeta) -> int:
        eg = c.effective_granularity(meta.shape)
        if eg is QuantGranularity.TENSOR:
            return meta.size
        L, g = c.units(meta.shape)
        return L if eg is QuantGranularity.CHANNEL or L % g else g

    def block_multiple(self, meta: TensorMeta) -> int:
        m = 1
        for q, c in zip(self._quantizers(), self.candidates):
            m = math.lcm(m, q.block_multiple(meta))
            if c.effective_granularity(meta.shape) is QuantGranularity.GROUP:
                m = math.lcm(m, self._unit(c, meta))
        return m

    def min_block(self, meta: TensorMeta) -> int:
        # every candidate's units whole in each block: its scales come from the block alone
        return max(self._unit(c, meta) for c in self.candidates)

    def bits(self, meta: TensorMeta) -> list[int]:
        """Stored bits of the tensor under each candidate (codes, scales, zero points;
        a GGUF's blocks for the ggml kinds when ``form`` is ``gguf``)."""
        return [8 * q.encoded_bytes(meta, self.form) for q in self._quantizers()]

    def runner(self, meta: TensorMeta, blocks: list[Block], state: Any = None) -> StageRunner:
        return _ProbeRunner(self, meta, blocks)

    def memory_after(self, meta: TensorMeta, memory_before: int) -> int:
        return memory_before

    def estimate(self, meta: TensorMeta, size: float) -> float:
        return size

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "configuration": {"candidates": [c.spec() for c in self.candidates],
                                                     "observer": self.observer, "form": self.form}}

    @classmethod
    def from_configuration(cls, conf: dict[str, Any]) -> SchemeProbe:
        return cls(tuple(conf.get("candidates", DEFAULT_CANDIDATES)), str(conf.get("observer", "minmax")),
                   str(conf.get("form", "zarr")))


class _ProbeRunner(StageRunner):
    def __init__(self, probe: SchemeProbe, meta: TensorMeta, blocks: list[Block]) -> None:
        self.runners = []
        for c in probe.candidates:
            r = _SchemeRunner(c, meta, blocks, real=False, observer=probe.observer)
            if not r.local:
                raise ConfigError(f"tensor '{meta.name}': a bit budget needs {c.spec()}'s units whole in each "
                                  "block, and the input's chunks split them")
            self.runners.append(r)
        self.sse = [0.0] * len(self.runners)
        self._spare = np.empty(0, np.float32)

    def apply(self, block: Block, x: np.ndarray, mask: np.ndarray | None) -> None:
        if self._spare.size < x.size:
            self._spare = np.empty(x.size, np.float32)
        y = self._spare[: x.size]
        for i, r in enumerate(self.runners):
            np.copyto(y, x)
            r.apply(block, y, None)
            self.sse[i] += float(K.diff_stats(x, y)[1])

    def info(self) -> dict[str, Any]:
        return {"probe_sse": list(self.sse)}


def plan_bits(sse: list[list[float]], bits: list[list[int]], budget: int,
              max_states: int = 2_000_000) -> tuple[list[int], bool]:
    """One candidate per tensor minimizing the total squared error with total bits
    at most ``budget``: ``(choice per tensor, exact)``.

    Exact: the Pareto front of (bits, error) over the tensors so far, keeping
    only points no other point beats on both, and none that cannot fit the
    budget with the cheapest choices left. Should the front pass
    ``max_states``, it is thinned (every k-th point kept) and ``exact`` is
    False. Raises ConfigError when even the cheapest choices exceed the budget.
    """
    n = len(sse)
    if n == 0:
        return [], True
    cheapest_left = np.concatenate([np.cumsum([min(b) for b in bits][::-1])[::-1][1:], [0]])
    if cheapest_left[0] + min(bits[0]) > budget:
        raise ConfigError(f"the bit budget cannot be met: the cheapest candidates need "
                          f"{int(cheapest_left[0] + min(bits[0]))} bits, the budget is {budget}")
    # the front: bits, error, and for each point the choices that reached it (back-pointers per step)
    fb = np.zeros(1, np.int64)
    fe = np.zeros(1, np.float64)
    back: list[tuple[np.ndarray, np.ndarray]] = []
    exact = True
    for t in range(n):
        k = len(bits[t])
        nb = (fb[:, None] + np.asarray(bits[t], np.int64)[None, :]).reshape(-1)
        ne = (fe[:, None] + np.asarray(sse[t], np.float64)[None, :]).reshape(-1)
        parent = np.repeat(np.arange(fb.size), k)
        choice = np.tile(np.arange(k), fb.size)
        ok = nb + cheapest_left[t] <= budget
        nb, ne, parent, choice = nb[ok], ne[ok], parent[ok], choice[ok]
        order = np.lexsort((ne, nb))  # by bits, then error
        nb, ne, parent, choice = nb[order], ne[order], parent[order], choice[order]
        best_before = np.concatenate([[np.inf], np.minimum.accumulate(ne)[:-1]])
        keep = ne < best_before  # (strictly better than every point with fewer or equal bits)
        nb, ne, parent, choice = nb[keep], ne[keep], parent[keep], choice[keep]
        if nb.size > max_states:
            step = -(-nb.size // max_states)
            sel = np.unique(np.concatenate([np.arange(0, nb.size, step), [nb.size - 1]]))
            nb, ne, parent, choice = nb[sel], ne[sel], parent[sel], choice[sel]
            exact = False
        back.append((parent, choice))
        fb, fe = nb, ne
    i = int(np.argmin(fe))
    picks = [0] * n
    for t in range(n - 1, -1, -1):
        parent, choice = back[t]
        picks[t] = int(choice[i])
        i = int(parent[i])
    return picks, exact
