"""What keeps users' data safe: path relations, ownership of outputs, one writer per output.

Every command that writes (``compress``, ``import``, ``restore``, ``export``)
claims its output with :func:`claim_output` before it creates or deletes
anything:

- the output's real path (symlinks, ``..``, trailing slashes resolved) must
  not equal, contain or lie inside any input;
- an existing output is replaced (``overwrite``) only when this tool wrote it
  (:func:`written_by_us`: a Zarr group with our run record, or an export
  directory with our marker file) or it is an empty directory; anything else
  is refused;
- an exclusive ``flock`` on a lock file beside the output (``.NAME.lock``)
  is held for the whole run, so a second run, or a ``--resume``, on a live
  output is refused with one line naming the other run. The kernel drops the
  lock of a killed process, so a stale lock file never blocks.

Outputs are made aside (:func:`aside`) and put in place by a rename
(:func:`put_in_place`), or carry a run record whose ``status`` readers check.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

from .errors import (
    OutputBusy,
    OutputError,
    OutputExists,
    StreamCompressError,
    UnsafePath,
)

__all__ = ["RUN_ATTR", "EXPORT_MARKER", "bad_member_name", "real_path", "check_apart", "written_by_us",
           "replaceable", "claim_output", "aside", "put_in_place", "build_aside", "remove_output", "fsync",
           "mark_file_ours"]

T = TypeVar("T")

#: Group attribute every Zarr output of ours carries from the moment it exists:
#: ``{"command": ..., "status": "running" | "complete", ...}``.
RUN_ATTR = "streamcompress_run"
#: File in every export directory of ours.
EXPORT_MARKER = ".streamcompress-export.json"


def bad_member_name(name: str) -> str | None:
    """Why ``name`` cannot name a tensor in a store (None when it can): each
    ``/``-separated part must be a plain name, not ``.``, ``..``, ``zarr.json``
    or empty, with no ``\\`` or NUL; ``__`` at the start is kept for our own groups.

    Examples
    --------
    >>> bad_member_name("model.layers.0.weight") is None, bad_member_name("a/../b")
    (True, "its part '..' is not a plain name")
    """
    if not isinstance(name, str) or not name:
        return "it is empty"
    if "\\" in name or "\x00" in name:
        return "it holds a backslash or NUL"
    if name.startswith("__"):
        return "a leading '__' is kept for streamcompress's own groups"
    for part in name.split("/"):
        if part in ("", ".", "..", "zarr.json"):
            return f"its part '{part}' is not a plain name"
    return None


def real_path(path: str | os.PathLike) -> Path:
    """Absolute path with symlinks, ``..`` and trailing slashes resolved (a missing
    tail is kept as written)."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def check_apart(inputs: Sequence[str | os.PathLike], output: str | os.PathLike, what: str = "output") -> None:
    """Refuse an output that equals, contains or lies inside an input.

    Examples
    --------
    >>> check_apart(["/data/m.zarr"], "/data/m.zarr/sub.zarr")
    Traceback (most recent call last):
    ...
    streamcompress.errors.UnsafePath: output '/data/m.zarr/sub.zarr' lies inside the input '/data/m.zarr': writing it would change the input
    """
    out = real_path(output)
    for inp in inputs:
        src = real_path(inp)
        if out == src:
            raise UnsafePath(f"{what} must differ from the input: '{output}' is the input '{inp}'")
        if out in src.parents:
            raise UnsafePath(f"{what} '{output}' contains the input '{inp}': replacing it would delete the input")
        if src in out.parents:
            raise UnsafePath(f"{what} '{output}' lies inside the input '{inp}': writing it would change the input")


def _group_attrs(path: Path) -> dict | None:
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("node_type") != "group":
        return None
    attrs = meta.get("attributes")
    return attrs if isinstance(attrs, dict) else {}


def _file_marker(path: Path) -> Path:
    return path.parent / f".{path.name}.streamcompress"


