"""The Dask executor: a LocalCluster of 2 worker processes on loopback gives
output identical to the in-process engine (arrays, attributes and stats), and
the independent reference agrees; resume, lost workers and errors."""

import json
import logging
import os
import signal
import threading
import time

import numpy as np
import pytest
import zarr

import streamcompress as sc
from conftest import heavy_tailed
from reference import ref_global_prune
from streamcompress.cli import main
from streamcompress.engine import EngineOptions, compress_model
from test_streaming import write_store

distributed = pytest.importorskip("distributed")
from streamcompress.distributed import DaskExecutor  # noqa: E402


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                       silence_logs=logging.WARNING)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def snapshot(path):
    """Everything a run leaves: every file's bytes except the run record's (it names no paths)."""
    g = zarr.open_group(str(path), mode="r")
    arrays = {name: (a.dtype.str, a[...].tobytes(), json.dumps(dict(a.attrs), sort_keys=True))
              for name, a in g.members(max_depth=None) if hasattr(a, "shape")}
    chunks = {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*"))
              if f.is_file() and f.name != "zarr.json"}
    attrs = dict(g.attrs)
    attrs.pop("streamcompress_run", None)
    return arrays, chunks, json.dumps(attrs, sort_keys=True)


def tied_tensors(rng, n=6):
    """Values from a small set, so the global threshold has ties spread over tensors,
    only some of which are pruned (the carried tie count decides which)."""
    levels = np.float32([0.01, 0.02, 0.03, 0.05, 0.08, 0.13])
    return [(f"layers.{i}.w", (rng.choice(levels, (32, 64)) * rng.choice([-1, 1], (32, 64))).astype(np.float32))
            for i in range(n)]


def model(rng, n=6):
    ts = [(f"layers.{i}.mlp.weight", heavy_tailed(rng, (48, 64))) for i in range(n)]
    ts.insert(0, ("embed_tokens.weight", heavy_tailed(rng, (40, 64))))
    ts.append(("norm.weight", np.ones(64, np.float32)))
    return ts


PIPELINES = {
    "prune-tensor+int8-channel": sc.CompressionConfig(
        (sc.Prune(sc.PruningConfig(0.5)), sc.Quantize(sc.parse_scheme("int8:channel")))),
    "prune-global+int8": sc.CompressionConfig(
        (sc.Prune(sc.PruningConfig(0.5, scope="global")), sc.Quantize(sc.parse_scheme("int8")))),
    "clip+prune-global+seed-int8, skip embeddings": sc.CompressionConfig(
        (sc.Clip(0.1), sc.Prune(sc.PruningConfig(0.5, scope="global")), sc.QuantizeInt8()),
        skip_embedding_layers=True),
    "prune-rows+int8-asym-tensor": sc.CompressionConfig(  # structured: not split (f32 running sums)
        (sc.Prune(sc.PruningConfig(0.25, granularity="rows")), sc.Quantize(sc.parse_scheme("int8_asym"))),
        skip_1d=True),
    "prune-tensor+clip+q8_0": sc.CompressionConfig(
        (sc.Prune(sc.PruningConfig(0.3)), sc.Clip(0.05), sc.Quantize(sc.parse_scheme("q8_0")))),
    "q4_1-hqq, q5_0 overrides (minmax)": sc.CompressionConfig(  # an observer's blocks: whole units, local
        (sc.Quantize(sc.parse_scheme("q4_1"), overrides=(("re:layers.[02]", "q5_0"),), observer="hqq"),),
        skip_1d=True),
}


