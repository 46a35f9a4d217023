"""GGUF straight from the engine: a sink that writes each block's bytes into
their place in the file, with resume records beside it.

The header is known before any work (every tensor's type and size follows
from its shape and scheme), so the file is laid out at once: the work file
``.OUT.work`` holds the header, then each block's bytes are written at their
offset as the block is done. A tensor is recorded complete in the journal
``.OUT.work.json`` (one JSON line each, appended) only after the work file's
data are durable (``fdatasync``); a resumed run keeps the tensors recorded
there and redoes the rest. At the end the work file is made durable and
renamed to OUT (an earlier OUT of ours is replaced), marked ours, and the
journal removed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InvalidStore, OutputError
from ...safety import fsync, mark_file_ours, put_in_place
from .reader import KV
from .writer import _Out, header

__all__ = ["GGUFSink", "work_paths"]


def work_paths(output: Path) -> tuple[Path, Path]:
    """The work file and the journal of a run into ``output``."""
    return output.parent / f".{output.name}.work", output.parent / f".{output.name}.work.json"


def _flat_runs(region: tuple, shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """``(first flat element, count)`` of each C-order contiguous run of ``region`` in ``shape``."""
    if not shape:
        return [(0, 1)]
    bounds = [(sl.start or 0, d if sl.stop is None else sl.stop) for sl, d in zip(region, shape)]
    # the trailing axes ``region`` covers whole, and the one before them, make one run per index of the rest
    k = len(shape) - 1
    while k > 0 and bounds[k] == (0, shape[k]):
        k -= 1
    inner = 1
    for d in shape[k + 1:]:
        inner *= d
    strides = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        strides[i] = strides[i + 1] * shape[i + 1]
    runs = [(bounds[k][0] * strides[k], (bounds[k][1] - bounds[k][0]) * inner)]
    for ax in range(k - 1, -1, -1):
        lo, hi = bounds[ax]
        runs = [(i * strides[ax] + s, n) for i in range(lo, hi) for s, n in runs]
    return runs


class GGUFSink:
    """Writes a run's outputs into one GGUF file laid out in advance.

    ``tensors``: the file's tensors in order (``writer.planned``), ``kv`` its
    key/values, ``align`` its alignment. The engine's arrays of a tensor are
    its one output (``""`` suffix): ggml block bytes as a flat uint8 array
    (``stages.quantize``'s GGUF encoding), or the dense values in the
    tensor's shape.
    """

    persistent = True

    def __init__(self, output: Path, tensors: list[_Out], kv: list[KV], align: int, *, resume: bool = False,
                 run_record: dict[str, Any] | None = None) -> None:
        self.path = Path(output)
        self.work, self.journal = work_paths(self.path)
        self.head, offsets = header(kv, tensors, align)
        self.size = (offsets[-1] + -(-tensors[-1].nbytes // align) * align) if tensors else len(self.head)
        self.tensors = {t.name: (t, off) for t, off in zip(tensors, offsets)}
        self.done: dict[str, dict[str, Any]] = {}
        self.record: dict[str, Any] = {}
        self._stale = False  # a journal whose work file is not this layout's (see set_run_record)
        self.resumed = resume and self._load()
        if not self.resumed:
            self._start(run_record or {})
        flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
        try:
            self.fd = os.open(self.work, flags)
        except OSError as e:
            raise InvalidStore(f"cannot open the work file of '{output}': {e.strerror or e}") from None

    # -- the journal -----------------------------------------------------------
    def _load(self) -> bool:
        """Read the journal of an earlier run; False when there is nothing to resume
        (no journal, a work file that is not this layout's, or no record)."""
        try:
            raw = self.journal.read_bytes()
            with open(self.work, "rb") as f:
                same = f.read(len(self.head)) == self.head and os.fstat(f.fileno()).st_size == self.size
        except OSError:
            return False
        recs, good = [], 0
        for line in raw.splitlines(keepends=True):
            try:
                if not line.endswith(b"\n"):
                    raise ValueError
                recs.append(json.loads(line))
            except ValueError:  # a line cut short by a kill: the tensor it was recording is redone
                break
            good += len(line)
        if good < len(raw) and recs:
            self._cut_journal(good)
        if not recs or not isinstance(recs[0], dict) or "run" not in recs[0]:
            return False
        self.record = recs[0]["run"]
        if not same:  # another layout: a changed pipeline or input (_check_resume refuses it), or a damaged file
            self._stale = True
            return True
        for r in recs[1:]:
            if isinstance(r, dict) and r.get("name") in self.tensors and isinstance(r.get("info"), dict):
                self.done[r["name"]] = r["info"]
        return True

    def _cut_journal(self, good: int) -> None:
        """Drop what follows the journal's last whole record (a line a kill cut short),
        so the records this run appends are read by a later resume."""
        try:
            with open(self.journal, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise OutputError(self.journal.name, e) from None

    def _append(self, rec: dict[str, Any]) -> None:
        with open(self.journal, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _start(self, record: dict[str, Any]) -> None:
        """A fresh work file (the header, the rest sized and reserved) and journal."""
        try:
            for p in (self.work, self.journal):
                p.unlink(missing_ok=True)
            fd = os.open(self.work, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                _reserve(fd, self.size)
                os.pwrite(fd, self.head, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.record = record
            self._append({"run": record})
            fsync(self.path.parent)
        except OSError as e:
            for p in (self.work, self.journal):
                p.unlink(missing_ok=True)
            raise InvalidStore(f"cannot make '{self.path}' ({self.size} bytes, reserved before any work): "
                               f"{e.strerror or e}") from None

    def run_record(self) -> dict[str, Any]:
        return self.record

    def set_run_record(self, record: dict[str, Any]) -> None:
        """The resumed run's record. A work file whose header or size is not this
        run's (cut short, overwritten), though its journal names the same run, is
        started afresh here: none of it is kept."""
        if self._stale:
            os.close(self.fd)
            self.fd = -1
            self._start(record)
            self.fd = os.open(self.work, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
            self._stale = False
        self.record = record

    def completed(self, name: str) -> dict[str, Any] | None:
        info = self.done.get(name)
        return info if isinstance(info, dict) and info.get("complete") is True else None

    # -- the engine's sink protocol ----------------------------------------------
    def create_group(self, name: str) -> None:
        raise InvalidStore("a GGUF file holds no groups (prune masks): write a Zarr store for --save-masks")

    def create(self, name: str, shape, chunks, dtype, attrs: dict[str, Any]) -> None:
        if name not in self.tensors:
            raise InvalidStore(f"'{name}' is not a tensor of this GGUF file's layout")

    def write(self, name: str, region: tuple, data: np.ndarray) -> None:
        t, off = self.tensors[name]
        raw = np.ascontiguousarray(data)
        flat = raw.reshape(-1).view(np.uint8)
        if raw.ndim == 1 and raw.dtype == np.uint8 and t.kind in _BLOCK_KINDS:
            runs = [((region[0].start or 0), flat.size)]
            item = 1
        else:
            item = raw.dtype.itemsize
            runs = _flat_runs(region, t.shape)
        try:
            at = 0
            for start, n in runs:
                _pwrite_all(self.fd, flat[at:at + n * item], off + start * item)
                at += n * item
        except OSError as e:
            raise OutputError(name, e) from None

    def make_durable(self, names: list[str]) -> None:
        try:
            os.fdatasync(self.fd)
        except OSError as e:
            raise OutputError(self.path.name, e) from None

    def update_attrs(self, name: str, attrs: dict[str, Any]) -> None:
        info = attrs.get("streamcompress", {})
        self.done[name] = info
        try:
            self._append({"name": name, "info": info})
        except OSError as e:
            raise OutputError(name, e) from None

    def stored_bytes(self, name: str) -> int:
        return self.tensors[name][0].nbytes

    def copy_aux(self, src: Any) -> None:
        """(A GGUF file's metadata are its key/values, laid out with the header.)"""

    def finish(self, attrs: dict[str, Any]) -> None:
        """The file made durable, renamed into place (replacing an output of ours), marked ours."""
        try:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            put_in_place(self.work, self.path)
            mark_file_ours(self.path)
            self.journal.unlink(missing_ok=True)
            fsync(self.path.parent)
        except OSError as e:
            raise OutputError(self.path.name, e) from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_BLOCK_KINDS = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1")


def _reserve(fd: int, size: int) -> None:
    """Size the file and reserve its blocks (a full disk fails here, before any work)."""
    os.ftruncate(fd, size)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        import errno

        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        # (a filesystem that cannot reserve: the writes find a full disk instead)


def _pwrite_all(fd: int, buf: np.ndarray, off: int) -> None:
    mv = memoryview(buf)
    while mv.nbytes:
        n = os.pwrite(fd, mv, off)
        mv, off = mv[n:], off + n
