"""``CompressionConfig``: the ordered stage list and the seed's helpers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .errors import ConfigError, EmptyPipeline
from .layout import TensorMeta
from .stages import Clip, Prune, PruningConfig, QuantizeInt8, Stage, stage_from_dict

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

    def __post_init__(self) -> None:
        stages = tuple(self.stages)
        for s in stages:
            if not isinstance(s, Stage):
                raise ConfigError(f"not a stage: {s!r}")
        object.__setattr__(self, "stages", stages)
        if not isinstance(self.skip_embedding_layers, bool):
            raise ConfigError("skip_embedding_layers must be true or false")

    # -- the seed's constructors -----------------------------------------------
    @classmethod
    def new(cls) -> CompressionConfig:
        return cls()

    def add_stage(self, stage: Stage) -> CompressionConfig:
        return CompressionConfig(self.stages + (stage,), self.skip_embedding_layers)

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
        skip = [self.skip_embedding_layers and is_embedding_layer(m.name) for m in metas]
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
        return {
            "stages": [s.to_dict() for s in self.stages],
            "skip_embedding_layers": self.skip_embedding_layers,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CompressionConfig:
        if not isinstance(d, dict):
            raise ConfigError("a pipeline config must be a table")
        unknown = set(d) - {"stages", "skip_embedding_layers"}
        if unknown:
            raise ConfigError(f"unknown pipeline key(s): {', '.join(sorted(unknown))}")
        stages = d.get("stages", [])
        if not isinstance(stages, list):
            raise ConfigError("'stages' must be a list")
        return cls(
            tuple(stage_from_dict(s) for s in stages),
            d.get("skip_embedding_layers", False),
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
