"""Small ``parse_*`` helpers that validate config values at construction."""

from __future__ import annotations

from enum import Enum
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["parse_enum", "parse_real", "parse_count"]


def parse_enum(cls: type[Enum], value: Any, what: str) -> Any:
    try:
        return cls(value.value if isinstance(value, Enum) else str(value).lower())
    except ValueError:
        choices = ", ".join(m.value for m in cls)  # type: ignore[attr-defined]
        raise ConfigError(f"unknown {what} '{value}' (choose from {choices})") from None


def parse_real(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ConfigError(f"{what} must be a number, got {value!r}")
    return float(value)


def parse_count(value: Any, what: str, upper: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigError(f"{what} must be a non-negative integer, got {value!r}")
    if upper is not None and value >= upper:
        raise ConfigError(f"{what} must be below {upper}, got {value!r}")
    return int(value)
