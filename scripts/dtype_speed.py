#!/usr/bin/env python
"""bfloat16 input against float32 input: parameters per second of the same job.

Writes the same weights (a Llama-shaped model from ``streamcompress.demo``, its
values rounded to bfloat16 so both files hold the same numbers) as one float32
and one bfloat16 safetensors file, then runs each pipeline on both in
interleaved pairs (``streamcompress compress``, a child process each, input in
the page cache, output on disk) and prints median wall seconds, peak RSS,
millions of parameters per second and the ratio bf16 / f32 (issue 17's second
target: at least 1).

    python scripts/dtype_speed.py --size 2GB --reps 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from peak_memory import measure  # noqa: E402

#: pipeline -> (output suffix, compress flags)
PIPELINES = {
    "q8_0-gguf": (".gguf", ["--quantize", "q8_0"]),
    "q8_0-zarr": (".zarr", ["--quantize", "q8_0"]),
    "prune0.5+int8-channel": (".zarr", ["--prune", "0.5", "--quantize", "int8:channel"]),
}


def write_pair(f32: Path, bf16: Path, nbytes: int, seed: int = 0) -> int:
    """The two safetensors files (``nbytes`` of float32), tensor by tensor; returns the parameter count."""
    import ml_dtypes

    from streamcompress.demo import fill, llama_shapes

    _, shapes = llama_shapes(nbytes, 4)
    rng = np.random.default_rng(seed)
    for path, item, code in ((f32, 4, "F32"), (bf16, 2, "BF16")):
        header, off = {}, 0
        for name, shape in shapes:
            n = int(np.prod(shape)) * item
            header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(path, "wb") as f:
            f.write(len(raw).to_bytes(8, "little") + raw)
    rng = np.random.default_rng(seed)
    with open(f32, "r+b") as a, open(bf16, "r+b") as b:
        a.seek(0, 2)
        b.seek(0, 2)
        for name, shape in shapes:
            x = fill(rng, shape, name.endswith("norm.weight")).astype(ml_dtypes.bfloat16)
            b.write(x.view(np.uint16).tobytes())
            a.write(x.astype(np.float32).tobytes())
    return sum(int(np.prod(s)) for _, s in shapes)


def run(src: Path, out: Path, flags: list[str]) -> tuple[float, int]:
    shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "streamcompress", "compress", str(src), str(out), "--quiet", *flags]
    rc, peak, secs = measure(cmd)
    if rc:
        raise SystemExit(f"failed ({rc}): {' '.join(cmd)}")
    return secs, peak


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="2GB", help="float32 bytes of the model (default 2GB)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=list(PIPELINES))
    p.add_argument("--data-dir", default="bench_data")
    p.add_argument("--json", default="dtype_speed.json")
    a = p.parse_args(argv)
    from streamcompress.engine import parse_size

    data = Path(a.data_dir)
    data.mkdir(exist_ok=True)
    f32, bf16 = data / f"st_{a.size}_f32.safetensors", data / f"st_{a.size}_bf16.safetensors"
    if not (f32.exists() and bf16.exists()):
        write_pair(f32, bf16, parse_size(a.size))
    from streamcompress.formats.safetensors import read_header

    params = sum(int(np.prod(e.shape)) for e in read_header(f32)[0])
    for f in (f32, bf16):
        subprocess.run(["cat", str(f)], stdout=subprocess.DEVNULL, check=True)  # into the page cache
    res = {"when": time.strftime("%Y-%m-%d %H:%M"), "size": a.size, "params": params, "rows": []}
    for name in a.pipelines:
        suffix, flags = PIPELINES[name]
        t: dict[str, list] = {"float32": [], "bfloat16": []}
        for rep in range(a.reps):
            for dt, src in (("float32", f32), ("bfloat16", bf16)):
                t[dt].append(run(src, data / f"dtype_out{suffix}", flags))
                print(f"  rep {rep + 1} {name:<22} {dt:<9} {t[dt][-1][0]:6.2f} s {t[dt][-1][1] / 2**20:5.0f} MiB",
                      flush=True)
        row = {"pipeline": name}
        for dt, v in t.items():
            med = statistics.median(s for s, _ in v)
            row[dt] = {"median_s": med, "mparams_per_s": params / med / 1e6,
                       "peak_rss_mib": max(m for _, m in v) / 2**20, "seconds": [s for s, _ in v]}
        row["bf16_over_f32"] = row["bfloat16"]["mparams_per_s"] / row["float32"]["mparams_per_s"]
        res["rows"].append(row)
    print(f"\n{params / 1e6:.0f} M parameters ({a.size} of float32)")
    print(f"{'pipeline':<22} {'f32 s':>7} {'bf16 s':>7} {'f32 Mp/s':>9} {'bf16 Mp/s':>10} {'bf16/f32':>9} "
          f"{'f32 RSS':>8} {'bf16 RSS':>9}")
    for r in res["rows"]:
        print(f"{r['pipeline']:<22} {r['float32']['median_s']:7.2f} {r['bfloat16']['median_s']:7.2f} "
              f"{r['float32']['mparams_per_s']:9.0f} {r['bfloat16']['mparams_per_s']:10.0f} "
              f"{r['bf16_over_f32']:9.2f} {r['float32']['peak_rss_mib']:7.0f}M {r['bfloat16']['peak_rss_mib']:8.0f}M")
    Path(a.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
