"""Never lose or corrupt data: every command against overlapping paths, foreign
outputs, a second process, missing and corrupt chunks on both sides, broken
metadata, and kills mid-write. Inputs are hashed before and after."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import heavy_tailed
from streamcompress.cli import main
from test_streaming import write_store


def tree_hash(path: Path) -> str:
    """Hash of every file (name and bytes) and symlink under ``path`` (or of the file)."""
    h = hashlib.sha256()
    p = Path(path)
    items = [p] if p.is_file() else sorted(p.rglob("*"))
    for f in items:
        h.update(str(f.relative_to(p) if f != p else f.name).encode())
        if f.is_symlink():
            h.update(os.readlink(f).encode())
        elif f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()


def one_line_error(capsys, needle: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("streamcompress: error:") and "\n" not in err, err
    assert needle in err, err
    return err


@pytest.fixture
def model(tmp_path, rng):
    """A small Zarr input, its compressed output (int8 per channel) and its safetensors export."""
    tensors = [("embed.weight", heavy_tailed(rng, (16, 8))), ("layers.0.w", heavy_tailed(rng, (24, 10))),
               ("layers.0.norm", heavy_tailed(rng, (10,)))]
    src = write_store(tmp_path / "in.zarr", tensors, (5, 10))
    return src


def _compressed(tmp_path, src, *extra):
    out = tmp_path / "c.zarr"
    assert main(["compress", str(src), str(out), "--quantize", "int8:channel", "-q",
                 "--memory-budget", "1MiB", *extra]) == 0
    return out


def _exported(tmp_path, src):
    dest = tmp_path / "st"
    assert main(["export", str(src), str(dest), "-q"]) == 0
    return dest


# -- path relations, for every command ---------------------------------------------------------
def _commands(tmp_path, src):
    """(command, input path) for every command that writes, on inputs it takes."""
    c = _compressed(tmp_path, src)
    st = _exported(tmp_path, src)
    return {
        "compress": (["compress", "{IN}", "{OUT}", "--quantize", "int8", "-q"], src),
        "compress-st": (["compress", "{IN}", "{OUT}", "--quantize", "int8", "-q"], st / "model.safetensors"),
        "compress-gguf": (["compress", "{IN}", "{OUT}", "--quantize", "q8_0", "-q"], src),  # (OUT: *.gguf)
        "import": (["import", "{IN}", "{OUT}", "-q"], st),
        "import-file": (["import", "{IN}", "{OUT}", "-q"], st / "model.safetensors"),
        "restore": (["restore", "{IN}", "{OUT}", "-q"], c),
        "export": (["export", "{IN}", "{OUT}", "-q"], c),
    }


RELATIONS = {
    "equal": lambda i: i,
    "equal-trailing-slash": lambda i: Path(str(i) + "/") if i.is_dir() else i,
    "equal-dotdot": lambda i: i.parent / ".." / i.parent.name / i.name,
    "parent": lambda i: i.parent,
    "child": lambda i: i / "sub.zarr",
    "parent-via-symlink": lambda i: _link(i.parent, i.parent / "alias-of-parent"),
    "equal-via-symlink": lambda i: _link(i, i.parent / "alias-of-input"),
    "child-via-symlinked-parent": lambda i: _link(i.parent, i.parent / "alias-dir") / i.name / "x",
}


def _link(target: Path, link: Path) -> Path:
    if not link.exists():
        link.symlink_to(target)
    return link


@pytest.mark.parametrize("relation", list(RELATIONS))
@pytest.mark.parametrize("cmd", ["compress", "compress-st", "import", "import-file", "restore", "export"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_that_overlaps_its_input_is_refused(tmp_path, model, capsys, cmd, relation, overwrite):
    argv, inp = _commands(tmp_path, model)[cmd]
    out = RELATIONS[relation](inp)
    if relation == "child" and inp.is_file():
        out = inp.parent / inp.name / "sub"  # inside a file: cannot exist, still refused as "inside"
    capsys.readouterr()
    before = tree_hash(tmp_path)
    args = [a.replace("{IN}", str(inp)).replace("{OUT}", str(out)) for a in argv] + (["--overwrite"] if overwrite else [])
    assert main(args) == 1
    one_line_error(capsys, "input")
    assert tree_hash(tmp_path) == before  # nothing changed, nothing made (lock files included)


@pytest.mark.parametrize("cmd", ["compress", "import", "restore", "export"])
def test_a_sibling_output_is_fine_and_leaves_no_lock_file(tmp_path, model, cmd):
    argv, inp = _commands(tmp_path, model)[cmd]
    out = inp.parent / "sibling.out"
    before = tree_hash(inp)
    assert main([a.replace("{IN}", str(inp)).replace("{OUT}", str(out)) for a in argv]) == 0
    assert out.is_dir() and tree_hash(inp) == before
    assert not list(inp.parent.glob(".*lock")) and not list(inp.parent.glob(".sibling*"))


# -- --overwrite replaces only what we wrote ---------------------------------------------------
def _foreign(tmp_path: Path, kind: str) -> Path:
    p = tmp_path / f"foreign-{kind}"
    if kind == "file":
        p.write_bytes(b"precious")
    elif kind == "dir":
        p.mkdir()
        (p / "thesis.tex").write_text("precious")
    elif kind == "zarr":
        g = zarr.open_group(str(p), mode="w")
        g.create_array("x", shape=(4,), dtype="float32")[...] = 1
    elif kind == "symlink-to-dir":  # replaced where it points, so refused like the dir itself
        other = tmp_path / "elsewhere"
        other.mkdir()
        (other / "data.bin").write_bytes(b"precious")
        p.symlink_to(other)
    return p


@pytest.mark.parametrize("kind", ["file", "dir", "zarr", "symlink-to-dir"])
@pytest.mark.parametrize("cmd,flag", [(c, f) for c in ("compress", "compress-gguf", "import", "restore", "export")
                                      for f in ("--overwrite", "--resume", None)
                                      if f != "--resume" or c.startswith("compress")])  # (only compress resumes)
def test_overwrite_refuses_what_we_did_not_write(tmp_path, model, capsys, kind, cmd, flag):
    """Replaced, resumed or left alone, someone else's file is refused in one line
    that does not send the user to a flag that would refuse it too."""
    argv, inp = _commands(tmp_path, model)[cmd]
    out = _foreign(tmp_path, kind)
    if cmd == "compress-gguf":
        out = out.rename(out.with_name(out.name + ".gguf")) if kind != "symlink-to-dir" else out
    before = tree_hash(tmp_path)
    capsys.readouterr()
    assert main([a.replace("{IN}", str(inp)).replace("{OUT}", str(out)) for a in argv] + ([flag] if flag else [])) == 1
    err = one_line_error(capsys, "not written by streamcompress")
    assert "pass --overwrite" not in err and "use --overwrite" not in err, err
    assert tree_hash(tmp_path) == before


@pytest.mark.parametrize("cmd", ["compress", "import", "restore", "export"])
def test_overwrite_replaces_our_own_output_and_an_empty_dir(tmp_path, model, cmd):
    argv, inp = _commands(tmp_path, model)[cmd]
    for out in (tmp_path / "empty", tmp_path / "again"):
        out.mkdir()
        args = [a.replace("{IN}", str(inp)).replace("{OUT}", str(out)) for a in argv]
        assert main(args + ["--overwrite"]) == 0
        first = tree_hash(out)
        assert main(args + ["--overwrite"]) == 0  # now ours: replaced by the same
        assert main(args) == 1  # without --overwrite: refused
        assert tree_hash(out) == first or cmd == "compress"  # (compress records versions and times alike)


# -- one writer per output ---------------------------------------------------------------------
HOLD = """
import sys, time
from streamcompress.safety import claim_output
with claim_output(sys.argv[1], [], command=sys.argv[2], overwrite=True):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(out: Path, command: str):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(out), command], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


