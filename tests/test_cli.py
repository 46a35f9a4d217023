"""The command line: behaviour, exit codes and one-line errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import zarr

from conftest import heavy_tailed
from reference import ref_compress
from streamcompress.cli import main
from test_streaming import write_store


@pytest.fixture
def store(tmp_path, rng):
    tensors = [("embed.weight", heavy_tailed(rng, (16, 8))), ("layers.0.w", heavy_tailed(rng, (12, 10))),
               ("layers.0.norm", heavy_tailed(rng, (10,)))]
    return write_store(tmp_path / "in.zarr", tensors, (5, 4)), tensors


def test_compress_prints_seed_summary_and_writes_output(tmp_path, store, capsys):
    src, tensors = store
    out = tmp_path / "out.zarr"
    rep = tmp_path / "r.json"
    assert main(["compress", str(src), str(out), "--prune", "0.5", "--quantize", "int8", "--simulate",
                 "--report", str(rep), "--quiet"]) == 0
    text = capsys.readouterr().out
    work, stats = ref_compress(tensors, [("prune", dict(sparsity=0.5)), ("quantize_int8",)])
    assert "=== Compression Summary (2 stage(s)) ===" in text
    assert f"nonzero={stats[-1]['nonzero_params_after']}" in text
    g = zarr.open_group(str(out), mode="r")
    for name, exp in work:
        assert (g[name][...] == exp).all()
    report = json.loads(rep.read_text())
    assert report["summary"]["total_nonzero"] == stats[-1]["nonzero_params_after"]
    assert [s["stage_name"] for s in report["stages"]] == ["prune", "quantize_int8"]
    assert report["stages"][1]["sqnr_db"] > 0


def test_stage_flags_keep_command_line_order(tmp_path, store, capsys):
    src, tensors = store
    assert main(["compress", str(src), str(tmp_path / "o"), "--clip", "0.2", "--prune", "0.3",
                 "--metric", "l2", "--skip-embeddings", "-q"]) == 0
    text = capsys.readouterr().out
    assert "Stage 1: [clip] processed=2 skipped=1" in text
    assert "Stage 2: [prune] processed=2 skipped=1" in text


def test_config_file(tmp_path, store, capsys):
    src, _ = store
    cfg = tmp_path / "p.json"
    cfg.write_text(json.dumps({"stages": [{"name": "quantize_int8"}], "skip_embedding_layers": True}))
    assert main(["compress", str(src), str(tmp_path / "o"), "--config", str(cfg), "-q"]) == 0
    assert "Stage 1: [quantize_int8] processed=2 skipped=1" in capsys.readouterr().out


def test_estimate_and_info(tmp_path, store, capsys):
    src, tensors = store
    assert main(["estimate", str(src), "--prune", "0.5", "--quantize", "int8", "--simulate", "--json"]) == 0
    est = json.loads(capsys.readouterr().out)
    total = sum(4 * a.size for _, a in tensors)
    assert est == {"tensors": 3, "bytes_before": total, "bytes_after": round(total * 0.25)}  # the seed's
    assert main(["estimate", str(src), "--quantize", "int8:channel", "--json"]) == 0
    est = json.loads(capsys.readouterr().out)
    assert est["bytes_after"] == sum(a.size + 4 * a.shape[0] for _, a in tensors if a.ndim == 2) + 10 + 4
    assert main(["info", str(src), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in info["tensors"]] == [n for n, _ in tensors]
    assert info["tensors"][1]["shape"] == [12, 10]
    assert main(["info", str(src)]) == 0
    assert "3 tensors, 258 parameters" in capsys.readouterr().out  # 16*8 + 12*10 + 10


def _plain_dir(t):
    d = t / "plain"
    d.mkdir(exist_ok=True)
    (d / "notes.txt").write_text("not a store")
    return d


def _existing(tmp_path):
    (tmp_path / "exists").mkdir()
    return tmp_path / "exists"


def _bad_dtype_store(tmp_path):
    g = zarr.open_group(str(tmp_path / "ints.zarr"), mode="w")
    g.create_array("ids", shape=(4,), dtype="int64")[...] = np.arange(4)
    return tmp_path / "ints.zarr"


def _nan_store(tmp_path):
    a = np.ones((4, 4), np.float32)
    a[2, 1] = np.nan
    return write_store(tmp_path / "nan.zarr", [("w", a)], (2, 2))


@pytest.mark.parametrize(
    "args, needle",
    [
        (lambda t, s: ["compress", str(t / "missing.zarr"), str(t / "o"), "--quantize", "int8"], "no store"),
        (lambda t, s: ["compress", str(_plain_dir(t)), str(t / "o"), "--quantize", "int8"], "not a Zarr v3 group"),
        (lambda t, s: ["compress", str(s), str(s), "--quantize", "int8"], "output must differ from the input"),
        (lambda t, s: ["compress", str(s), str(_existing(t)), "--quantize", "int8"], "already exists"),
        (lambda t, s: ["compress", str(s), str(t / "o"), "--prune", "1.0"], "sparsity 1 must be in [0.0, 1.0)"),
        (lambda t, s: ["compress", str(s), str(t / "o"), "--clip", "0"], "invalid clip percentile 0"),
        (lambda t, s: ["compress", str(s), str(t / "o")], "empty pipeline: no stages"),
        (lambda t, s: ["compress", str(_bad_dtype_store(t)), str(t / "o"), "--quantize", "int8",
                       "--include", "ids"], "tensor 'ids' has dtype int64"),
        (lambda t, s: ["compress", str(_nan_store(t)), str(t / "o"), "--quantize", "int8"],
         "tensor 'w' block 0 (flat elements 0..15) holds 1 NaN/inf"),
        (lambda t, s: ["compress", str(s), str(t / "o"), "--memory-budget", "lots", "--quantize", "int8"],
         "cannot read size"),
        (lambda t, s: ["compress", str(s), str(t / "o"), "--config", str(t / "nope.json")], "cannot read config"),
        (lambda t, s: ["compress", str(s), str(t / "o"), "--prune", "0.5", "--granularity", "rows"],
         "requires 2D tensor, got shape [10] (tensor 'layers.0.norm')"),
    ],
)
def test_bad_input_one_line_error(tmp_path, store, capsys, args, needle):
    src, _ = store
    argv = args(tmp_path, src)
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("streamcompress: error:") and "\n" not in err
    assert needle in err
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before  # input untouched
    if "NaN" not in needle:
        assert not (tmp_path / "o").exists()  # nothing written for errors found before work


def test_nonfinite_zero_opt_in(tmp_path, capsys):
    src = _nan_store(tmp_path)
    assert main(["compress", str(src), str(tmp_path / "o"), "--quantize", "int8", "--nonfinite", "zero", "-q"]) == 0
    out = zarr.open_group(str(tmp_path / "o"), mode="r")["w"][...]
    assert out[2, 1] == 0 and np.isfinite(out).all()


def test_overwrite(tmp_path, store, capsys):
    src, _ = store
    out = tmp_path / "o"
    out.mkdir()
    assert main(["compress", str(src), str(out), "--quantize", "int8", "-q"]) == 1
    assert main(["compress", str(src), str(out), "--quantize", "int8", "--overwrite", "-q"]) == 0


def test_installed_entry_point_exit_codes(tmp_path, store):
    src, _ = store
    ok = subprocess.run([sys.executable, "-m", "streamcompress", "compress", str(src), str(tmp_path / "o"),
                         "--prune", "0.5", "--quantize", "int8", "--simulate"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "Overall: tensors=3" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "streamcompress", "compress", str(src), str(tmp_path / "o"),
                          "--prune", "0.5"], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1
    usage = subprocess.run([sys.executable, "-m", "streamcompress", "compress"], capture_output=True, text=True)
    assert usage.returncode == 2


def test_real_quantize_restore_verify(tmp_path, store, capsys):
    src, tensors = store
    out, back = tmp_path / "q.zarr", tmp_path / "back.zarr"
    assert main(["compress", str(src), str(out), "--prune", "0.5", "--quantize", "int8:channel",
                 "--tensor-type", "*norm=none", "-q"]) == 0
    text = capsys.readouterr().out
    assert "bits per weight" in text
    g = zarr.open_group(str(out), mode="r")
    assert g["layers.0.w"].dtype == np.int8 and g["layers.0.w_scale"].shape == (12, 1)
    assert g["layers.0.norm"].dtype == np.float32
    assert main(["restore", str(out), str(back), "--dtype", "bfloat16", "-q"]) == 0
    b = zarr.open_group(str(back), mode="r")
    assert b["layers.0.w"].dtype == np.uint16 and b["layers.0.w"].attrs["logical_dtype"] == "bfloat16"
    capsys.readouterr()
    assert main(["verify", str(src), str(out), "--json"]) == 0
    v = json.loads(capsys.readouterr().out)
    assert set(v["tensors"]) == {n for n, _ in tensors}
    assert v["tensors"]["layers.0.norm"]["params"] == 10
    assert v["total"]["sqnr_db"] > 0
    assert main(["info", str(out)]) == 0
    assert "layers.0.w_scale" not in capsys.readouterr().out  # companions are not tensors


def test_selection_flags(tmp_path, store, capsys):
    src, tensors = store
    assert main(["compress", str(src), str(tmp_path / "a"), "--quantize", "int8", "--simulate",
                 "--ignore", "re:^embed", "--skip-1d", "-q"]) == 0
    assert "processed=1 skipped=2" in capsys.readouterr().out
    assert main(["compress", str(src), str(tmp_path / "b"), "--quantize", "int8", "--simulate",
                 "--include", "layers.*", "-q"]) == 0
    assert "processed=2 skipped=1" in capsys.readouterr().out


def test_int_tensor_copied_with_note(tmp_path, capsys, caplog):
    src = _bad_dtype_store(tmp_path)
    assert main(["compress", str(src), str(tmp_path / "o"), "--quantize", "int8", "-q"]) == 0
    assert "not a float tensor" in caplog.text
    assert (zarr.open_group(str(tmp_path / "o"), mode="r")["ids"][...] == np.arange(4)).all()


def test_global_and_nm_flags(tmp_path, store, capsys):
    src, tensors = store
    assert main(["compress", str(src), str(tmp_path / "g"), "--prune", "0.5", "--prune-scope", "global",
                 "--save-masks", "-q"]) == 0
    g = zarr.open_group(str(tmp_path / "g"), mode="r")
    total = sum(a.size for _, a in tensors)
    assert sum(int((g[f"__masks__/{n}"][...] == 0).sum()) for n, _ in tensors) == total // 2
    capsys.readouterr()
    assert main(["compress", str(src), str(tmp_path / "nm"), "--prune-nm", "1:2", "--skip-1d", "-q"]) == 0
    assert "[prune_nm] processed=2 skipped=1" in capsys.readouterr().out
    with pytest.raises(SystemExit) as ex:  # usage error
        main(["compress", str(src), str(tmp_path / "bad"), "--prune-nm", "2-4"])
    assert ex.value.code == 2


def test_main_in_process_leaves_the_process_as_it_was(tmp_path, store):
    """The CLI's process-wide tweaks (frozen GC, no BLAS probe) are for its own
    process (the console entry point); a caller of main() keeps its process."""
    import gc

    src, _ = store
    before = gc.get_freeze_count()
    assert main(["compress", str(src), str(tmp_path / "o"), "--prune", "0.5", "-q"]) == 0
    assert gc.get_freeze_count() == before
    assert sys.modules.get("scipy.linalg.cython_blas", "absent") is not None


def test_importing_the_package_loads_no_numpy():
    """``import streamcompress`` imports none of its modules (each public name
    loads on first use), so the console command can set up its process before
    numpy loads; the names are all there."""
    code = ("import sys, streamcompress as sc; print('numpy' in sys.modules); "
            "print(all(getattr(sc, n) is not None for n in sc.__all__)); print('numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "True"]


def test_the_console_command_gives_openblas_one_thread_unless_the_user_chose(monkeypatch):
    """numpy's OpenBLAS threads spin when numpy loads (no kernel here uses BLAS):
    the console command (``streamcompress.__main__:main``) asks for one thread
    before anything loads numpy; a user's own setting wins."""
    import streamcompress.__main__ as entry
    from streamcompress import cli

    seen = []
    monkeypatch.setattr(cli, "run", lambda: seen.append(os.environ.get("OPENBLAS_NUM_THREADS")))
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    entry.main()
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    entry.main()
    assert seen == ["1", "3"]
