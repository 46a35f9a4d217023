"""Reading Zarr v3 stores: plain arrays, quantized tensors (codes + scales), and the
checks that keep damage from reading as data (missing chunks, unreadable metadata,
unfinished outputs).

bfloat16 has no Zarr dtype: it is stored as raw ``uint16`` bits with the array
attribute ``logical_dtype = "bfloat16"``, widened to float32 (bits << 16) for the kernels.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from ...errors import InvalidStore, MissingChunk, StoreNotFound
from ...layout import Block, TensorMeta, plan_blocks
from ...safety import RUN_ATTR
from ..base import AUX_DIR, LOGICAL_DTYPE_ATTR, TENSOR_ORDER_ATTR, Checkpoint, Format, TensorSource, digest
from .direct import DirectChunks, local_root
from .shards import missing_inner_chunk, sharding_codec, unreadable_index

__all__ = ["ZarrFormat", "ZarrSource", "QuantizedSource", "open_input", "group_sources", "read_region",
           "open_group"]


def _chunk_coords(array: Any, region: Any) -> Iterable[tuple[int, ...]]:
    """Grid coordinates of the stored objects (chunks, or shards) ``region`` touches."""
    if not array.ndim:
        return [()]
    grid = tuple(int(c) for c in (getattr(array, "shards", None) or array.chunks))
    if region is Ellipsis:
        region = tuple(slice(None) for _ in grid)
    ranges = []
    for sl, c, d in zip(region, grid, array.shape):
        lo = sl.start or 0
        hi = d if sl.stop is None else min(sl.stop, d)
        if hi <= lo:
            return []
        ranges.append(range(lo // c, (hi - 1) // c + 1))
    return itertools.product(*ranges)


def _has_object(array: Any, key: str) -> bool:
    root = local_root(array)
    if root is not None:
        return (root / array.path / key).is_file() if array.path else (root / key).is_file()
    from zarr.core.sync import sync

    return bool(sync(array.store_path.store.exists(f"{array.path}/{key}" if array.path else key)))


def read_region(array: Any, region: Any, tensor: str, where: str, missing: str = "error",
                out: Any = None) -> np.ndarray:
    """``array[region]`` (into zarr's ``out`` buffer if given), with a one-line
    :class:`InvalidStore` naming the tensor and ``where`` for unreadable chunk
    data, and :class:`MissingChunk` for a chunk with no stored object unless
    ``missing == "fill"``."""
    if missing != "fill":
        codec = sharding_codec(array)
        full = tuple(slice(None) for _ in array.shape) if region is Ellipsis else region
        for coords in _chunk_coords(array, region):
            key = array.metadata.encode_chunk_key(coords)
            what = None if _has_object(array, key) else f"chunk '{key}'"
            if what is None and codec is not None:
                why = unreadable_index(codec)
                if why is not None:
                    raise InvalidStore(
                        f"tensor '{tensor}' {where}: cannot tell the stored chunks of shard '{key}' of array "
                        f"'{array.path}' from missing ones ({why}); pass --missing-chunks fill to read "
                        "without this check")
                inner = missing_inner_chunk(array, codec, coords, key, full)
                if inner is not None:
                    what = f"inner chunk {inner} of shard '{key}'"
            if what is not None:
                raise MissingChunk(
                    f"tensor '{tensor}' {where}: {what} of array '{array.path}' is missing (lost or "
                    "never written); if the store was written with zarr's write_empty_chunks=False, "
                    "pass --missing-chunks fill to read missing chunks as the fill value")
    try:
        if out is not None:
            array.get_basic_selection(region, out=out)
            return out
        return np.asarray(array[region])
    except Exception as e:  # noqa: BLE001 - any codec/IO failure means unreadable chunk data
        raise InvalidStore(f"tensor '{tensor}' {where}: cannot read its chunk data (array '{array.path}'): "
                           f"{type(e).__name__}: {e}") from None


class ZarrSource(TensorSource):
    """One array of a Zarr v3 group."""

    owns_reads = True  # zarr decodes every selection into a new array

    def __init__(self, name: str, array: Any, missing: str = "error") -> None:
        self.array = array
        self.missing = missing
        self.attrs = dict(array.attrs)
        logical = self.attrs.get(LOGICAL_DTYPE_ATTR)
        dt = np.dtype(array.dtype)
        self.logical_dtype = str(logical) if logical else dt.name
        self.meta = TensorMeta(name, tuple(int(s) for s in array.shape), self.logical_dtype)
        shards = getattr(array, "shards", None)
        self.chunks = tuple(int(c) for c in (shards or array.chunks)) if array.ndim else ()
        self._direct: DirectChunks | bool | None = None  # found on first read_into

    @property
    def raw_dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def stored_itemsize(self) -> int:
        return self.raw_dtype.itemsize

    @property
    def reads_into(self) -> bool:
        """float32: read straight into the engine's buffers; bfloat16 bits: widened into them by a kernel."""
        return self.meta.ndim > 0 and (self.bf16_bits or (self.raw_dtype == np.float32
                                                          and self.logical_dtype == "float32"))

    def read_raw(self, block: Block, out: np.ndarray | None = None) -> np.ndarray:
        where = f"block {block.index} (flat elements {block.start}..{block.start + block.size - 1})"
        if self.meta.ndim == 0:
            return read_region(self.array, (), self.meta.name, where, self.missing)
        nd = None
        if out is not None:
            from zarr.core.buffer import default_buffer_prototype

            nd = default_buffer_prototype().nd_buffer.from_numpy_array(out)
        res = read_region(self.array, block.region, self.meta.name, where, self.missing, nd)
        return out if out is not None else res

    def _direct_chunks(self) -> DirectChunks | None:
        if self._direct is None:
            self._direct = DirectChunks.of(self.array) or False
        return self._direct or None

    def read_into(self, block: Block, out: np.ndarray) -> np.ndarray:
        flat = out[: block.size]
        d = self._direct_chunks()
        if self.bf16_bits:
            return self.widen_bits_into(block, flat, d.map(block.start, block.size) if d else None)
        if not (d and d.read(block.start, flat)):
            self.read_raw(block, flat.reshape(block.shape))
        return flat

    @property
    def maps(self) -> bool:
        return self.reads_into and not self.bf16_bits and self._direct_chunks() is not None

    def map_block(self, block: Block) -> np.ndarray | None:
        return self._direct.map(block.start, block.size) if self.maps else None

    def stored_bytes(self) -> int:
        return int(self.array.nbytes_stored())

    def fingerprint(self) -> str:
        """Array metadata plus (name, size, mtime) of every chunk file, for local stores."""
        parts: list[Any] = [self.meta.name, list(self.meta.shape), self.logical_dtype, list(self.chunks or ())]
        root = local_root(self.array)
        if root is not None:
            d = root / self.array.path
            for f in sorted(d.rglob("*")) if d.is_dir() else []:
                if f.is_file():
                    st = f.stat()
                    parts.append([str(f.relative_to(d)), st.st_size, st.st_mtime_ns])
        return digest(parts)


class QuantizedSource(TensorSource):
    """A quantized tensor (codes + ``_scale`` [+ ``_zero_point`` or ``_min``]), read as float32.

    The array attribute ``quantization`` (FORMAT.md) says how to dequantize.
    """

    def __init__(self, name: str, codes: Any, scale: Any, zero_point: Any | None, missing: str = "error",
                 minimum: Any | None = None) -> None:
        self.codes, self.scale, self.zero_point, self.minimum = codes, scale, zero_point, minimum
        self.missing = missing
        self.attrs = dict(codes.attrs)
        q = self.attrs["quantization"]
        self.q = q
        self.meta = TensorMeta(name, tuple(int(s) for s in q["shape"]))
        self.logical_dtype = "float32"
        shape = self.meta.shape
        gran = q["granularity"]
        n = max(math.prod(shape), 1)
        if gran in ("group", "block"):  # (block: a tile's rows are its units)
            self.L, self.g = shape[-1], int(q["group_size"])
        elif gran == "channel":
            self.L = self.g = max(n // shape[0], 1)
        else:
            self.L = self.g = n
        self.gran = gran
        self.block_multiple = math.lcm(2 if q["packed"] else 1, self.g if gran == "group" else 1)
        self.chunks = None
        if shape and not q["packed"]:
            cs = getattr(codes, "shards", None) or codes.chunks
            self.chunks = tuple(int(c) for c in cs)
        self._small: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def raw_dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    @property
    def stored_itemsize(self) -> int:
        return 1

    @property
    def display_dtype(self) -> str:
        return self.q["scheme"]

    def stored_bytes(self) -> int:
        return sum(int(a.nbytes_stored()) for a in self._parts.values() if a is not None)

    quantized = True

    @property
    def _parts(self) -> dict[str, Any]:
        return {"codes": self.codes, "scale": self.scale, "zero_point": self.zero_point, "min": self.minimum}

    @property
    def quantization(self) -> dict[str, Any]:
        """The array attribute ``quantization`` (FORMAT.md)."""
        return self.q

    def parts(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """``{"codes" | "scale" | "zero_point" | "min": (shape, dtype)}`` of the stored arrays."""
        return {k: (tuple(int(d) for d in a.shape), np.dtype(a.dtype)) for k, a in self._parts.items()
                if a is not None}

    def part_blocks(self, part: str, max_elems: int) -> Iterator[np.ndarray]:
        """A stored part (``codes``, ``scale``, ``zero_point``, ``min``) block by block, in C order
        (blocks of whole rows when a row fits in ``max_elems``)."""
        arr = self._parts[part]
        shape = tuple(arr.shape)
        if not shape:
            yield np.ascontiguousarray(read_region(arr, (), self.meta.name, part, self.missing))
            return
        for b in plan_blocks(shape, max_elems, tuple(arr.chunks)):
            yield np.ascontiguousarray(read_region(arr, b.region, self.meta.name, f"{part} block {b.index}",
                                                   self.missing))

    def part_rows(self, part: str, r0: int, r1: int) -> np.ndarray:
        """Rows ``r0:r1`` of a stored part of a 1-D or 2-D tensor (1-D: one row)."""
        arr = self._parts[part]
        region = (slice(r0, r1), slice(None)) if len(arr.shape) == 2 else (slice(None),)
        a = read_region(arr, region, self.meta.name, f"{part} rows {r0}:{r1}", self.missing)
        return np.ascontiguousarray(a).reshape(r1 - r0, -1)

    def _get(self, array: Any, region: Any, block: Block) -> np.ndarray:
        return read_region(array, region, self.meta.name, f"block {block.index}", self.missing)

    def _offsets(self, region: Any, block: Block, n: int) -> np.ndarray:
        """Zero points (int64), or the float32 mins of ggml's ``_1`` kinds, of a scale region."""
        if self.minimum is not None:
            return np.asarray(self._get(self.minimum, region, block), dtype=np.float32).reshape(-1)
        if self.zero_point is not None:
            return self._get(self.zero_point, region, block).reshape(-1).astype(np.int64)
        return np.zeros(n, np.int64)

    def _scales(self, block: Block) -> tuple[np.ndarray, np.ndarray]:
        """Scales and zero points (or mins) of the units the block touches, in unit order."""
        if self.gran != "group":
            if self._small is None:
                s = np.asarray(self._get(self.scale, ..., block), dtype=np.float32).reshape(-1)
                self._small = (s, self._offsets(..., block, s.size))
            from ...kernels import tile_of_units, unit_range

            u0, k = unit_range(block.start, block.size, self.L, self.g)
            at = tile_of_units(self.L, self.g, u0, k) if self.gran == "block" else slice(u0, u0 + k)
            return self._small[0][at], self._small[1][at]
        last = block.region[-1]
        lo, hi = last.start or 0, last.stop
        region = tuple(block.region[:-1]) + (slice(lo // self.g, -(-hi // self.g)),)
        s = np.asarray(self._get(self.scale, region, block), dtype=np.float32).reshape(-1)
        return s, self._offsets(region, block, s.size)

    def read_raw(self, block: Block) -> np.ndarray:
        return self.read(block).reshape(block.shape)

    def read(self, block: Block) -> np.ndarray:
        from ...kernels import dequantize_units, dequantize_units_fp8, e4m3_values, unpack_nibbles

        shape = self.meta.shape
        if self.q.get("type") == "float":  # float8 E4M3 codes (fp8)
            codes = np.ascontiguousarray(self._get(self.codes, block.region if shape else (), block)).reshape(-1)
            s, _ = self._scales(block)
            out = np.empty(codes.size, dtype=np.float32)
            dequantize_units_fp8(codes, block.start, self.L, self.g, s, e4m3_values(), out)
            return out
        if self.q["packed"]:
            if shape:
                last = block.region[-1]
                lo, hi = last.start or 0, last.stop
                region = tuple(block.region[:-1]) + (slice(lo // 2, -(-hi // 2)),)
                packed = self._get(self.codes, region, block)
                nib = unpack_nibbles(packed, hi - lo)
            else:
                nib = unpack_nibbles(self._get(self.codes, (slice(0, 1),), block), 1)
            codes = nib.astype(np.int16) - (8 if self.q["symmetric"] else 0)
        else:
            codes = self._get(self.codes, block.region if shape else (), block).astype(np.int16)
        codes = np.ascontiguousarray(codes).reshape(-1)
        s, z = self._scales(block)
        out = np.empty(codes.size, dtype=np.float32)
        if self.minimum is not None:  # ggml's _1 kinds: q * d + min
            from ...kernels import dequantize_units_affine

            dequantize_units_affine(codes, block.start, self.L, self.g, s, z, out)
        else:
            dequantize_units(codes, block.start, self.L, self.g, s, z, out)
        return out


def open_group(path: str | os.PathLike, mode: str, attributes: dict[str, Any] | None = None):
    import zarr

    if attributes is not None:
        return zarr.open_group(str(path), mode=mode, attributes=attributes)
    return zarr.open_group(str(path), mode=mode)


def open_input(path: str | os.PathLike, missing: str = "error",
               unfinished_ok: bool = False) -> tuple[Any, list[TensorSource]]:
    """Open a Zarr v3 group read-only and list its tensors in model order.

    An output of ours whose run record does not say ``complete`` (a run that
    was stopped or is still going) is refused unless ``unfinished_ok``."""
    from zarr.errors import NodeNotFoundError

    p = Path(path)
    if not p.exists():
        raise StoreNotFound(str(path))
    if p.is_dir() and not os.access(p, os.R_OK | os.X_OK):
        raise InvalidStore(f"'{path}' is not readable (permission denied)")
    try:
        group = open_group(p, "r")
    except (NodeNotFoundError, FileNotFoundError, NotADirectoryError):
        raise InvalidStore(f"'{path}' is not a Zarr v3 group (no zarr.json)") from None
    except (ValueError, KeyError, OSError) as e:
        raise InvalidStore(f"'{path}' is not a readable Zarr v3 group: {e}") from None
    if getattr(group.metadata, "zarr_format", 3) != 3:
        raise InvalidStore(f"'{path}' is a Zarr v{group.metadata.zarr_format} group; v3 is needed")
    rec = group.attrs.get(RUN_ATTR)
    unfinished = isinstance(rec, dict) and rec.get("status") != "complete"
    if unfinished and not unfinished_ok:
        cmd = rec.get("command", "compress")
        hint = "finish it with compress --resume" if cmd == "compress" else f"run {cmd} again"
        raise InvalidStore(f"'{path}' is an unfinished streamcompress output ({cmd} {rec.get('status')}, "
                           f"not complete): {hint}")
    return group, group_sources(group, missing, partial=unfinished)


def group_sources(group: Any, missing: str = "error", partial: bool = False) -> list[TensorSource]:
    """The tensors of an open Zarr group in model order (quantized tensors as
    :class:`QuantizedSource`, their companion arrays hidden). ``partial`` (an
    unfinished output, opened for ``info``): tensors not yet whole are left out."""
    arrays = {}
    with warnings.catch_warnings():
        # __aux__ (config.json, tokenizer files kept with the store) is not Zarr
        warnings.filterwarnings("ignore", message=r"Object at __aux__ is not recognized")
        try:
            members = list(group.members(max_depth=None))
            err = ""
        except Exception as e:  # noqa: BLE001 - a member's zarr.json that zarr cannot parse
            members, err = [], f": {type(e).__name__}: {e}"
    # zarr skips (with a warning) or raises on a member whose metadata it cannot read:
    # either way a tensor would be lost, so every node's zarr.json must have become a member
    listed = {name for name, _ in members}
    files = _metadata_files(group)
    for name, (f, ok) in sorted(files.items(), key=lambda kv: kv[1][1]):  # unparseable ones first
        if name not in listed:
            raise InvalidStore(f"'{f}' is not valid Zarr v3 metadata (node '{name}' cannot be read){err}")
    if err:
        raise InvalidStore(f"a zarr.json of '{local_root(group) or group}' is not valid Zarr v3 metadata{err}")
    for name, node in members:
        if hasattr(node, "shape") and not name.startswith("__"):
            arrays[name] = node
    companions = set()
    for name, node in arrays.items():
        q = node.attrs.get("quantization")
        if isinstance(q, dict):
            for key in ("scale", "zero_point", "min"):
                if q.get(key):
                    companions.add(name + q[key])
    tensors = {n: a for n, a in arrays.items() if n not in companions}
    order = group.attrs.get(TENSOR_ORDER_ATTR)
    if isinstance(order, list):
        lost = [n for n in order if n not in tensors]
        if lost and not partial:
            raise InvalidStore(f"tensor '{lost[0]}' (in the store's tensor_order) is missing from the store"
                               + (f", and {len(lost) - 1} more" if len(lost) > 1 else ""))
    if isinstance(order, list) and sorted(order) == sorted(tensors):
        names = list(order)
    else:
        names = sorted(tensors)
    sources: list[TensorSource] = []
    for n in names:
        q = tensors[n].attrs.get("quantization")
        if isinstance(q, dict):
            try:
                zp = arrays[n + q["zero_point"]] if q.get("zero_point") else None
                mins = arrays[n + q["min"]] if q.get("min") else None
                sources.append(QuantizedSource(n, tensors[n], arrays[n + q["scale"]], zp, missing, mins))
            except (KeyError, TypeError, ValueError) as e:
                if partial:
                    continue
                raise InvalidStore(f"quantized tensor '{n}' has a bad 'quantization' attribute or misses an "
                                   f"array: {type(e).__name__}: {e}") from None
        else:
            sources.append(ZarrSource(n, tensors[n], missing))
    return sources


def _metadata_files(group: Any) -> dict[str, tuple[Path, bool]]:
    """Every node's ``zarr.json`` below a local group (not under ``__aux__``, not
    inside arrays): member name -> (file, whether it reads as Zarr v3 metadata)."""
    root = local_root(group)
    if root is None:
        return {}
    top = root / group.path if group.path else root
    found: dict[str, tuple[Path, bool]] = {}
    for d, dirs, files in os.walk(top):
        rel = os.path.relpath(d, top)
        dirs[:] = sorted(x for x in dirs if not (rel == "." and x == AUX_DIR))
        if "zarr.json" not in files:
            continue
        f = Path(d) / "zarr.json"
        try:
            meta = json.loads(f.read_bytes())
            ok = isinstance(meta, dict) and meta.get("zarr_format") == 3 and meta.get("node_type") in (
                "array", "group")
        except (OSError, ValueError):
            ok, meta = False, {}
        if not ok or meta.get("node_type") == "array":
            dirs[:] = []  # (chunks below an array)
        if rel != ".":
            found[rel.replace(os.sep, "/")] = (f, ok)
    return found



class ZarrFormat(Format):
    """A Zarr v3 group (a directory with ``zarr.json``)."""

    name = "zarr"

    @classmethod
    def detect(cls, path: Path) -> bool:
        return path.is_dir() and (path / "zarr.json").is_file()

    @classmethod
    def open(cls, path: Path, missing: str = "error", unfinished_ok: bool = False) -> Checkpoint:
        group, sources = open_input(path, missing, unfinished_ok)
        return Checkpoint(cls.name, sources, dict(group.attrs), group, path)
