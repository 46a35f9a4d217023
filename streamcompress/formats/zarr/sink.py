"""Writing a new Zarr v3 store: the engine's sink (arrays made, then written block by block)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ...errors import InvalidStore, OutputError, OutputExists
from ...safety import RUN_ATTR, aside, fsync, remove_output
from ..base import AUX_DIR
from ..sidecar import copy_aux
from .direct import ChunkWriter, array_like, stored_size, update_attributes
from .reader import open_group

__all__ = ["ZarrSink"]


class ZarrSink:
    """Writes outputs as arrays of a new Zarr v3 group.

    ``write_empty_chunks`` is on: the emptiness check costs more than writing
    a mostly-zero chunk. Chunks are those of the block plan, so every chunk is
    written exactly once, whole.
    """

    #: outputs outlive the process (files: made durable, sized, resumable)
    persistent = True

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False, codec: str = "zstd",
                 resume: bool = False, run_record: dict[str, Any] | None = None):
        p = Path(path)
        self.path = p
        self.codec = codec
        self.arrays: dict[str, Any] = {}
        self.writers: dict[str, ChunkWriter | bool] = {}  # found on first write
        self.templates: dict[tuple[str, bool], Any] = {}  # (dtype, ndim > 0) -> an array made by zarr
        self.resumed = False
        if resume and p.exists():
            try:
                self.group = open_group(p, "r+")
            except Exception:  # noqa: BLE001 - anything unreadable is not resumable
                raise InvalidStore(f"cannot resume: '{path}' is not a readable Zarr group "
                                   "(use --overwrite to start again)") from None
            if self.run_record() or any(True for _ in self.group.array_keys()):
                self.resumed = True
                return
            overwrite = True  # created but not started: start afresh
        if p.exists() and not overwrite:
            raise OutputExists(str(path))
        try:
            # The run record is written with the group itself, made aside and renamed into
            # place: a killed run leaves either no output or a group with its record.
            if p.exists() or p.is_symlink():
                remove_output(p)  # (refuses what is not ours)
            tmp = aside(p, "creating")
            try:
                open_group(tmp, "w", {RUN_ATTR: run_record} if run_record else None)
                os.rename(tmp, p)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)  # (ours: made just now under a fresh name)
                raise
            self.group = open_group(p, "r+")
        except OSError as e:
            raise OutputError(None, e, dest=str(path)) from None

    @classmethod
    def attach(cls, path: str | os.PathLike, codec: str = "zstd") -> ZarrSink:
        """The sink of a run started elsewhere (a Dask worker writing its share)."""
        self = cls.__new__(cls)
        self.path, self.codec, self.arrays, self.resumed = Path(path), codec, {}, False
        self.writers, self.templates = {}, {}
        try:
            self.group = open_group(self.path, "r+")
        except Exception as e:  # noqa: BLE001
            raise InvalidStore(f"cannot open output '{path}' on this worker: {e}") from None
        return self

    def create_group(self, name: str) -> None:
        self.group.require_group(name)

    def run_record(self) -> dict[str, Any]:
        rec = self.group.attrs.get(RUN_ATTR)
        return rec if isinstance(rec, dict) else {}

    def set_run_record(self, record: dict[str, Any]) -> None:
        self.group.attrs.update({RUN_ATTR: record})

    def completed(self, name: str) -> dict[str, Any] | None:
        """The recorded info of ``name`` if it was marked complete, else None."""
        try:
            info = self.group[name].attrs.get("streamcompress")
        except Exception:  # noqa: BLE001 - missing or half-written array: not complete
            return None
        return info if isinstance(info, dict) and info.get("complete") is True else None

    def make_durable(self, names: list[str]) -> None:
        """fsync the files of these arrays (and their directories) before marking them complete."""
        for name in names:
            d = self.path / name
            for f in [*sorted(d.rglob("*")), d] if d.exists() else []:
                fsync(f)

    def _compressors(self):
        """zstd level 1 (unless ``none``), then a crc32c checksum of every chunk, so
        any damaged chunk fails to read instead of decoding to wrong values."""
        from zarr.codecs import Crc32cCodec, ZstdCodec

        return ([] if self.codec == "none" else [ZstdCodec(level=1)]) + [Crc32cCodec()]

    #: every array's config (zarr writes only what ChunkWriter does not: 0-d arrays, odd regions)
    CONFIG: ClassVar[dict[str, bool]] = {"write_empty_chunks": True}

    def create(self, name: str, shape, chunks, dtype, attrs: dict[str, Any]) -> None:
        """A new array ``name``; made by zarr once per data type, then like that one, directly."""
        shape, chunks = tuple(shape), tuple(chunks) if shape else ()
        key = (np.dtype(dtype).str, len(shape) > 0)
        like = self.templates.get(key)
        if like is not None and "/" not in name:
            try:
                a = array_like(like, self.group.store_path / name, self.path / name, shape, chunks, attrs,
                               self.CONFIG)
            except OSError as e:
                raise OutputError(name, e) from None
            if a is not None:
                self.arrays[name] = a
                return
        self.arrays[name] = a = self.group.create_array(
            name, shape=shape, chunks=chunks, dtype=dtype,
            compressors=self._compressors(), fill_value=0, attributes=attrs,
            config=self.CONFIG, overwrite=True)
        if "/" not in name:
            self.templates[key] = a

    def _array(self, name: str):
        a = self.arrays.get(name)
        if a is None:  # made by another process (a Dask range task writes arrays the client made)
            a = self.arrays[name] = self.group[name]
        return a

    def write(self, name: str, region: tuple, data: np.ndarray) -> None:
        try:
            w = self.writers.get(name)
            if w is None:
                w = self.writers[name] = ChunkWriter.of(self._array(name)) or False
            if not (w and w.write(region, data)):
                self._array(name)[region if data.ndim else ()] = data
        except OSError as e:
            raise OutputError(name, e) from None

    def update_attrs(self, name: str, attrs: dict[str, Any]) -> None:
        # Written last: an array is complete only once this attribute exists.
        try:
            if not update_attributes(self.path / name, attrs):
                self._array(name).attrs.update(attrs)
        except OSError as e:
            raise OutputError(name, e) from None

    def stored_bytes(self, name: str) -> int:
        return stored_size(self.path / name)

    def copy_aux(self, src: Any) -> None:
        """The non-tensor files of the input ``src`` (config, tokenizer, a GGUF's key/values) into ``__aux__``."""
        copy_aux(src, self.path / AUX_DIR)

    def finish(self, attrs: dict[str, Any]) -> None:
        """The group's last attributes (with the run's completion), made durable."""
        self.group.attrs.update(attrs)
        for f in (self.path / "zarr.json", self.path):
            fsync(f)

    def close(self) -> None:
        """Nothing is held open between writes (each chunk file is closed after it)."""
