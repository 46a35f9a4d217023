"""Safetensors in and out: byte-identical round trips, validation, compressed-tensors."""

import json
import struct

import ml_dtypes
import numpy as np
import pytest
import zarr
from safetensors import safe_open
from safetensors.numpy import save_file

import streamcompress as sc
from conftest import heavy_tailed
from streamcompress.cli import main
from streamcompress.engine import export_checkpoint, import_checkpoint


def model(rng):
    return {
        "model.embed_tokens.weight": heavy_tailed(rng, (50, 16)).astype(ml_dtypes.bfloat16),
        "model.layers.0.self_attn.q_proj.weight": heavy_tailed(rng, (16, 16)).astype(ml_dtypes.bfloat16),
        "model.layers.0.mlp.up_proj.weight": heavy_tailed(rng, (24, 16)).astype(np.float16),
        "model.layers.0.input_layernorm.weight": heavy_tailed(rng, (16,)),
        "lm_head.weight": heavy_tailed(rng, (50, 16)),
        "model.position_ids": np.arange(7, dtype=np.int64),
    }


def sharded(tmp_path, tensors, per_shard=2):
    d = tmp_path / "ckpt"
    d.mkdir()
    names = list(tensors)
    groups = [names[i:i + per_shard] for i in range(0, len(names), per_shard)]
    wm = {}
    for i, g in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: tensors[n] for n in g}, d / fname, metadata={"format": "pt"})
        wm.update({n: fname for n in g})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": wm}))
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 16}))
    (d / "tokenizer.json").write_text("{}")
    return d


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_single_file_round_trip_is_byte_identical(tmp_path, rng, dtype):
    t = {f"w{i}": heavy_tailed(rng, (7, 5 + i)).astype(dtype) for i in range(3)}
    t["b"] = heavy_tailed(rng, (3,)).astype(dtype)
    src = tmp_path / "m.safetensors"
    save_file(t, src, metadata={"format": "pt"})
    import_checkpoint(src, tmp_path / "s.zarr", options=sc.EngineOptions(block_elems=6))
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    if dtype != np.float32:
        assert g["w0"].dtype == np.uint16
        assert g["w0"].attrs["logical_dtype"] == np.dtype(dtype).name
    export_checkpoint(tmp_path / "s.zarr", tmp_path / "out", options=sc.EngineOptions(block_elems=6))
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == src.read_bytes()


def test_sharded_round_trip_and_aux_files(tmp_path, rng):
    t = model(rng)
    d = sharded(tmp_path, t)
    assert main(["import", str(d), str(tmp_path / "s.zarr"), "-q"]) == 0
    assert main(["export", str(tmp_path / "s.zarr"), str(tmp_path / "out"), "--max-shard-size", "3000", "-q"]) == 0
    out = tmp_path / "out"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(index["weight_map"]) == sorted(t)
    assert len(set(index["weight_map"].values())) > 1
    for name, arr in t.items():
        with safe_open(out / index["weight_map"][name], "np") as f:
            got = f.get_tensor(name)
        assert got.dtype == arr.dtype and got.shape == arr.shape
        assert got.tobytes() == np.ascontiguousarray(arr).tobytes()
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    assert (out / "tokenizer.json").exists()


def test_compress_reads_safetensors_directly(tmp_path, rng):
    t = model(rng)
    d = sharded(tmp_path, t)
    cfg = sc.CompressionConfig.prune_then_quantize(0.5)
    direct = sc.compress_store(d, tmp_path / "a.zarr", cfg)
    import_checkpoint(d, tmp_path / "s.zarr")
    via = sc.compress_store(tmp_path / "s.zarr", tmp_path / "b.zarr", cfg)
    assert direct.summary() == via.summary()
    a = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")
    b = zarr.open_group(str(tmp_path / "b.zarr"), mode="r")
    for name in t:
        assert (a[name][...] == b[name][...]).all()
    assert (tmp_path / "a.zarr" / "__aux__" / "config.json").exists()
    assert a["model.position_ids"].dtype == np.int64  # not float: copied unchanged


def test_npz_import(tmp_path, rng):
    np.savez(tmp_path / "m.npz", a=heavy_tailed(rng, (4, 4)), b=np.arange(3))
    assert main(["import", str(tmp_path / "m.npz"), str(tmp_path / "s.zarr"), "-q"]) == 0
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert g["a"].shape == (4, 4) and (g["b"][...] == np.arange(3)).all()


