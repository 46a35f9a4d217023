#!/usr/bin/env python
"""Peak RSS of ``streamcompress compress`` on a generated store (measured by the OS).

Each run is a child process; its peak RSS comes from ``getrusage(RUSAGE_CHILDREN)``
of a fresh helper process, so runs do not see each other's peaks.

    python scripts/peak_memory.py --size 2GB            # issue target: < 500 MB
    python scripts/peak_memory.py --size 2GB --dtype bfloat16 --args "--prune 0.5 --quantize int8"
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

_CHILD = """
import resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:]).returncode
dt = time.perf_counter() - t
print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, dt)
"""


def measure(cmd: list[str]) -> tuple[int, int, float]:
    """(exit code, peak RSS bytes, seconds) of ``cmd``."""
    out = subprocess.run([sys.executable, "-c", _CHILD, *cmd], capture_output=True, text=True)
    rc, kib, dt = out.stdout.strip().splitlines()[-1].split()
    return int(rc), int(kib) * 1024, float(dt)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="2GB")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--data-dir", default="bench_data")
    p.add_argument("--args", default="--prune 0.5 --quantize int8", help="compress flags")
    p.add_argument("--memory-budget", default="256MiB")
    a = p.parse_args(argv)
    data = Path(a.data_dir)
    data.mkdir(exist_ok=True)
    src = data / f"llama_{a.size}_{a.dtype}.zarr"
    if not src.exists():
        subprocess.run([sys.executable, str(HERE / "make_checkpoint.py"), str(src), "--size", a.size,
                        "--dtype", a.dtype], check=True)
    out = data / "peak_out.zarr"
    shutil.rmtree(out, ignore_errors=True)
    nbytes = sum(f.stat().st_size for f in src.rglob("*") if f.is_file())
    cmd = [sys.executable, "-m", "streamcompress", "compress", str(src), str(out), "--quiet",
           "--memory-budget", a.memory_budget, *shlex.split(a.args)]
    rc, peak, dt = measure(cmd)
    shutil.rmtree(out, ignore_errors=True)
    res = {"input_bytes": nbytes, "args": a.args, "memory_budget": a.memory_budget, "exit_code": rc,
           "peak_rss_bytes": peak, "seconds": round(dt, 2),
           "input_gb_per_s": round(nbytes / dt / 1e9, 3), "when": time.strftime("%Y-%m-%d")}
    print(json.dumps(res, indent=2))
    print(f"peak RSS {peak / 2**20:.0f} MiB for {nbytes / 2**30:.2f} GiB input "
          f"({a.args}, budget {a.memory_budget}) in {dt:.1f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