@pytest.mark.parametrize("name", list(PIPELINES))
@pytest.mark.parametrize("data", ["model", "ties"])
@pytest.mark.parametrize("split", [None, 4096], ids=["whole", "split"])
def test_cluster_output_identical_to_local_engine(tmp_path, rng, client, name, data, split):
    """``split``: tensors over 4 KiB become tasks of 2 blocks each (their statistic
    passes merged from the ranges' partials, prune's tie count carried between them)."""
    tensors = model(rng) if data == "model" else tied_tensors(rng)
    src = write_store(tmp_path / "in.zarr", tensors, (8, 64))
    cfg = PIPELINES[name]
    opts = EngineOptions(block_elems=512, save_masks=True)
    local = compress_model(str(src), cfg, output=tmp_path / "local.zarr", options=opts)
    ex = DaskExecutor(client=client, split_bytes=split) if split else DaskExecutor(client=client)
    dask = compress_model(str(src), cfg, output=tmp_path / "dask.zarr", options=opts, executor=ex)
    if split:
        assert len(ex._ranges) >= (3 if "rows" not in name else 0)
        assert all(len(r) > 1 for r in ex._ranges.values())
    assert snapshot(tmp_path / "dask.zarr") == snapshot(tmp_path / "local.zarr")
    assert dask.to_dict() == local.to_dict() and dask.summary() == local.summary()
    if name == "prune-global+int8":  # and both agree with the independent reference
        want, k = ref_global_prune(tensors, 0.5)
        r = sc.restore(tmp_path / "dask.zarr", tmp_path / "restored.zarr")
        g = zarr.open_group(str(tmp_path / "restored.zarr"), mode="r")
        masks = zarr.open_group(str(tmp_path / "dask.zarr"), mode="r")["__masks__"]
        assert sum(int((masks[n][...] == 0).sum()) for n in r) == k
        for n, w in want:
            np.testing.assert_array_equal(masks[n][...] == 0, w == 0)
            assert np.all(g[n][...][w == 0] == 0)


def test_cli_scheduler_address(tmp_path, rng, client, capsys):
    src = write_store(tmp_path / "in.zarr", tied_tensors(rng), (8, 64))
    flags = ["--prune", "0.5", "--prune-scope", "global", "--quantize", "int8:channel", "-q",
             "--memory-budget", "1MiB"]
    assert main(["compress", str(src), str(tmp_path / "local.zarr"), *flags]) == 0
    local_out = capsys.readouterr().out
    assert main(["compress", str(src), str(tmp_path / "dask.zarr"), *flags,
                 "--scheduler", client.scheduler.address]) == 0
    assert capsys.readouterr().out == local_out
    assert snapshot(tmp_path / "dask.zarr") == snapshot(tmp_path / "local.zarr")


def test_resume_on_the_cluster_keeps_completed_tensors(tmp_path, rng, client):
    """Two tensors of a finished run are made incomplete; a Dask resume redoes only
    them (with the tie count carried from the kept tensors) and matches a clean run."""
    src = write_store(tmp_path / "in.zarr", tied_tensors(rng), (8, 64))
    cfg = PIPELINES["prune-global+int8"]
    opts = EngineOptions(block_elems=512)
    compress_model(str(src), cfg, output=tmp_path / "clean.zarr", options=opts)
    out = tmp_path / "out.zarr"
    compress_model(str(src), cfg, output=out, options=opts)
    g = zarr.open_group(str(out), mode="r+")
    for n in ("layers.1.w", "layers.4.w"):
        info = dict(g[n].attrs["streamcompress"])
        info["complete"] = False
        g[n].attrs["streamcompress"] = info
        g[n][...] = 0  # garbage: must be rewritten
    kept_mtime = (out / "layers.0.w" / "zarr.json").stat().st_mtime_ns
    compress_model(str(src), cfg, output=out, resume=True, options=opts, executor=DaskExecutor(client=client))
    assert snapshot(out) == snapshot(tmp_path / "clean.zarr")
    assert (out / "layers.0.w" / "zarr.json").stat().st_mtime_ns == kept_mtime  # not redone


def test_errors_from_workers_are_one_line(tmp_path, rng, client, capsys):
    tensors = model(rng)
    tensors[2][1][3, 5] = np.nan
    src = write_store(tmp_path / "in.zarr", tensors, (8, 64))
    code = main(["compress", str(src), str(tmp_path / "out.zarr"), "--prune", "0.5", "-q",
                 "--scheduler", client.scheduler.address])
    err = capsys.readouterr().err
    assert code == 1
    assert "NaN/inf" in err and "layers.1.mlp.weight" in err and "Traceback" not in err
    with pytest.raises(sc.ConfigError, match="by path"):
        compress_model({"w": np.ones(4, np.float32)}, PIPELINES["prune-global+int8"],
                       executor=DaskExecutor(client=client))
    with pytest.raises(sc.ConfigError, match="either"):
        DaskExecutor()


