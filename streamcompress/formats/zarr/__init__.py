"""Zarr v3: the format streamcompress writes (and reads), in three parts:
``reader`` (sources and the checks on what is read), ``sink`` (the engine's
writes) and ``direct`` (chunk files read and written without zarr's per-call work)."""

from .reader import QuantizedSource, ZarrFormat, ZarrSource, group_sources, open_input, read_region
from .sink import ZarrSink

__all__ = ["ZarrFormat", "ZarrSource", "QuantizedSource", "ZarrSink", "open_input", "group_sources", "read_region"]
