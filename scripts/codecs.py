#!/usr/bin/env python
"""Measure output codecs on what streamcompress writes: int8 codes and float32
after 50% pruning, int4 packed codes. Prints ratio (stored/raw) and write/read
GB/s of raw bytes for each codec, so the defaults in store.py are chosen by
measurement.

    python scripts/codecs.py [--mib 64]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec


def samples(mib: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    n = mib << 18  # float32 elements
    w = (rng.standard_normal(n, dtype=np.float32) * 0.02).reshape(-1, 4096)
    pruned = np.where(np.abs(w) > np.median(np.abs(w)), w, 0).astype(np.float32)
    scale = np.abs(pruned).max(axis=1, keepdims=True) / 127
    codes = np.round(pruned / scale).astype(np.int8)
    nib = (np.clip(np.round(pruned / (np.abs(pruned).max(axis=1, keepdims=True) / 7)), -7, 7) + 8).astype(np.uint8)
    packed = (nib[:, 0::2] | (nib[:, 1::2] << 4)).astype(np.uint8)
    return {"float32 pruned 50%": pruned, "int8 codes pruned 50%": codes, "int4 packed pruned 50%": packed}


CODECS = {
    "none": None,
    "zstd-1": ZstdCodec(level=1),
    "zstd-3": ZstdCodec(level=3),
    "blosc-lz4-shuffle": BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
    "blosc-zstd1-shuffle": BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mib", type=int, default=64)
    a = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp())
    try:
        for label, data in samples(a.mib).items():
            print(f"{label} ({data.nbytes / 2**20:.0f} MiB)")
            for name, codec in CODECS.items():
                path = tmp / name
                g = zarr.open_group(str(path), mode="w")
                rows = max(1, (8 << 20) // (data.shape[1] * data.itemsize))
                arr = g.create_array("x", shape=data.shape, chunks=(rows, data.shape[1]), dtype=data.dtype,
                                     compressors=codec, config={"write_empty_chunks": True})
                t = time.perf_counter()
                arr[...] = data
                tw = time.perf_counter() - t
                t = time.perf_counter()
                _ = arr[...]
                tr = time.perf_counter() - t
                stored = arr.nbytes_stored()
                print(f"  {name:<20} ratio {stored / data.nbytes:6.3f}  write {data.nbytes / tw / 1e9:5.2f} GB/s"
                      f"  read {data.nbytes / tr / 1e9:5.2f} GB/s")
                shutil.rmtree(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