def test_numba_threads_are_capped_per_worker(tmp_path, rng):
    """A cluster started with --workers N gives each worker cores // N Numba threads."""
    from streamcompress.distributed import _limit_threads

    src = write_store(tmp_path / "in.zarr", model(rng, 2), (8, 64))
    ex = DaskExecutor(workers=2)
    compress_model(str(src), PIPELINES["prune-tensor+int8-channel"], output=tmp_path / "o.zarr",
                   options=EngineOptions(block_elems=512), executor=ex)
    assert ex.client is None  # its own cluster is shut down
    ex = DaskExecutor(workers=2)
    try:
        ex._connect()
        want = max(1, (os.cpu_count() or 1) // 2)
        envs = ex.client.run(lambda: os.environ.get("NUMBA_NUM_THREADS"))
        assert set(envs.values()) == {str(want)}
        assert ex.client.submit(_limit_threads, pure=False).result() == want
    finally:
        ex.close()


def test_a_worker_killed_mid_run_is_retried_and_output_is_correct(tmp_path, rng):
    tensors = [(f"layers.{i}.w", heavy_tailed(rng, (128, 256))) for i in range(16)]
    src = write_store(tmp_path / "in.zarr", tensors, (8, 256))
    cfg = PIPELINES["prune-global+int8"]
    opts = EngineOptions(block_elems=2048)
    compress_model(str(src), cfg, output=tmp_path / "local.zarr", options=opts)
    out = tmp_path / "dask.zarr"
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                       silence_logs=logging.CRITICAL)
    c = distributed.Client(cluster)
    killed: dict = {}

    def killer():
        pids = c.run(os.getpid)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 120:
            done = sum(1 for f in out.glob("*/zarr.json")
                       if '"complete": true' in f.read_text(errors="ignore"))
            if done >= 2:
                killed["done_at_kill"] = done
                pid = next(iter(pids.values()))
                os.kill(pid, signal.SIGKILL)
                killed["pid"] = pid
                return
            time.sleep(0.002)

    try:
        t = threading.Thread(target=killer)
        t.start()
        ex = DaskExecutor(client=c, split_bytes=64 << 10)  # 2 range tasks per tensor
        compress_model(str(src), cfg, output=out, options=opts, executor=ex)
        t.join()
    finally:
        c.close()
        cluster.close()
    assert killed and killed["done_at_kill"] < len(tensors)  # the kill landed mid-run
    assert snapshot(out) == snapshot(tmp_path / "local.zarr")


def test_sigint_stops_a_cluster_run_and_resume_finishes_it(tmp_path, rng):
    from test_reliability import cli, completed_count, run_until
    from test_reliability import snapshot as values_snapshot

    tensors = [(f"layers.{i}.w", heavy_tailed(rng, (256, 512))) for i in range(12)]
    src = write_store(tmp_path / "in.zarr", tensors, (16, 512))
    flags = ["--prune", "0.5", "--prune-scope", "global", "--quantize", "int8:channel", "--memory-budget", "2MiB"]
    out = tmp_path / "out.zarr"
    p = run_until(cli("compress", src, out, *flags, "--workers", "2"), out, 2, sig=signal.SIGINT)
    if p.returncode == 0:
        pytest.skip("the run finished before the signal")
    assert p.returncode == 130, p.stderr_text
    assert "--resume" in p.stderr_text and "Traceback" not in p.stderr_text
    assert completed_count(out) < len(tensors)
    import subprocess

    r = subprocess.run(cli("compress", src, out, *flags, "--workers", "2", "--resume"), capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    subprocess.run(cli("compress", src, tmp_path / "clean.zarr", *flags), check=True, capture_output=True)
    assert values_snapshot(out) == values_snapshot(tmp_path / "clean.zarr")


@pytest.mark.parametrize("split", [None, 4096], ids=["whole", "split"])
@pytest.mark.parametrize("name", ["prune-global+int8", "prune-tensor+clip+q8_0", "prune-rows+int8-asym-tensor"])
def test_progress_reaches_its_total(tmp_path, rng, client, monkeypatch, split, name):
    """The bar counts bytes read; it must end at 100%, locally and on the cluster."""
    from streamcompress import engine

    seen = {}
    real_init, real_update = engine._Progress.__init__, engine._Progress.update

    def init(self, enabled, total):
        real_init(self, False, total)
        seen["total"], seen["done"] = total, 0

    def update(self, n):
        seen["done"] += n
        real_update(self, n)

    monkeypatch.setattr(engine._Progress, "__init__", init)
    monkeypatch.setattr(engine._Progress, "update", update)
    src = write_store(tmp_path / "in.zarr", model(rng), (8, 64))
    opts = EngineOptions(block_elems=512)
    for k, ex in enumerate([None, DaskExecutor(client=client, split_bytes=split or "1GiB")]):
        compress_model(str(src), PIPELINES[name], output=tmp_path / f"o{k}.zarr", options=opts, executor=ex)
        assert seen["done"] == seen["total"], (k, seen)