@pytest.mark.parametrize("cmd", ["compress", "import", "restore", "export"])
def test_a_second_run_on_a_held_output_is_refused(tmp_path, model, capsys, cmd):
    argv, inp = _commands(tmp_path, model)[cmd]
    out = tmp_path / "busy"
    holder = _holder(out, "compress")
    try:
        capsys.readouterr()
        for extra in ([], ["--overwrite"]) + ((["--resume"],) if cmd == "compress" else ()):
            assert main([a.replace("{IN}", str(inp)).replace("{OUT}", str(out)) for a in argv] + extra) == 1
            one_line_error(capsys, f"in use by another streamcompress run (pid {holder.pid}, compress")
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the dead holder's lock: its stale lock file blocks nothing
    assert main([a.replace("{IN}", str(inp)).replace("{OUT}", str(out)) for a in argv]) == 0


def cli(*args):
    return [sys.executable, "-m", "streamcompress", *map(str, args)]


def _big(tmp_path, rng, n=8):
    tensors = [(f"layers.{i}.w", heavy_tailed(rng, (256, 512))) for i in range(n)]
    return write_store(tmp_path / "big.zarr", tensors, (16, 512))


def test_two_real_runs_on_one_output_the_second_is_refused_the_first_is_whole(tmp_path, rng):
    src = _big(tmp_path, rng)
    out = tmp_path / "o.zarr"
    slow = ["--prune", "0.5", "--quantize", "int8:channel", "--memory-budget", "1MiB"]
    first = subprocess.Popen(cli("compress", src, out, *slow), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    t0 = time.monotonic()
    while not any(out.glob("*/zarr.json")) and time.monotonic() - t0 < 60:
        time.sleep(0.002)
    first.send_signal(signal.SIGSTOP)  # mid-run, for as long as the second runs take
    try:
        assert first.poll() is None, "finished before the second run could start"
        seconds = [subprocess.run(cli("compress", src, out, *slow, *extra), capture_output=True, text=True)
                   for extra in (["--overwrite"], ["--resume"])]
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(120) == 0
    for r in seconds:
        assert r.returncode == 1 and "in use by another streamcompress run" in r.stderr, r.stderr
    clean = tmp_path / "clean.zarr"
    subprocess.run(cli("compress", src, clean, *slow), check=True, capture_output=True)
    got, want = zarr.open_group(str(out), mode="r"), zarr.open_group(str(clean), mode="r")
    for name, a in want.arrays():
        assert (got[name][...] == a[...]).all()
    assert got.attrs["streamcompress_run"]["status"] == "complete"


# -- missing and corrupt chunks, input side and output side ------------------------------------
def _chunk(store: Path, array: str) -> Path:
    files = sorted(f for f in (store / array / "c").rglob("*") if f.is_file())
    return files[len(files) // 2]


def test_a_missing_input_chunk_is_an_error_not_zeros(tmp_path, model, capsys):
    _chunk(model, "layers.0.w").unlink()
    out = tmp_path / "o.zarr"
    assert main(["compress", str(model), str(out), "--quantize", "int8:channel", "-q"]) == 1
    one_line_error(capsys, "tensor 'layers.0.w'")
    assert not zarr.open_group(str(out), mode="r")["layers.0.w"].attrs.get("streamcompress")  # not complete
    # asked for: missing chunks read as the fill value, as zarr reads them
    assert main(["compress", str(model), str(tmp_path / "f.zarr"), "--quantize", "int8:channel", "-q",
                 "--missing-chunks", "fill"]) == 0


def test_a_shard_whose_writer_stopped_midway_is_an_error_not_zeros(tmp_path, rng, capsys):
    """zarr writes a shard's inner chunks as they come and marks the rest empty in its
    index: the shard file exists, and zarr reads the rows never written as zeros."""
    g = zarr.open_group(str(tmp_path / "in.zarr"), mode="w")
    a = g.create_array("w", shape=(8, 16), chunks=(2, 16), shards=(8, 16), dtype="float32")
    a[0:4] = rng.standard_normal((4, 16)).astype(np.float32)  # killed before rows 4:8
    before = tree_hash(tmp_path / "in.zarr")
    assert main(["compress", str(tmp_path / "in.zarr"), str(tmp_path / "o.zarr"), "--quantize", "int8:channel",
                 "-q"]) == 1
    one_line_error(capsys, "tensor 'w' block 0 (flat elements 0..127): inner chunk (2, 0) of shard 'c/0/0'")
    assert main(["compress", str(tmp_path / "in.zarr"), str(tmp_path / "f.zarr"), "--quantize", "int8:channel",
                 "-q", "--missing-chunks", "fill"]) == 0
    assert tree_hash(tmp_path / "in.zarr") == before


@pytest.mark.parametrize("array", ["layers.0.w", "layers.0.w_scale", "layers.0.norm"])
@pytest.mark.parametrize("damage", ["delete", "flip-byte", "truncate"])
@pytest.mark.parametrize("codec", ["zstd", "none"])
def test_damaged_output_chunks_fail_verify_restore_export(tmp_path, model, capsys, array, damage, codec):
    c = _compressed(tmp_path, model, "--codec", codec)
    f = _chunk(c, array) if array != "layers.0.w_scale" else next(p for p in (c / array / "c").rglob("*") if p.is_file())
    data = bytearray(f.read_bytes())
    if damage == "delete":
        f.unlink()
    elif damage == "flip-byte":
        data[len(data) // 2] ^= 0x10  # raw bytes would decode silently to a wrong value: the crc32c catches it
        f.write_bytes(bytes(data))
    else:
        f.write_bytes(bytes(data[: len(data) // 2]))
    capsys.readouterr()
    tensor = array.removesuffix("_scale")
    assert main(["verify", str(model), str(c)]) == 1
    one_line_error(capsys, f"tensor '{tensor}'")
    for cmd in ("restore", "export"):
        dest = tmp_path / f"{cmd}.out"
        assert main([cmd, str(c), str(dest), "-q"]) == 1
        one_line_error(capsys, f"tensor '{tensor}'")
        assert not dest.exists() and not list(tmp_path.glob(f".{cmd}.out*"))  # nothing partial left


def test_every_output_chunk_carries_a_crc32c(tmp_path, model):
    c = _compressed(tmp_path, model)
    for meta in c.rglob("zarr.json"):
        m = json.loads(meta.read_text())
        if m.get("node_type") == "array":
            assert m["codecs"][-1]["name"] == "crc32c", meta


# -- broken metadata at every level ------------------------------------------------------------
BREAKS = {
    "group-not-json": lambda s: (s / "zarr.json").write_text("{oops"),
    "array-not-json": lambda s: (s / "layers.0.w" / "zarr.json").write_text("{oops"),
    "array-empty-object": lambda s: (s / "layers.0.w" / "zarr.json").write_text("{}"),
    "array-no-shape": lambda s: (s / "layers.0.w" / "zarr.json").write_text(
        '{"zarr_format": 3, "node_type": "array"}'),
    "array-gone": lambda s: __import__("shutil").rmtree(s / "layers.0.w"),
    "bad-quantization-attr": lambda s: _edit_attrs(s / "layers.0.w" / "zarr.json",
                                                   lambda a: a.update(quantization={"scheme": 1})),
}


def _edit_attrs(f: Path, fn):
    m = json.loads(f.read_text())
    fn(m.setdefault("attributes", {}))
    f.write_text(json.dumps(m))


@pytest.mark.parametrize("brk", list(BREAKS))
@pytest.mark.parametrize("side", ["input", "compressed"])
def test_broken_metadata_gives_one_line_for_every_reader(tmp_path, model, capsys, brk, side):
    store = model if side == "input" else _compressed(tmp_path, model)
    if brk == "bad-quantization-attr" and side == "input":
        pytest.skip("an input holds no quantized tensor")
    BREAKS[brk](store)
    before = tree_hash(store)
    runs = [["info", str(store)], ["compress", str(store), str(tmp_path / "o1"), "--quantize", "int8", "-q"],
            ["restore", str(store), str(tmp_path / "o2"), "-q"], ["export", str(store), str(tmp_path / "o3"), "-q"],
            ["verify", str(store), str(store)]]
    for argv in runs:
        capsys.readouterr()
        assert main(argv) == 1, argv
        one_line_error(capsys, "")
    assert tree_hash(store) == before and not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3))


# -- kills mid-write and unfinished outputs ----------------------------------------------------
def _kill_when(p: subprocess.Popen, cond, timeout=60.0):
    t0 = time.monotonic()
    while p.poll() is None and time.monotonic() - t0 < timeout:
        if cond():
            p.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    p.wait()


@pytest.mark.parametrize("cmd", ["import", "restore", "export"])
def test_a_killed_import_restore_or_export_leaves_no_output(tmp_path, rng, cmd):
    src = _big(tmp_path, rng)
    if cmd == "import":
        assert main(["export", str(src), str(tmp_path / "st"), "-q", "--max-shard-size", "1MB"]) == 0
        src = tmp_path / "st"
    dest = tmp_path / "dest"
    p = subprocess.Popen(cli(cmd, src, dest, "-q"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(p, lambda: any(tmp_path.glob(".dest.partial-*/*")))
    assert p.returncode == -signal.SIGKILL, "finished before it could be killed"
    assert not dest.exists()
    assert main([cmd, str(src), str(dest), "-q"]) == 0  # a plain rerun works, and clears what was left
    assert not list(tmp_path.glob(".dest*"))


def _limited(limit: int, argv: list) -> subprocess.CompletedProcess:
    """A run in which no file may grow past ``limit`` bytes (RLIMIT_FSIZE: every
    write past it fails with EFBIG, as a full disk fails with ENOSPC, at whatever
    point the run has reached). Python ignores SIGXFSZ, so the write raises."""
    import resource

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(argv, preexec_fn=cap, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("cmd,limit", [(c, n) for c in ("compress", "compress-gguf", "import", "restore", "export",
                                                          "export-gguf") for n in (0, 100, 1500, 20000)
                                        # (with no file writable at all, Numba's start-up warns before any of ours)
                                        if n or not c.startswith("compress")])
def test_a_write_that_fails_at_any_point_is_one_line_and_loses_nothing(tmp_path, rng, cmd, limit):
    """Wherever the disk refuses a write (the lock, the output's creation, its
    metadata, a chunk, a GGUF's reservation), the command says so in one line
    naming the output; an output built aside (import, restore, export) leaves
    nothing behind, and a compress output is left resumable: once the disk has
    room, --resume finishes it to what a clean run writes."""
    tensors = [(f"layers.{i}.weight", heavy_tailed(rng, (64, 96))) for i in range(3)]
    src = write_store(tmp_path / "in.zarr", tensors, (16, 96))
    q8 = tmp_path / "q8.zarr"
    assert main(["compress", str(src), str(q8), "--quantize", "q8_0", "-q"]) == 0
    assert main(["export", str(src), str(tmp_path / "st"), "-q"]) == 0
    dest = tmp_path / ("out.gguf" if cmd.endswith("gguf") else "out")
    argv = {"compress": ["compress", src, dest, "--quantize", "int8:channel"],
            "compress-gguf": ["compress", src, dest, "--quantize", "q8_0"],
            "import": ["import", tmp_path / "st", dest], "restore": ["restore", q8, dest],
            "export": ["export", q8, dest], "export-gguf": ["export", q8, dest]}[cmd]
    inputs = {p: tree_hash(p) for p in (src, q8, tmp_path / "st")}
    r = _limited(limit, cli(*argv, "-q"))
    assert {p: tree_hash(p) for p in inputs} == inputs
    if limit < 20000 or r.returncode:
        assert r.returncode == 1, r.stderr
        err = r.stderr.strip()
        assert err.startswith("streamcompress: error:") and "\n" not in err, err
        assert "File too large" in err and str(dest) in err or "tensor 'layers." in err, err
    marker = f".{dest.name}.streamcompress"  # (beside a finished GGUF: ours to replace)
    leftovers = sorted(p.name for p in tmp_path.glob(".out*") if not (p.name == marker and dest.exists()))
    assert not leftovers, leftovers
    if cmd == "compress" and dest.exists():
        assert main([*map(str, argv), "--resume", "-q"]) == 0
        assert main(["compress", str(src), str(tmp_path / "clean"), "--quantize", "int8:channel", "-q"]) == 0
        assert main(["verify", str(src), str(dest)]) == 0
        for name, _ in tensors:
            a, b = (zarr.open_group(str(d), mode="r") for d in (dest, tmp_path / "clean"))
            assert (a[name][...] == b[name][...]).all() and (a[name + "_scale"][...] == b[name + "_scale"][...]).all()
    elif r.returncode:
        assert not dest.exists(), cmd
        assert main([*map(str, argv), "-q"]) == 0  # a plain rerun, once the disk has room


def test_readers_refuse_an_unfinished_compress_output(tmp_path, rng, capsys):
    src = _big(tmp_path, rng)
    out = tmp_path / "o.zarr"
    p = subprocess.Popen(cli("compress", src, out, "--quantize", "int8:channel", "--memory-budget", "1MiB"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(p, lambda: any(out.glob("*/zarr.json")))
    assert p.returncode == -signal.SIGKILL
    for argv in (["restore", str(out), str(tmp_path / "r")], ["export", str(out), str(tmp_path / "e")],
                 ["verify", str(src), str(out)], ["compress", str(out), str(tmp_path / "c"), "--quantize", "int8"]):
        capsys.readouterr()
        assert main(argv) == 1
        one_line_error(capsys, "unfinished streamcompress output (compress running")
    capsys.readouterr()
    assert main(["info", str(out)]) == 0 and "unfinished" in capsys.readouterr().out
    assert main(["compress", str(src), str(out), "--quantize", "int8:channel", "--resume", "-q"]) == 0
    assert main(["verify", str(src), str(out)]) == 0


# -- wrong results or misleading errors (the rest of the list) -------------------------
@pytest.mark.parametrize("stage", [["--quantize", "int8"], ["--quantize", "int4:group:32"], ["--clip", "0.5"],
                                   ["--quantize", "q8_0"]])
def test_a_model_of_one_zero_size_tensor_compresses(tmp_path, capsys, stage):
    from safetensors.numpy import save_file

    save_file({"w": np.zeros((0, 32), np.float32)}, str(tmp_path / "e.safetensors"))
    out = tmp_path / "o.zarr"
    assert main(["compress", str(tmp_path / "e.safetensors"), str(out), *stage, "-q"]) == 0
    assert "no parameters" in capsys.readouterr().out
    assert zarr.open_group(str(out), mode="r").attrs["streamcompress_run"]["status"] == "complete"


def test_the_readmes_pipeline_file_runs_the_real_quantizer(tmp_path, model):
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    toml = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "p.toml").write_text(toml)
    out = tmp_path / "o.zarr"
    assert main(["compress", str(model), str(out), "--config", str(tmp_path / "p.toml"), "-q"]) == 0
    q = zarr.open_group(str(out), mode="r")["layers.0.w"].attrs["quantization"]
    assert q["scheme"] == "int4:group:64" and q["scale_dtype"] == "float16"
    (tmp_path / "bare.json").write_text(json.dumps({"stages": [{"name": "quantize"}]}))
    assert main(["compress", str(model), str(tmp_path / "b.zarr"), "--config", str(tmp_path / "bare.json"), "-q"]) == 0
    assert zarr.open_group(str(tmp_path / "b.zarr"), mode="r")["layers.0.w"].attrs["quantization"]["scheme"] == "int8:tensor"


@pytest.mark.parametrize("name", [".", "zarr.json", "a/../b", "__masks__"])
@pytest.mark.parametrize("cmd", ["compress", "import"])
def test_tensor_names_that_are_paths_are_refused_and_leave_nothing(tmp_path, capsys, name, cmd):
    from safetensors.numpy import save_file

    f = tmp_path / "n.safetensors"
    save_file({name: np.ones(4, np.float32)}, str(f))
    out = tmp_path / "o.zarr"
    argv = ["compress", str(f), str(out), "--quantize", "int8"] if cmd == "compress" else ["import", str(f), str(out)]
    assert main(argv) == 1
    one_line_error(capsys, "is not allowed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.safetensors"]


def test_in_memory_names_that_are_paths_are_refused_before_writing(tmp_path):
    import streamcompress as sc

    with pytest.raises(sc.InvalidStore, match="cannot name an array"):
        sc.compress_model({"a/./b": np.ones(4, np.float32)}, sc.CompressionConfig.quantize_only(),
                          output=tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize("scheme", ["int8", "int8:channel", "int4", "int8_asym", "q8_0"])
def test_inf_kept_with_a_real_quantizer_names_the_tensor(tmp_path, capsys, scheme):
    from safetensors.numpy import save_file

    save_file({"w": np.array([[1, np.inf], [2, 3]], np.float32)}, str(tmp_path / "i.safetensors"))
    assert main(["compress", str(tmp_path / "i.safetensors"), str(tmp_path / "o.zarr"), "--quantize", scheme,
                 "--nonfinite", "keep", "--scale-dtype", "float32", "-q"]) == 1
    one_line_error(capsys, "tensor 'w' holds inf (kept by --nonfinite keep)")


def test_an_unreachable_scheduler_writes_nothing(tmp_path, model, capsys, monkeypatch):
    from streamcompress.distributed import DaskExecutor

    monkeypatch.setattr(DaskExecutor, "CONNECT_TIMEOUT", "1s")
    out = tmp_path / "o.zarr"
    assert main(["compress", str(model), str(out), "--quantize", "int8", "--scheduler", "tcp://127.0.0.1:9", "-q"]) == 1
    one_line_error(capsys, "cannot reach the Dask scheduler")
    assert not out.exists() and not list(tmp_path.glob(".o.zarr*"))
    assert main(["compress", str(model), str(out), "--quantize", "int8", "-q"]) == 0  # a plain rerun works


def test_missing_parent_directories_of_an_output_are_made(tmp_path, model):
    out = tmp_path / "new" / "deeper" / "o.zarr"
    assert main(["compress", str(model), str(out), "--quantize", "int8", "-q"]) == 0
    assert main(["verify", str(model), str(out)]) == 0
