#!/usr/bin/env python
"""Benchmark streamcompress against baselines measured in the same run.

For each model size (generated Llama-shaped Zarr checkpoints, reused when
present) and pipeline, runs interleaved repetitions of

- ``floor``: the I/O floor: read every input chunk once and write the same
  output arrays (shapes, dtypes, chunks, codec) with no compute, through
  zarr, on one thread; int8 codes are filled with the float32 input's high
  byte (sign and exponent: few distinct values, like real codes), float32
  outputs with the input;
- ``floor-direct``: the same through streamcompress's own I/O path (raw
  chunks read with ``preadv``, whole output chunks written to their files
  without zarr's per-call work), one thread: the floor that path could reach;
- ``sc``: ``streamcompress compress`` (the CLI, as users run it);
- ``numpy``: a naive in-memory numpy implementation of the same pipeline
  (whole tensor loaded, threshold by ``np.partition``, quantized with numpy);

each in a child process, timing wall-clock and peak RSS (``getrusage`` of
the child). Measured in the same run, two more floors: ``memcopy``, numpy copying
the input's bytes once (memory bandwidth), and ``dd``, ``dd ... conv=fdatasync``
writing as many bytes as ``sc`` wrote (the disk's durable write speed). Prints
medians, GB/s of input, ``sc`` as a fraction of each floor's speed (``sc/mcpy``,
``sc/dd``), the speed-up over numpy and the memory ratio, and writes JSON.

    python scripts/bench.py --sizes 1GB 4GB --reps 3
    python scripts/bench.py --sizes 8GB --reps 1 --no-numpy        # memory at 8 GB
    python scripts/bench.py --sizes 1GB --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
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

PIPELINES = {
    "prune0.5+int8-channel": ["--prune", "0.5", "--quantize", "int8:channel"],
    "seed-int8-simulated": ["--quantize", "int8", "--simulate"],
    "q8_0": ["--quantize", "q8_0"],
}


# -- child modes ------------------------------------------------------------------
def _out_layout(name: str, arr, pipeline: str):
    """(suffix, shape, dtype) of the arrays streamcompress writes for this pipeline."""
    shape = tuple(arr.shape)
    if pipeline == "seed-int8-simulated":
        return [("", shape, "float32")]
    if pipeline == "q8_0":
        scale = shape[:-1] + (math.ceil(shape[-1] / 32),) if shape else (1,)
        return [("", shape, "int8"), ("_scale", scale, "float16")]
    scale = (shape[0],) + (1,) * (len(shape) - 1) if len(shape) >= 2 else (1,)
    return [("", shape, "int8"), ("_scale", scale, "float32")]


def floor_run(src: str, out: str, pipeline: str) -> None:
    import zarr
    from zarr.codecs import ZstdCodec

    from streamcompress.formats.base import LOGICAL_DTYPE_ATTR

    g = zarr.open_group(src, mode="r")
    o = zarr.open_group(out, mode="w")
    for name in g.attrs["tensor_order"]:
        a = g[name]
        layout = _out_layout(name, a, pipeline)
        outs = {suf: o.create_array(name + suf, shape=shp, chunks=a.chunks if shp == a.shape else shp,
                                    dtype=dt, compressors=ZstdCodec(level=1), config={"write_empty_chunks": True})
                for suf, shp, dt in layout}
        bf16 = a.attrs.get(LOGICAL_DTYPE_ATTR) == "bfloat16"
        step = a.chunks[0]
        for r in range(0, a.shape[0], step):
            x = a[r:r + step]
            if bf16:
                x = (x.astype(np.uint32) << 16).view(np.float32)
            for suf, _shp, dt in layout:
                if suf == "":
                    data = x.astype(np.float32, copy=False) if dt == "float32" else \
                        x.astype(np.float32, copy=False).view(np.int8)[..., 3::4]
                    outs[suf][r:r + step] = data
        for suf, shp, dt in layout:
            if suf:
                outs[suf][...] = np.ones(shp, dtype=dt)


def floor_direct_run(src: str, out: str, pipeline: str) -> None:
    """The floor through streamcompress's own I/O path: raw input chunks read with
    ``preadv`` into one reused buffer, whole output chunks zstd-compressed and
    written straight to their files (the same bytes zarr writes). No compute."""
    import zarr

    from streamcompress.layout import plan_blocks
    from streamcompress.formats.zarr import ZarrSink, ZarrSource

    g = zarr.open_group(src, mode="r")
    sink = ZarrSink(out, overwrite=True)
    buf = np.empty(0, np.float32)
    for name in g.attrs["tensor_order"]:
        a = g[name]
        s = ZarrSource(name, a)
        layout = _out_layout(name, a, pipeline)
        for suf, shp, dt in layout:
            sink.create(name + suf, shp, a.chunks if shp == a.shape else shp, dt, {})
        for b in plan_blocks(tuple(a.shape), math.prod(a.chunks), tuple(a.chunks)) if a.ndim else []:
            if buf.size < b.size:
                buf = np.empty(b.size, np.float32)
            x = s.read_into(b, buf) if s.reads_into else s.read(b)
            for suf, _shp, dt in layout:
                if suf == "":
                    data = x if dt == "float32" else x.view(np.int8)[3::4]
                    sink.write(name, b.region, data.reshape(b.shape))
        for suf, shp, dt in layout:
            if suf:
                sink.write(name + suf, tuple(slice(0, d) for d in shp), np.ones(shp, dtype=dt))


def numpy_run(src: str, out: str, pipeline: str) -> None:
    """The naive way: whole tensors in memory, numpy ops."""
    import zarr
    from zarr.codecs import ZstdCodec

    from streamcompress.formats.base import LOGICAL_DTYPE_ATTR

    g = zarr.open_group(src, mode="r")
    o = zarr.open_group(out, mode="w")
    for name in g.attrs["tensor_order"]:
        a = g[name]
        x = a[...]
        if a.attrs.get(LOGICAL_DTYPE_ATTR) == "bfloat16":
            x = (x.astype(np.uint32) << 16).view(np.float32)
        x = x.astype(np.float32)
        kw = dict(compressors=ZstdCodec(level=1), config={"write_empty_chunks": True})
        if pipeline == "prune0.5+int8-channel":
            k = int(0.5 * x.size)
            if k:
                s = np.abs(x).ravel()
                thr = np.partition(s, k - 1)[k - 1]
                x = np.where(np.abs(x) <= thr, np.float32(0), x)
        if pipeline == "seed-int8-simulated":
            scale = np.abs(x).max() / np.float32(127) or np.float32(1)
            y = (np.clip(np.round(x / scale), -127, 127) * scale).astype(np.float32)
            o.create_array(name, shape=y.shape, chunks=a.chunks, dtype="float32", **kw)[...] = y
            continue
        if pipeline == "q8_0" and x.ndim and x.shape[-1] % 32 == 0:
            blocks = x.reshape(-1, 32)
            d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
            q = np.round(blocks / np.where(d == 0, 1, d)).astype(np.int8).reshape(x.shape)
            scale = d.astype(np.float16).reshape(x.shape[:-1] + (-1,))
        else:
            rows = x.reshape(x.shape[0], -1) if x.ndim >= 2 else x.reshape(1, -1)
            d = np.abs(rows).max(axis=1, keepdims=True) / np.float32(127)
            q = np.clip(np.round(rows / np.where(d == 0, 1, d)), -127, 127).astype(np.int8).reshape(x.shape)
            scale = d.astype(np.float32)
        o.create_array(name, shape=q.shape, chunks=a.chunks, dtype="int8", **kw)[...] = q
        o.create_array(name + "_scale", shape=scale.shape, chunks=scale.shape, dtype=scale.dtype, **kw)[...] = scale


# -- driver -----------------------------------------------------------------------
def ensure_model(data: Path, size: str, dtype: str) -> Path:
    src = data / f"llama_{size}_{dtype}.zarr"
    if not (src / "zarr.json").exists():
        shutil.rmtree(src, ignore_errors=True)
        subprocess.run([sys.executable, str(HERE / "make_checkpoint.py"), str(src), "--size", size,
                        "--dtype", dtype], check=True)
    return src


def dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def run_one(kind: str, src: Path, out: Path, pipeline: str, budget: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    if kind == "sc":
        cmd = [sys.executable, "-m", "streamcompress", "compress", str(src), str(out), "--quiet",
               "--memory-budget", budget, *PIPELINES[pipeline]]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), f"--{kind}-run", str(src), str(out), pipeline]
    rc, peak, secs = measure(cmd)
    if rc != 0:
        raise SystemExit(f"{kind} run failed ({rc}): {' '.join(cmd)}")
    out_bytes = dir_bytes(out)
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": secs, "peak_rss": peak, "out_bytes": out_bytes}


def memcopy_seconds(nbytes: int, reps: int = 3) -> float:
    """The memory-bandwidth floor: seconds numpy takes to copy ``nbytes`` (in 256 MiB
    pieces, buffers touched first), median of ``reps``."""
    piece = min(nbytes, 256 << 20) // 4
    a = np.ones(piece, np.float32)
    b = np.zeros(piece, np.float32)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        left = nbytes // 4
        while left > 0:
            n = min(left, piece)
            np.copyto(b[:n], a[:n])
            left -= n
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def dd_seconds(path: Path, nbytes: int) -> float:
    """The disk's durable write floor: ``dd if=/dev/zero bs=1M conv=fdatasync`` of ``nbytes``."""
    t0 = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={max(1, -(-nbytes // (1 << 20)))}",
                    "conv=fdatasync"], check=True, capture_output=True)
    took = time.perf_counter() - t0
    path.unlink()
    return took


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["1GB"])
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=list(PIPELINES))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-numpy", action="store_true", help="skip the numpy baseline (it needs RAM ~ 5x size)")
    p.add_argument("--memory-budget", default="256MiB")
    p.add_argument("--data-dir", default="bench_data")
    p.add_argument("--json", default="bench_results.json")
    p.add_argument("--gguf-peer", action="store_true",
                   help="also F32 GGUF -> Q8_0 GGUF against llama.cpp's quantizer (scripts/ggml_peer.py; needs "
                        "the llama_cpp module: PyPI llama-cpp-python, built from source)")
    p.add_argument("--floor-run", nargs=3, metavar=("SRC", "OUT", "PIPELINE"), help=argparse.SUPPRESS)
    p.add_argument("--floor-direct-run", nargs=3, metavar=("SRC", "OUT", "PIPELINE"), help=argparse.SUPPRESS)
    p.add_argument("--numpy-run", nargs=3, metavar=("SRC", "OUT", "PIPELINE"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.floor_run:
        floor_run(*a.floor_run)
        return 0
    if a.floor_direct_run:
        floor_direct_run(*a.floor_direct_run)
        return 0
    if a.numpy_run:
        numpy_run(*a.numpy_run)
        return 0

    data = Path(a.data_dir)
    data.mkdir(exist_ok=True)
    kinds = ["floor", "floor-direct", "sc"] + ([] if a.no_numpy else ["numpy"])
    results = {"when": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{os.cpu_count()} cores, {platform.machine()}",
               "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]), "runs": []}
    for size in a.sizes:
        src = ensure_model(data, size, a.dtype)
        in_bytes = dir_bytes(src)
        run_one("floor", src, data / "bench_out.zarr", a.pipelines[0], a.memory_budget)  # warm the page cache
        samples: dict[tuple[str, str], list[dict]] = {}
        for rep in range(a.reps):
            for pipeline in a.pipelines:
                for kind in kinds:
                    r = run_one(kind, src, data / "bench_out.zarr", pipeline, a.memory_budget)
                    samples.setdefault((pipeline, kind), []).append(r)
                    print(f"  rep {rep + 1} {size} {pipeline:<24} {kind:<12} {r['seconds']:7.2f} s "
                          f"{r['peak_rss'] / 2**20:7.0f} MiB", flush=True)
        mem_s = memcopy_seconds(in_bytes)
        for pipeline in a.pipelines:
            row = {"size": size, "dtype": a.dtype, "input_bytes": in_bytes, "pipeline": pipeline,
                   "memcopy_seconds": mem_s}
            out_bytes = samples[(pipeline, "sc")][-1]["out_bytes"]
            row["dd_fdatasync_seconds"] = dd_seconds(data / "dd.bin", out_bytes)
            for kind in kinds:
                s = samples[(pipeline, kind)]
                row[kind] = {"median_seconds": statistics.median(x["seconds"] for x in s),
                             "median_peak_rss": statistics.median(x["peak_rss"] for x in s),
                             "out_bytes": s[-1]["out_bytes"], "seconds": [x["seconds"] for x in s]}
            results["runs"].append(row)

    if a.gguf_peer:
        import importlib.util

        if importlib.util.find_spec("llama_cpp") is None:
            raise SystemExit("--gguf-peer needs the llama_cpp module (pip install llama-cpp-python)")
        from ggml_peer import speed

        results["gguf_peer"] = [speed(size, a.reps, data) for size in a.sizes]
        for r in results["gguf_peer"]:
            print(f"  gguf {r['size']} q8_0: streamcompress {r['median_s']['streamcompress']:.2f} s "
                  f"{r['peak_rss_mib']['streamcompress']:.0f} MiB, llama.cpp (+sync) {r['median_s']['llama.cpp']:.2f} s "
                  f"{r['peak_rss_mib']['llama.cpp']:.0f} MiB: ours at {r['ours_speed_vs_llama_cpp']:.2f}x its speed, "
                  f"tensors identical: {r['tensors_identical']}", flush=True)

    print()
    print(f"{'size':<6} {'pipeline':<24} {'sc GB/s':>8} {'floor GB/s':>10} {'sc/floor':>8} "
          f"{'direct GB/s':>11} {'sc/direct':>9} {'sc/mcpy':>8} {'sc/dd':>6} {'vs numpy':>8} {'sc RSS':>8} "
          f"{'np RSS':>8} {'RSS ratio':>9}")
    for row in results["runs"]:
        gbs = row["input_bytes"] / row["sc"]["median_seconds"] / 1e9
        fgbs = row["input_bytes"] / row["floor"]["median_seconds"] / 1e9
        dgbs = row["input_bytes"] / row["floor-direct"]["median_seconds"] / 1e9
        row["sc_gb_per_s"], row["floor_gb_per_s"], row["floor_direct_gb_per_s"] = gbs, fgbs, dgbs
        row["sc_fraction_of_floor"] = row["floor"]["median_seconds"] / row["sc"]["median_seconds"]
        row["sc_fraction_of_direct_floor"] = row["floor-direct"]["median_seconds"] / row["sc"]["median_seconds"]
        row["sc_fraction_of_memcopy"] = row["memcopy_seconds"] / row["sc"]["median_seconds"]
        row["sc_fraction_of_dd"] = row["dd_fdatasync_seconds"] / row["sc"]["median_seconds"]
        line = (f"{row['size']:<6} {row['pipeline']:<24} {gbs:8.2f} {fgbs:10.2f} "
                f"{row['sc_fraction_of_floor']:8.2f} {dgbs:11.2f} {row['sc_fraction_of_direct_floor']:9.2f} "
                f"{row['sc_fraction_of_memcopy']:8.3f} {row['sc_fraction_of_dd']:6.2f}")
        if "numpy" in row:
            row["speedup_vs_numpy"] = row["numpy"]["median_seconds"] / row["sc"]["median_seconds"]
            row["rss_ratio_numpy_over_sc"] = row["numpy"]["median_peak_rss"] / row["sc"]["median_peak_rss"]
            line += (f" {row['speedup_vs_numpy']:7.1f}x {row['sc']['median_peak_rss'] / 2**20:6.0f}M "
                     f"{row['numpy']['median_peak_rss'] / 2**20:6.0f}M {row['rss_ratio_numpy_over_sc']:8.1f}x")
        else:
            line += f" {'-':>8} {row['sc']['median_peak_rss'] / 2**20:6.0f}M"
        print(line)
    Path(a.json).write_text(json.dumps(results, indent=2))
    print(f"\nwrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
