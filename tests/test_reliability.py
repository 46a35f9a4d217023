"""Reliability: kill and resume, signals, full disks, refusals, corrupt input."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streamcompress as sc
from conftest import heavy_tailed
from reference import ref_compress
from streamcompress.cli import main
from test_streaming import write_store

PIPELINES = [
    ["--prune", "0.5", "--quantize", "int8:channel"],
    ["--clip", "0.1", "--prune", "0.5", "--prune-scope", "global", "--quantize", "int8", "--simulate"],
]


def big_store(tmp_path, rng, n=8):
    tensors = [(f"layers.{i}.w", heavy_tailed(rng, (256, 512))) for i in range(n)]
    return write_store(tmp_path / "in.zarr", tensors, (16, 512)), tensors


def snapshot(path):
    """Everything a run leaves: array values and attributes (run records excluded)."""
    g = zarr.open_group(str(path), mode="r")
    arrays = {name: (a.dtype.str, a[...].tobytes(), json.dumps(dict(a.attrs), sort_keys=True))
              for name, a in g.members(max_depth=None) if hasattr(a, "shape")}
    attrs = dict(g.attrs)
    attrs.pop("streamcompress_run", None)
    return arrays, json.dumps(attrs, sort_keys=True)


def cli(*args):
    return [sys.executable, "-m", "streamcompress", *map(str, args)]


def completed_count(out: Path) -> int:
    n = 0
    for f in out.glob("*/zarr.json"):
        try:
            n += json.loads(f.read_text()).get("attributes", {}).get("streamcompress", {}).get("complete") is True
        except (ValueError, OSError):
            pass
    return n


def run_until(cmd, out: Path, done: int, sig=signal.SIGKILL, timeout=120.0):
    """Start ``cmd``; send ``sig`` once ``done`` tensors are complete; return the process."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while p.poll() is None and time.monotonic() - t0 < timeout:
        if out.exists() and completed_count(out) >= done:
            p.send_signal(sig)
            break
        time.sleep(0.002)
    p.stdout_text, p.stderr_text = p.communicate(timeout=timeout)
    return p


