"""``CompressionConfig``: the ordered stage list and the seed's helpers."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .errors import ConfigError, EmptyPipeline, UnsupportedDtype
from .layout import TensorMeta
from .stages import Clip, Prune, PruningConfig, QuantizeInt8, Stage, name_matches, stage_from_dict

__all__ = ["CompressionConfig", "is_embedding_layer", "load_config"]


def is_embedding_layer(name: str) -> bool:
    """The seed's rule: lower-cased name starts with ``embed`` or ``token``.

    Examples
    --------
    >>> is_embedding_layer("Embed.weight"), is_embedding_layer("model.embed_tokens.weight")
    (True, False)
    """
    lower = name.lower()
    return lower.startswith("embed") or lower.startswith("token")


@dataclass(frozen=True)
class CompressionConfig:
    """Ordered stages plus ``skip_embedding_layers`` (the seed's ``CompressionConfig``).

    Examples
    --------
    >>> c = CompressionConfig.prune_then_quantize(0.5)
    >>> [s.name for s in c.stages]
    ['prune', 'quantize_int8']
    >>> CompressionConfig.from_dict(c.to_dict()) == c
    True
    """

    stages: tuple[Stage, ...] = field(default_factory=tuple)
    skip_embedding_layers: bool = False
    #: tensors matching any of these (glob, or ``re:REGEX``) bypass every stage
    ignore: tuple[str, ...] = ()
    #: when given, only tensors matching one of these are processed
    include: tuple[str, ...] = ()
    #: 1-D (and 0-D) tensors (norms, biases) bypass every stage
    skip_1d: bool = False

    def __post_init__(self) -> None:
        stages = tuple(self.stages)
        for s in stages:
            if not isinstance(s, Stage):
                raise ConfigError(f"not a stage: {s!r}")
        object.__setattr__(self, "stages", stages)
        if not isinstance(self.skip_embedding_layers, bool):
            raise ConfigError("skip_embedding_layers must be true or false")
        for key in ("ignore", "include"):
            pats = getattr(self, key)
            if isinstance(pats, str):
                pats = (pats,)
            pats = tuple(str(p) for p in pats)
            for p in pats:
                if p.startswith("re:"):
                    try:
                        re.compile(p[3:])
                    except re.error as e:
                        raise ConfigError(f"bad regex in {key} pattern '{p}': {e}") from None
            object.__setattr__(self, key, pats)
        if not isinstance(self.skip_1d, bool):
            raise ConfigError("skip_1d must be true or false")

    def _replace(self, **kw: Any) -> CompressionConfig:
        d = {k: getattr(self, k) for k in ("stages", "skip_embedding_layers", "ignore", "include", "skip_1d")}
        d.update(kw)
        return CompressionConfig(**d)

    def selected_explicitly(self, name: str) -> bool:
        return any(name_matches(p, name) for p in self.include)

    def is_skipped(self, meta: TensorMeta) -> bool:
        """True when the tensor bypasses every stage (copied unchanged).

        The seed's embedding rule, ``ignore``, ``include``, ``skip_1d``, and
        non-float tensors not named by ``include`` (those are an error).
        """
        if self.skip_embedding_layers and is_embedding_layer(meta.name):
            return True
        if any(name_matches(p, meta.name) for p in self.ignore):
            return True
        if self.include and not self.selected_explicitly(meta.name):
            return True
        if self.skip_1d and meta.ndim <= 1:
            return True
        if not meta.is_float:
            if self.selected_explicitly(meta.name):
                raise UnsupportedDtype(meta.name, meta.dtype)
            return True
        return False

    # -- the seed's constructors -----------------------------------------------
    @classmethod
    def new(cls) -> CompressionConfig:
        return cls()

    def add_stage(self, stage: Stage) -> CompressionConfig:
        return self._replace(stages=self.stages + (stage,))

    @classmethod
    def prune_then_quantize(cls, sparsity: float) -> CompressionConfig:
        return cls((Prune(PruningConfig.unstructured_l1(sparsity)), QuantizeInt8()))

    @classmethod
    def quantize_only(cls) -> CompressionConfig:
        return cls((QuantizeInt8(),))

    @classmethod
    def prune_only(cls, sparsity: float) -> CompressionConfig:
        return cls((Prune(PruningConfig.unstructured_l1(sparsity)),))

    # -- checks, in the seed's order --------------------------------------------
    def check(self, metas: Iterable[TensorMeta]) -> list[bool]:
        """Raise the first seed error for these tensors; return the skip flags.

        Order: ``EmptyPipeline``; any ``InvalidPercentile``; then, stage by
        stage and tensor by tensor (skipped tensors are never validated), the
        stage's per-tensor errors. The caller raises ``EmptyModel`` first.
        Everything here needs metadata only, so it runs before any work.
        """
        metas = list(metas)
        if not self.stages:
            raise EmptyPipeline()
        for s in self.stages:
            if isinstance(s, Clip):
                s.validate()
        skip = [self.is_skipped(m) for m in metas]
        for s in self.stages:
            for m, sk in zip(metas, skip):
                if not sk:
                    s.check_tensor(m)
        return skip

    def validate(self) -> None:
        """Eager range checks (``EmptyPipeline``, ``InvalidPercentile``,
        ``InvalidSparsity``), for callers that want them before opening stores."""
        if not self.stages:
            raise EmptyPipeline()
        for s in self.stages:
            if isinstance(s, Clip):
                s.validate()
        for s in self.stages:
            s.validate()

    # -- round trip --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "stages": [s.to_dict() for s in self.stages],
            "skip_embedding_layers": self.skip_embedding_layers,
        }
        if self.ignore:
            d["ignore"] = list(self.ignore)
        if self.include:
            d["include"] = list(self.include)
        if self.skip_1d:
            d["skip_1d"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CompressionConfig:
        if not isinstance(d, dict):
            raise ConfigError("a pipeline config must be a table")
        unknown = set(d) - {"stages", "skip_embedding_layers", "ignore", "include", "skip_1d"}
        if unknown:
            raise ConfigError(f"unknown pipeline key(s): {', '.join(sorted(unknown))}")
        stages = d.get("stages", [])
        if not isinstance(stages, list):
            raise ConfigError("'stages' must be a list")
        return cls(
            tuple(stage_from_dict(s) for s in stages),
            d.get("skip_embedding_layers", False),
            tuple(d.get("ignore", ())),
            tuple(d.get("include", ())),
            d.get("skip_1d", False),
        )


def load_config(path: str | Path) -> CompressionConfig:
    """Read a pipeline from a JSON or TOML file (by suffix; TOML uses ``[[stages]]``)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config '{p}': {e.strerror}") from None
    try:
        if p.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"config '{p}' is not valid {p.suffix.lstrip('.') or 'JSON'}: {e}") from None
    return CompressionConfig.from_dict(data)
