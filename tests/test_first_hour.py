"""The first hour: the demo, honest figures (verify totals, processed-only figures), wording."""

import json

import numpy as np
import pytest
import zarr

import streamcompress as sc
from streamcompress.cli import main
from streamcompress.engine import parse_size


def test_demo_makes_a_checkpoint_compresses_it_and_reuses_it(tmp_path, capsys):
    d = tmp_path / "demo"
    assert main(["demo", str(d), "--size", "4MB", "-q"]) == 0
    out = capsys.readouterr().out
    assert "wrote a synthetic Llama-shaped checkpoint" in out and "--quantize int8:channel --skip-1d" in out
    assert "=== Compression Summary (1 stage(s)) ===" in out and "bits per weight" in out
    sqnr = float(out.split("Error against the input: sqnr=")[1].split("dB")[0])
    assert sqnr > 30  # int8 per channel on heavy-tailed rows
    g = zarr.open_group(str(d / "model-int8.zarr"), mode="r")
    assert g.attrs["streamcompress_run"]["status"] == "complete"
    q = [a.attrs["quantization"]["granularity"] for _, a in g.arrays() if "quantization" in a.attrs]
    assert q and set(q) == {"channel"}
    assert main(["demo", str(d), "--size", "4MB", "-q"]) == 0  # again: the checkpoint is reused
    assert "wrote a synthetic" not in capsys.readouterr().out


def test_demo_never_replaces_a_model_zarr_it_did_not_make(tmp_path, capsys):
    d = tmp_path / "demo"
    zarr.open_group(str(d / "model.zarr"), mode="w").create_array("x", shape=(2,), dtype="float32")
    before = (d / "model.zarr" / "zarr.json").read_bytes()
    assert main(["demo", str(d), "-q"]) == 1
    assert "not written by streamcompress" in capsys.readouterr().err
    assert (d / "model.zarr" / "zarr.json").read_bytes() == before


def _with_int_tensor(tmp_path, rng):
    from safetensors.numpy import save_file

    f = tmp_path / "m.safetensors"
    save_file({"w": rng.standard_normal((32, 64)).astype(np.float32), "ids": np.arange(4096, dtype=np.int64)[None],
               "norm": np.ones(64, np.float32)}, str(f))
    return f


def test_verify_totals_float_tensors_only_and_lists_copied_ones(tmp_path, rng, capsys):
    f = _with_int_tensor(tmp_path, rng)
    out = tmp_path / "o.zarr"
    assert main(["compress", str(f), str(out), "--quantize", "int8:channel", "-q"]) == 0
    res = sc.verify(f, out)
    only_w = res["w"].merge(res["norm"])
    assert res[""].sum_sq_signal == only_w.sum_sq_signal and res[""].n_compared == 32 * 64 + 64
    capsys.readouterr()
    assert main(["verify", str(f), str(out), "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["tensors"]["ids"]["copied"] and j["tensors"]["ids"]["identical"]
    assert j["total"]["params"] == 32 * 64 + 64
    assert main(["verify", str(f), str(out)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert rows["ids"].split(None, 1)[1] == "copied (not a float tensor): identical"
    assert "(the 2 float tensors; copied ones compared exactly)" in rows["total"]
    # a copied tensor that differs is an error
    zarr.open_group(str(out), mode="r+")["ids"][0, 5] = 99
    assert main(["verify", str(f), str(out)]) == 1
    assert "copied tensor(s) differ from the input: ids" in capsys.readouterr().err


def test_summary_gives_figures_over_processed_tensors(tmp_path, rng, capsys):
    f = _with_int_tensor(tmp_path, rng)
    out = tmp_path / "o.zarr"
    assert main(["compress", str(f), str(out), "--prune", "0.5", "--quantize", "int8:channel", "--skip-1d",
                 "-q"]) == 0
    text = capsys.readouterr().out
    line = next(x for x in text.splitlines() if x.startswith("Processed tensors only"))
    assert "(1 of 3, 2048 params)" in line and "stage 1 [prune] sparsity=0.5000" in line
    r = sc.compress_store(f, tmp_path / "o2.zarr", sc.CompressionConfig(
        (sc.Prune(sc.PruningConfig(0.5)), sc.Quantize("int8:channel")), skip_1d=True))
    p = r.processed_summary()
    w_bytes = r.tensor_stats["w"]["stored_bytes"]
    assert p["tensors"] == 1 and p["params"] == 2048 and p["bits_per_weight"] == pytest.approx(8 * w_bytes / 2048)
    assert r.stage_stats[0].sparsity() < 0.5  # the seed's figure counts the skipped tensors


def test_int8_per_tensor_real_storage_warns_once_but_not_the_seed_stage(tmp_path, rng, capsys, caplog):
    f = _with_int_tensor(tmp_path, rng)
    for argv, warns in ((["--quantize", "int8"], True), (["--quantize", "int8", "--simulate"], False),
                        (["--quantize", "int8:tensor"], False), (["--quantize", "int8:channel"], False)):
        caplog.clear()
        assert main(["compress", str(f), str(tmp_path / "o.zarr"), *argv, "-q", "--overwrite"]) == 0
        hits = [r for r in caplog.records if "coarse" in r.getMessage()]
        assert len(hits) == (1 if warns else 0), argv


def test_sizes_up_to_terabytes():
    assert parse_size("10TB") == 10 * 10**12 and parse_size("2TiB") == 2 << 40 and parse_size("1t") == 1 << 40


@pytest.mark.parametrize("cmd", ["import", "export", "restore"])
def test_quiet_commands_print_nothing_on_success(tmp_path, rng, capsys, cmd):
    f = _with_int_tensor(tmp_path, rng)
    store = tmp_path / "s.zarr"
    assert main(["compress", str(f), str(store), "--quantize", "int8:channel", "-q"]) == 0
    capsys.readouterr()
    src = f if cmd == "import" else store
    assert main([cmd, str(src), str(tmp_path / "dest"), "-q"]) == 0
    assert capsys.readouterr().out == ""


def test_help_says_what_inputs_and_restore_are(capsys):
    from streamcompress.cli import build_parser

    p = build_parser()
    text = p._subparsers._group_actions[0].choices["compress"].format_help()
    assert "safetensors" in text
    text = p._subparsers._group_actions[0].choices["restore"].format_help()
    assert "export" in text and "not a checkpoint" in text