def _identity(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def mark_file_ours(path: Path) -> None:
    """Record beside a one-file output (GGUF) that we wrote it, as it is now: the
    file keeps every byte its format has (no marker inside it)."""
    _file_marker(path).write_text(json.dumps({"written_by": "streamcompress", "identity": _identity(path)}) + "\n")


def _remove(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)


def written_by_us(path: str | os.PathLike) -> bool:
    """True when ``path`` is an output this tool wrote: a Zarr group with our run
    record (or the import / restore attributes of earlier versions), a
    directory with our export marker, or a file whose marker beside it
    (:func:`mark_file_ours`) still matches it (size, time, inode)."""
    p = Path(path)
    if p.is_file() and not p.is_symlink():
        try:
            rec = json.loads(_file_marker(p).read_text())
            return rec.get("written_by") == "streamcompress" and rec.get("identity") == _identity(p)
        except (OSError, ValueError, AttributeError):
            return False
    if not p.is_dir() or p.is_symlink():
        return False
    if (p / EXPORT_MARKER).is_file():
        return True
    attrs = _group_attrs(p)
    if attrs is None:
        return False
    restored = isinstance(attrs.get("streamcompress"), dict) and "restored_from" in attrs["streamcompress"]
    imported = isinstance(attrs.get("import"), dict) and "source" in attrs["import"]
    return isinstance(attrs.get(RUN_ATTR), dict) or restored or imported


def replaceable(path: str | os.PathLike) -> bool:
    """What ``overwrite`` may replace: an output of ours, or an empty directory (nothing to lose)."""
    p = Path(path)
    if written_by_us(p):
        return True
    return p.is_dir() and not p.is_symlink() and not any(p.iterdir())


def remove_output(path: str | os.PathLike) -> None:
    """Delete an output of ours (or an empty directory); refuse anything else
    (checked again right here, whatever the caller checked before)."""
    p = Path(path)
    if not replaceable(p):
        raise OutputExists(str(path), ours=False)
    if p.is_file():
        p.unlink()
        _file_marker(p).unlink(missing_ok=True)
    else:
        shutil.rmtree(p)


def _lock_path(output: Path) -> Path:
    return output.parent / f".{output.name}.lock"


def _describe(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["started"])))
        return f"pid {info['pid']}, {info['command']}, started {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def _locked(output: Path, command: str) -> Iterator[None]:
    lock = _lock_path(output)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UnsafePath(f"cannot lock output '{output}': {e.strerror} ({lock})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = _describe(fd)
            os.close(fd)
            raise OutputBusy(f"output '{output}' is in use by another streamcompress run ({who}); "
                             "wait for it to end, or stop it first") from None
        try:  # the holder before us may have unlinked the file after we opened it: lock the live one
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command, "started": time.time()}).encode(), 0)
        except OSError as e:
            raise UnsafePath(f"cannot lock output '{output}': {e.strerror or e} ({lock})") from None
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)  # while still locked: a waiter re-checks the inode
        os.close(fd)


#: temporary names made beside an output (``.NAME.TAG-PID``)
_ASIDE_TAGS = ("creating", "partial", "old")


def _clear_leftovers(output: Path) -> None:
    """Remove what killed runs of ours left aside (we hold the lock: nobody else is making them)."""
    for tag in _ASIDE_TAGS:
        for p in glob.glob(glob.escape(str(output.parent / f".{output.name}.{tag}-")) + "[0-9]*"):
            _remove(Path(p))


@contextlib.contextmanager
def claim_output(output: str | os.PathLike, inputs: Sequence[str | os.PathLike], *, command: str,
                 overwrite: bool = False, resume: bool = False) -> Iterator[Path]:
    """Hold ``output`` for one run of ``command``: checks the paths, takes the lock,
    refuses to replace what is not ours; yields the output's real path.

    Nothing is deleted here: the caller replaces an existing output (with
    :func:`remove_output` or :func:`put_in_place`) while the claim is held.
    """
    out = real_path(output)
    check_apart(inputs, output)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)  # (after the path checks: nothing of an input)
    except OSError as e:
        raise UnsafePath(f"cannot create output '{output}': {e.strerror} ({out.parent})") from None
    with _locked(out, command):
        _clear_leftovers(out)
        if out.exists() or out.is_symlink():
            if not replaceable(out):  # (neither replaced nor resumed, whatever was asked)
                raise OutputExists(str(output), ours=False)
            if not (overwrite or resume):
                raise OutputExists(str(output))
        yield out


def aside(output: Path, tag: str = "partial") -> Path:
    """A fresh temporary path beside ``output`` (hidden, removed by the next claim if left)."""
    tmp = output.parent / f".{output.name}.{tag}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    return tmp


def fsync(path: Path) -> None:
    """Make a file, or a directory's entries, durable."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def put_in_place(tmp: Path, output: Path) -> None:
    """Rename the finished ``tmp`` to ``output``, replacing an old output of ours
    (moved aside first, deleted last: a kill in between leaves it at ``.NAME.old-PID``)."""
    old = None
    if output.exists():
        if not replaceable(output):
            raise OutputExists(str(output), ours=False)
        old = aside(output, "old")
        os.rename(output, old)
    os.rename(tmp, output)
    fsync(output.parent)
    if old is not None:
        _remove(old)


def build_aside(output: Path, build: Callable[[Path], T]) -> T:
    """``build(tmp)`` into a fresh path beside ``output``, then :func:`put_in_place`;
    on any failure (a kill leaves it for the next claim) the partial ``tmp`` is removed."""
    tmp = aside(output)
    try:
        result = build(tmp)
        put_in_place(tmp, output)
    except OutputError as e:  # (a sink's, whose --resume hint is for compress outputs)
        _remove(tmp)
        raise OutputError(e.name, e, dest=str(output)) from None
    except OSError as e:
        _remove(tmp)
        if e.errno in _WRITE_FAULTS and not isinstance(e, StreamCompressError):
            raise OutputError(None, e, dest=str(output)) from None
        raise
    except BaseException:
        _remove(tmp)
        raise
    return result


#: errors that can only come from writing (an input-side OSError is left as it is)
_WRITE_FAULTS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)
