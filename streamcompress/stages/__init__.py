"""Stages: frozen configs that make per-tensor runners, plus the explicit registry."""

from typing import Any

from ..errors import ConfigError
from .base import Stage, StageRunner
from .clip import Clip
from .prune import Granularity, Metric, Prune, PruneNM, PruningConfig
from .quantize import Quantize, QuantizeInt8, name_matches
from .schemes import SCHEME_NAMES, QuantGranularity, QuantScheme, parse_scheme

__all__ = [
    "Stage",
    "StageRunner",
    "Prune",
    "PruneNM",
    "PruningConfig",
    "Metric",
    "Granularity",
    "QuantizeInt8",
    "Quantize",
    "QuantScheme",
    "QuantGranularity",
    "parse_scheme",
    "SCHEME_NAMES",
    "name_matches",
    "Clip",
    "STAGES",
    "stage_from_dict",
]

#: Stage registry: name -> class (each has ``from_configuration``).
STAGES: dict[str, Any] = {
    Prune.name: Prune,
    PruneNM.name: PruneNM,
    QuantizeInt8.name: QuantizeInt8,
    Quantize.name: Quantize,
    Clip.name: Clip,
}


def stage_from_dict(d: dict[str, Any]) -> Stage:
    """Build a stage from ``{"name": ..., "configuration": {...}}`` or the flat form
    ``{"name": ..., **configuration}``.

    Examples
    --------
    >>> stage_from_dict({"name": "clip", "percentile": 0.1})
    Clip(percentile=0.1)
    """
    if not isinstance(d, dict) or "name" not in d:
        raise ConfigError(f"a stage must be a table with a 'name', got {d!r}")
    name = str(d["name"]).lower()  # "quantize" is the real stage (Quantize), "quantize_int8" the seed's
    if name not in STAGES:
        raise ConfigError(f"unknown stage '{d['name']}' (choose from {', '.join(STAGES)})")
    conf = d.get("configuration")
    if conf is None:
        conf = {k: v for k, v in d.items() if k != "name"}
    if not isinstance(conf, dict):
        raise ConfigError(f"stage '{name}' configuration must be a table")
    try:
        return STAGES[name].from_configuration(conf)
    except TypeError as e:
        raise ConfigError(f"stage '{name}': {e}") from None