def _good(tmp_path, rng):
    p = tmp_path / "g.safetensors"
    save_file({"a": heavy_tailed(rng, (4, 4)), "b": heavy_tailed(rng, (8,))}, p)
    return p


def _rewrite_header(p, mutate):
    raw = p.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    mutate(header)
    hb = json.dumps(header).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    p.write_bytes(struct.pack("<Q", len(hb)) + hb + raw[8 + n:])
    return p


def _replace(p, data):
    p.write_bytes(data)
    return p


CORRUPT = {
    "truncated": (lambda p: _replace(p, p.read_bytes()[:-10]), "past the end of the file"),
    "tiny": (lambda p: _replace(p, b"\x01\x02"), "truncated"),
    "header too long": (lambda p: _replace(p, struct.pack("<Q", 10**12) + p.read_bytes()[8:]), "header length"),
    "not json": (lambda p: _replace(p, struct.pack("<Q", 8) + b"{not js}" + b"\0" * 8), "not valid JSON"),
    "outside": (lambda p: _rewrite_header(p, lambda h: h["b"].update(data_offsets=[64, 96 + 10**6])),
                "span"),
    "overlap": (lambda p: _rewrite_header(p, lambda h: h["b"].update(
        data_offsets=[h["a"]["data_offsets"][0] + 4, h["a"]["data_offsets"][0] + 36])), "overlap"),
    "bad dtype": (lambda p: _rewrite_header(p, lambda h: h["a"].update(dtype="Q4")), "unsupported dtype"),
    "slash name": (lambda p: _rewrite_header(p, lambda h: h.update({"../evil": h.pop("a")})), "not allowed"),
    "slash name 2": (lambda p: _rewrite_header(p, lambda h: h.update({"x/y": h.pop("a")})), "not allowed"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_files_give_one_line_error_and_write_nothing(tmp_path, rng, capsys, case):
    make, needle = CORRUPT[case]
    p = make(_good(tmp_path, rng))
    for cmd in (["import", str(p), str(tmp_path / "o.zarr")],
                ["compress", str(p), str(tmp_path / "o.zarr"), "--quantize", "int8"]):
        assert main(cmd) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("streamcompress: error:") and "\n" not in err and needle in err, err
        assert not (tmp_path / "o.zarr").exists()


def test_bad_index(tmp_path, rng, capsys):
    d = sharded(tmp_path, model(rng))
    idx = d / "model.safetensors.index.json"
    good = json.loads(idx.read_text())
    for wm_edit, needle in [
        (lambda wm: wm.update({"model.norm.weight": "model-00009-of-00009.safetensors"}), "missing shard"),
        (lambda wm: wm.update({"lm_head.weight": "../x.safetensors"}), "not a plain file name"),
        (lambda wm: wm.pop("lm_head.weight"), "does not list"),
    ]:
        bad = json.loads(json.dumps(good))
        wm_edit(bad["weight_map"])
        idx.write_text(json.dumps(bad))
        assert main(["import", str(d), str(tmp_path / "o.zarr")]) == 1
        err = capsys.readouterr().err
        assert needle in err, err
        assert not (tmp_path / "o.zarr").exists()


def test_only_checkpoint_files_are_carried_along(tmp_path, rng):
    """A single file's directory may hold anything (a Downloads folder, the output
    itself): only the known config/tokenizer/model-code files are copied."""
    from streamcompress.formats.sidecar import aux_files

    d = tmp_path / "dl"
    d.mkdir()
    save_file({"w": rng.standard_normal((8, 8)).astype(np.float32)}, str(d / "model.safetensors"))
    keep = ["config.json", "tokenizer.json", "vocab.txt", "modeling_foo.py", "1_Pooling/config.json"]
    drop = ["notes.txt", "holiday.jpg", "script.py", ".hidden/config.json", "other.zarr/config.json",
            "pytorch_model.bin", "deep/er/config.json"]
    for rel in keep + drop:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text("{}")
    (d / "other.zarr" / "zarr.json").write_text("{}")
    assert sorted(r for r, _ in aux_files(d / "model.safetensors")) == sorted(keep)
    assert main(["compress", str(d / "model.safetensors"), str(d / "out.zarr"), "--prune", "0.5", "-q"]) == 0
    got = sorted(str(f.relative_to(d / "out.zarr" / "__aux__")) for f in (d / "out.zarr" / "__aux__").rglob("*")
                 if f.is_file())
    assert got == sorted(keep)
