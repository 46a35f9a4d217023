"""On-disk formats, one module each, behind the protocols of ``formats.base``.

| format | module | reads | writes |
|---|---|---|---|
| Zarr v3 | ``formats.zarr`` | ``ZarrFormat`` | ``ZarrSink`` (the engine's store) |
| safetensors | ``formats.safetensors`` | ``SafetensorsFormat`` | ``DenseExporter`` |
| npz | ``formats.npz`` | ``NpzFormat`` | |
| compressed-tensors | ``formats.compressed_tensors`` | | ``CompressedTensorsExporter`` |
| GGUF | ``formats.gguf`` | ``GGUFFormat`` | ``GGUFExporter`` |

A new format is a module implementing ``Format`` and/or ``Exporter``, plus its
line in ``READERS`` / ``EXPORTERS`` below.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError, StoreNotFound
from .base import Checkpoint, Exporter, Format
from .compressed_tensors import CompressedTensorsExporter
from .gguf import GGUFExporter, GGUFFormat
from .npz import NpzFormat
from .safetensors import DenseExporter, SafetensorsFormat
from .zarr import ZarrFormat

__all__ = ["READERS", "EXPORTERS", "open_checkpoint", "exporter", "format_of_suffix"]

#: readers, asked in this order which one a path is
READERS: dict[str, type[Format]] = {
    ZarrFormat.name: ZarrFormat,
    SafetensorsFormat.name: SafetensorsFormat,
    NpzFormat.name: NpzFormat,
    GGUFFormat.name: GGUFFormat,
}
#: export formats (``export --format NAME``)
EXPORTERS: dict[str, type[Exporter]] = {
    DenseExporter.name: DenseExporter,
    CompressedTensorsExporter.name: CompressedTensorsExporter,
    GGUFExporter.name: GGUFExporter,
}


def open_checkpoint(path: str | os.PathLike, missing: str = "error", unfinished_ok: bool = False) -> Checkpoint:
    """Open ``path`` with the first reader that recognises it (Zarr's own errors
    when none does: "not a Zarr v3 group" says best what was expected)."""
    p = Path(path)
    if not p.exists():
        raise StoreNotFound(str(path))
    for fmt in READERS.values():
        if fmt.detect(p):
            return fmt.open(p, missing, unfinished_ok)
    return ZarrFormat.open(p, missing, unfinished_ok)


def exporter(name: str) -> Exporter:
    if name not in EXPORTERS:
        raise ConfigError(f"unknown export format '{name}' (choose from {', '.join(EXPORTERS)})")
    return EXPORTERS[name]()


def format_of_suffix(path: str | os.PathLike) -> str | None:
    """The export format a file name asks for by its suffix (``OUT.gguf``: gguf), or None."""
    suffix = Path(path).suffix
    for name, exp in EXPORTERS.items():
        if exp.suffix is not None and exp.suffix == suffix:
            return name
    return None
