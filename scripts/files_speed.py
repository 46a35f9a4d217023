"""What the number of files costs a store on disk, without streamcompress.

The same bytes (156 tensors of 7 MiB, 1.07 GB: as much as a Q8_0 store of
issue 17's 4 GB model) written three ways, each tensor made durable before
the next one starts, as a run's completions do:

- ``7``: seven files a tensor (a store of today: chunk files and scales, each
  written aside and renamed, then every file and directory fsynced);
- ``7p``: the same, each tensor's fsyncs issued from 8 threads at once;
- ``1``: one file a tensor (what Zarr's sharding codec would write);
- ``one``: one preallocated file, ``fdatasync`` after each tensor (the GGUF path).

    python scripts/files_speed.py --dir /tmp/files --reps 3

Prints each way's seconds per repetition, interleaved, and the medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TENSORS, PIECE = 156, 7 << 20


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def run(way: str, work: Path, data: bytes, pool: ThreadPoolExecutor) -> float:
    """Seconds to write and make durable every tensor ``way``; starts from an empty, synced ``work``."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.sync()
    t0 = time.perf_counter()
    if way == "one":
        fd = os.open(work / "one.bin", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.posix_fallocate(fd, 0, TENSORS * len(data))
            for t in range(TENSORS):
                os.pwrite(fd, data, t * len(data))
                os.fdatasync(fd)
        finally:
            os.close(fd)
    else:
        per = int(way.rstrip("p"))
        piece = data[: len(data) // per]
        for t in range(TENSORS):
            d = work / f"t{t}" / "c"
            d.mkdir(parents=True)
            for i in range(per):
                with open(d / f"{i}.partial", "wb") as f:
                    f.write(piece)
                os.replace(d / f"{i}.partial", d / str(i))
            files = [d / str(i) for i in range(per)]
            if way.endswith("p"):
                list(pool.map(_fsync, files))
                list(pool.map(_fsync, [d, d.parent]))
            else:
                for p in [*files, d, d.parent]:
                    _fsync(p)
        _fsync(work)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, required=True, help="a directory on the disk to measure (emptied)")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    data = os.urandom(PIECE)
    ways = ("7", "7p", "1", "one")
    times: dict[str, list[float]] = {w: [] for w in ways}
    with ThreadPoolExecutor(8) as pool:
        for _ in range(args.reps):
            for w in ways:
                times[w].append(run(w, args.dir / "work", data, pool))
    shutil.rmtree(args.dir / "work", ignore_errors=True)
    for w in ways:
        label = {"7": "7 files a tensor", "7p": "7 files, 8 fsyncs at once", "1": "1 file a tensor",
                 "one": "one preallocated file"}[w]
        print(f"{label:24s} median {statistics.median(times[w]):.3f} s  runs {[round(x, 3) for x in times[w]]}")


if __name__ == "__main__":
    main()
