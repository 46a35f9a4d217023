#!/usr/bin/env python
"""How many of the machine's cores a run keeps busy, with no disk to wait for.

Writes a Llama-shaped float32 safetensors file (``streamcompress.demo``'s
weights; kept in ``--data-dir`` and read from the page cache), then runs each
pipeline into a tmpfs (``--out-dir``, default ``/dev/shm``) ``--reps`` times,
each ``streamcompress compress`` a child process, and prints the medians of its
wall seconds, its CPU seconds (user + system, from ``getrusage`` of the child),
their ratio (the average number of cores busy over the whole run, start-up
included: issue 17's third target is at least 1.6 over a 4 GB run) and its peak
RSS.

    python scripts/cores.py --size 4GB --reps 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PIPELINES = {
    "q8_0 into out.gguf": (".gguf", ["--quantize", "q8_0"]),
    "q8_0 into a store": (".zarr", ["--quantize", "q8_0"]),
    "prune 0.5 + int8:channel into a store": (".zarr", ["--prune", "0.5", "--quantize", "int8:channel"]),
}

_CHILD = """
import resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
dt = time.perf_counter() - t
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(rc, r.ru_maxrss, dt, r.ru_utime + r.ru_stime)
"""


def write_f32(path: Path, nbytes: int, seed: int = 0) -> int:
    """A float32 safetensors file of about ``nbytes``, tensor by tensor; its parameter count."""
    from streamcompress.demo import fill, llama_shapes

    _, shapes = llama_shapes(nbytes, 4)
    header, off = {}, 0
    for name, shape in shapes:
        n = int(np.prod(shape)) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for name, shape in shapes:
            f.write(fill(rng, shape, name.endswith("norm.weight")).astype(np.float32).tobytes())
    return sum(int(np.prod(s)) for _, s in shapes)


def run(src: Path, out: Path, flags: list[str]) -> tuple[float, float, int]:
    """(wall s, CPU s, peak RSS bytes) of one compress."""
    shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "streamcompress", "compress", str(src), str(out), "--quiet", *flags]
    got = subprocess.run([sys.executable, "-c", _CHILD, *cmd], capture_output=True, text=True, check=True)
    rc, kib, wall, cpu = got.stdout.split()
    if int(rc):
        raise SystemExit(f"failed ({rc}): {' '.join(cmd)}")
    return float(wall), float(cpu), int(kib) * 1024


def main(argv=None) -> int:
    from streamcompress.engine.options import parse_size

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="4GB", help="float32 bytes of the model (default 4GB)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--data-dir", default="bench_data")
    p.add_argument("--out-dir", default="/dev/shm", help="a tmpfs (default /dev/shm)")
    a = p.parse_args(argv)
    data, outd = Path(a.data_dir), Path(a.out_dir)
    data.mkdir(exist_ok=True)
    src = data / f"cores_{a.size}_f32.safetensors"
    if not src.exists():
        write_f32(src, parse_size(a.size))
    subprocess.run(["cat", str(src)], stdout=subprocess.DEVNULL, check=True)  # (into the page cache)
    print(f"{src.stat().st_size / 1e9:.2f} GB of float32 in the page cache, output in {outd}; "
          f"medians of {a.reps} runs, interleaved\n")
    print("| pipeline | wall s | CPU s | cores busy | peak RSS MiB |")
    print("|---|---|---|---|---|")
    got = {k: [] for k in PIPELINES}
    for _ in range(a.reps):
        for k, (suffix, flags) in PIPELINES.items():
            got[k].append(run(src, outd / f"cores_out{suffix}", flags))
    for k, runs in got.items():
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        ratio = statistics.median(r[1] / r[0] for r in runs)
        print(f"| {k} | {wall:.2f} | {cpu:.2f} | {ratio:.2f} | {max(r[2] for r in runs) / 2**20:.0f} |")
    for suffix, _ in PIPELINES.values():
        out = outd / f"cores_out{suffix}"
        shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