@pytest.mark.parametrize("flags", PIPELINES, ids=["int8-channel", "global"])
def test_sigkill_at_several_points_then_resume_is_identical(tmp_path, rng, flags):
    src, _ = big_store(tmp_path, rng)
    budget = ["--memory-budget", "2MiB"]
    clean = tmp_path / "clean.zarr"
    subprocess.run(cli("compress", src, clean, *flags, *budget), check=True, capture_output=True)
    want = snapshot(clean)
    killed = 0
    for done in (0, 1, 3, 6):
        out = tmp_path / f"out{done}.zarr"
        p = run_until(cli("compress", src, out, *flags, *budget), out, done)
        killed += p.returncode == -signal.SIGKILL
        r = subprocess.run(cli("compress", src, out, *flags, *budget, "--resume"), capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert snapshot(out) == want, done
    assert killed >= 2  # the kills really landed mid-run


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_signals_stop_cleanly_and_resume(tmp_path, rng, sig, code, word):
    src, _ = big_store(tmp_path, rng)
    flags = [*PIPELINES[0], "--memory-budget", "2MiB"]
    out = tmp_path / "out.zarr"
    p = run_until(cli("compress", src, out, *flags), out, 2, sig=sig)
    if p.returncode == 0:
        pytest.skip("the run finished before the signal")
    assert p.returncode == code
    err = p.stderr_text.strip()
    assert err.count("\n") == 0 and word in err and "--resume" in err and "Traceback" not in err
    assert completed_count(out) < 8
    r = subprocess.run(cli("compress", src, out, *flags, "--resume"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    clean = tmp_path / "clean.zarr"
    subprocess.run(cli("compress", src, clean, *flags), check=True, capture_output=True)
    assert snapshot(out) == snapshot(clean)


def test_full_disk_tmpfs_gives_clean_error_and_resumes(tmp_path, rng, capsys):
    src, _ = big_store(tmp_path, rng, n=6)
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        out = mnt / "out.zarr"
        flags = ["--prune", "0.5", "--quantize", "int8", "--codec", "none", "-q"]
        # (a process of its own, as a user runs it: in this one, zarr's event-loop thread may
        # still be removing the temporary file of a write that a failed sibling write abandoned)
        r = subprocess.run(cli("compress", src, out, *flags), capture_output=True, text=True)
        assert r.returncode == 1
        lines = r.stderr.strip().splitlines()  # (the int8 per-tensor warning, then the error)
        err = lines[-1]
        assert err.startswith("streamcompress: error:") and not any(ln.startswith("Traceback") for ln in lines)
        assert "No space left on device" in err and "--resume" in err
        n_done = completed_count(out)
        assert n_done < 6
        # free space elsewhere: move the partial output to a roomy disk and resume there
        roomy = tmp_path / "out.zarr"
        shutil.copytree(out, roomy)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
    assert main(["compress", str(src), str(roomy), *flags, "--resume"]) == 0
    assert main(["compress", str(src), str(tmp_path / "clean.zarr"), *flags]) == 0
    assert snapshot(roomy) == snapshot(tmp_path / "clean.zarr")


@pytest.mark.parametrize("err_no, text", [(errno.ENOSPC, "No space left"), (errno.EACCES, "Permission denied")])
def test_injected_write_errors(tmp_path, rng, capsys, monkeypatch, err_no, text):
    from streamcompress.formats import zarr as store

    src, _ = big_store(tmp_path, rng, n=4)
    out = tmp_path / "out.zarr"
    flags = ["--prune", "0.5", "--quantize", "int8:channel", "--memory-budget", "2MiB", "-q"]
    real = store.ZarrSink.write
    calls = {"n": 0}

    def failing(self, name, region, data):
        calls["n"] += 1
        if calls["n"] > 20:
            raise OSError(err_no, os.strerror(err_no))
        return real(self, name, region, data)

    monkeypatch.setattr(store.ZarrSink, "write", failing)
    assert main(["compress", str(src), str(out), *flags]) == 1
    err = capsys.readouterr().err.strip()
    assert text in err and "\n" not in err
    monkeypatch.setattr(store.ZarrSink, "write", real)
    assert main(["compress", str(src), str(out), *flags, "--resume"]) == 0
    assert main(["compress", str(src), str(tmp_path / "clean.zarr"), *flags]) == 0
    assert snapshot(out) == snapshot(tmp_path / "clean.zarr")


def test_resume_refuses_other_pipeline_or_changed_input(tmp_path, rng, capsys):
    src, tensors = big_store(tmp_path, rng, n=2)
    out = tmp_path / "out.zarr"
    assert main(["compress", str(src), str(out), "--prune", "0.5", "-q"]) == 0
    assert main(["compress", str(src), str(out), "--prune", "0.6", "--resume", "-q"]) == 1
    assert "another pipeline" in capsys.readouterr().err
    g = zarr.open_group(str(src), mode="r+")
    g["layers.0.w"][0, 0] = 1.0  # rewrite a chunk of the input
    assert main(["compress", str(src), str(out), "--prune", "0.5", "--resume", "-q"]) == 1
    assert "input changed" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    assert main(["compress", str(src), str(tmp_path / "other"), "--prune", "0.5", "--resume", "-q"]) == 1
    assert "not a" in capsys.readouterr().err
    assert main(["compress", str(src), str(out), "--prune", "0.5", "--resume", "--overwrite"]) == 1
    # --resume on a missing output just runs
    assert main(["compress", str(src), str(tmp_path / "new.zarr"), "--prune", "0.5", "--resume", "-q"]) == 0


def test_corrupt_chunk_names_tensor_and_block(tmp_path, rng, capsys):
    tensors = [("a", heavy_tailed(rng, (8, 8))), ("b", heavy_tailed(rng, (8, 8)))]
    g = zarr.open_group(str(tmp_path / "in.zarr"), mode="w")
    for n, a in tensors:
        g.create_array(n, shape=a.shape, chunks=(4, 8), dtype="float32",
                       compressors=zarr.codecs.ZstdCodec(level=1))[...] = a
    chunk = tmp_path / "in.zarr" / "b" / "c" / "1" / "0"
    chunk.write_bytes(b"garbage" * 5)
    before = chunk.read_bytes()
    assert main(["compress", str(tmp_path / "in.zarr"), str(tmp_path / "o"), "--quantize", "int8", "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert "tensor 'b'" in err and "block" in err and "chunk data" in err and "\n" not in err
    assert chunk.read_bytes() == before


def test_nonfinite_keep_is_the_seed_behaviour():
    x = np.array([np.nan, 1.0, -2.0, 0.5], np.float32)
    opts = sc.EngineOptions(nonfinite="keep")
    r = sc.compress_model({"w": x}, sc.CompressionConfig.quantize_only(), options=opts)
    scale = np.float32(np.float32(2.0) / np.float32(127))
    expect = [0.0] + [float(np.float32(np.float32(round(v / scale)) * scale)) for v in (1.0, -2.0, 0.5)]
    assert r.compressed_tensors[0].data.tolist() == expect  # NaN -> 0, max ignores NaN
    inf = sc.compress_model({"w": np.array([np.inf, 1.0], np.float32)}, sc.CompressionConfig.quantize_only(),
                            options=opts)
    assert np.isnan(inf.compressed_tensors[0].data).all()  # the seed: inf makes the tensor NaN


def test_zero_size_and_scalar_tensors_through_cli(tmp_path, capsys):
    src = write_store(tmp_path / "in.zarr", [("e", np.zeros((0, 4), np.float32)), ("s", np.array(3.0, np.float32)),
                                             ("w", np.ones((4, 4), np.float32))], (2, 2))
    assert main(["compress", str(src), str(tmp_path / "o"), "--clip", "0.5", "--quantize", "int8:channel", "-q"]) == 0
    assert main(["compress", str(src), str(tmp_path / "p"), "--prune", "0.5"]) == 1
    assert "empty tensor: 'e'" in capsys.readouterr().err


SPECIAL = [0.0, -0.0, 1e-45, -1e-45, 1e-38, 3e38, -3e38, np.nan, np.inf, -np.inf]
dtypes = st.sampled_from(["float32", "float16", "bfloat16", "float64"])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference squares 3e38
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.lists(st.integers(1, 7), min_size=0, max_size=3), chunk=st.integers(1, 4), block=st.integers(1, 30),
       dtype=dtypes, specials=st.lists(st.sampled_from(SPECIAL), max_size=6), seed=st.integers(0, 2**32),
       stages=st.sampled_from([[("prune", dict(sparsity=0.5)), ("quantize_int8",)],
                               [("clip", 0.3), ("prune", dict(sparsity=0.2, metric="l2"))]]))
def test_property_special_values_and_dtypes(tmp_path_factory, shape, chunk, block, dtype, specials, seed, stages):
    from conftest import to_stage

    rng = np.random.default_rng(seed)
    a = heavy_tailed(rng, tuple(shape)).reshape(-1)
    for i, v in enumerate(specials[: a.size]):
        a[i] = v
    a = a.reshape(tuple(shape))
    stored = a.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    as_f32 = stored.astype(np.float32)
    as_f32 = np.where(np.isfinite(as_f32), as_f32, np.float32(0))  # nonfinite="zero"
    d = tmp_path_factory.mktemp("sv")
    src = write_store(d / "in.zarr", [("t", stored.astype(np.float32) if dtype == "bfloat16" else stored)],
                      lambda s: tuple(min(chunk, x) for x in s), bf16=("t",) if dtype == "bfloat16" else ())
    cfg = sc.CompressionConfig(tuple(to_stage(s) for s in stages))
    r = sc.compress_store(src, d / "out.zarr", cfg, options=sc.EngineOptions(nonfinite="zero", block_elems=block))
    work, stats = ref_compress([("t", as_f32)], stages)
    got = zarr.open_group(str(d / "out.zarr"), mode="r")["t"][...]
    assert (np.ascontiguousarray(got, np.float32).view(np.uint32) ==
            np.ascontiguousarray(work[0][1], np.float32).view(np.uint32)).all()
    assert r.stage_stats[-1].nonzero_params_after == stats[-1]["nonzero_params_after"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, "nan-payload"])
@pytest.mark.parametrize("first", ["prune-l1", "clip", "prune-global", "prune-l2", "quantize"])
def test_nonfinite_error_names_the_first_bad_block(rng, bad, first):
    """Whether NaN/inf are counted by a separate check or read off the first
    stage's histogram, the error names the same block and count (reference: numpy)."""
    x = heavy_tailed(rng, (64, 32))
    spots = [(20, 3), (20, 9), (50, 0)]
    for r_, c in spots:
        x[r_, c] = np.float32(bad) if bad != "nan-payload" else np.uint32(0xFFC01234).view(np.float32)
    stage = {"prune-l1": sc.Prune(sc.PruningConfig(0.5)), "clip": sc.Clip(0.2),
             "prune-global": sc.Prune(sc.PruningConfig(0.5, scope="global")),
             "prune-l2": sc.Prune(sc.PruningConfig(0.5, metric="l2")), "quantize": sc.QuantizeInt8()}[first]
    block = 256
    flat = x.reshape(-1)
    first_bad = int(np.flatnonzero(~np.isfinite(flat))[0]) // block
    n_bad = int((~np.isfinite(flat[first_bad * block:(first_bad + 1) * block])).sum())
    with pytest.raises(sc.NonFiniteError) as e:
        sc.compress_model({"w": x}, sc.CompressionConfig((stage,)), options=sc.EngineOptions(block_elems=block))
    lo = first_bad * block
    assert f"block {first_bad} (flat elements {lo}..{lo + block - 1}) holds {n_bad} NaN/inf" in str(e.value)


def test_a_failed_write_is_the_error_raised_however_often_the_io_is_closed():
    """A write that fails while others wait behind it: closing raises that write's
    error (the waiting ones are cancelled), and closing again (the engine's
    executor and compress_model both close) raises nothing, not a CancelledError
    that would hide the real cause (a full disk) from the user."""
    import threading

    from streamcompress.engine import _IO

    io = _IO(True)
    later = threading.Event()

    def fail():
        raise OSError(errno.ENOSPC, "No space left on device")

    io.pending.append(io.writer.submit(later.wait, 5))  # both writer threads busy ...
    io.pending.appendleft(io.writer.submit(fail))
    for _ in range(20):  # ... so these wait in the queue (one thread frees up when fail is done)
        io.pending.append(io.writer.submit(time.sleep, 0.05))
    io.finishing.append(io.writer.submit(lambda: None))
    threading.Timer(0.3, later.set).start()  # (the close's shutdown waits for the busy one)
    with pytest.raises(OSError, match="No space"):
        io.close()
    assert any(f.cancelled() for f in io.pending)
    io.close()  # nothing left to raise
