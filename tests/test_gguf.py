"""GGUF in and out, checked by gguf-py (PyPI ``gguf``, llama.cpp's own Python
package): its writer makes the inputs, its reader reads our outputs, and its
quantizers are the reference for ggml's block types."""

import errno
import json
import os
import shutil
import signal
import struct
import subprocess
import time
import warnings

import numpy as np
import pytest

from streamcompress.cli import main
from test_data_safety import _kill_when, cli, one_line_error

if os.environ.get("CI"):  # the test extra brings it
    import gguf  # noqa: F401
gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf import GGUFReader, GGUFWriter  # noqa: E402
import gguf.quants as Q  # noqa: E402

import streamcompress as sc  # noqa: E402
from streamcompress.formats.gguf.blocks import ggml_rows  # noqa: E402
from streamcompress.kernels import unpack_nibbles  # noqa: E402
from streamcompress.stages import Quantize  # noqa: E402

BLOCK_SCHEMES = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]


def _blocks_of_every_kind(rng, rows=48, cols=256):
    """Random rows of many magnitudes, and blocks that are tied, all zero, -0.0,
    denormal, huge, in steps, or mixed ±0 (the first block of rows 0..)."""
    x = (rng.standard_normal((rows, cols)) * rng.uniform(1e-3, 10, (rows, 1))).astype(np.float32)
    b = x[:, :32]
    b[0] = 0
    b[1] = -0.0
    b[2] = 5.0
    b[3] = np.float32(1e-40)
    b[4] = np.float32(3e4)
    b[5, :16], b[5, 16:] = -1, 1  # two elements of the largest |x|: the first one counts
    b[6] = rng.integers(-8, 8, 32) * 0.25  # exact steps: ties at .5 after scaling
    b[7] = np.float32(-1e-40)
    b[8, 0], b[8, 1:] = -0.0, 1e-40
    b[9] = np.float32(1e-38)
    b[10] = rng.integers(-16, 16, 32) * 0.5
    b[11] = (rng.standard_normal(32) * 1e-41).astype(np.float32)
    b[12] = 6e4
    b[13] = np.linspace(-1, 1, 32)
    b[14] = np.where(rng.random(32) < 0.5, -0.0, 0.0)
    b[15, :31], b[15, 31] = 0, -3.0
    return x


def _ggml_bytes(arrays, scheme, cols):
    """Our stored codes and scales as ggml block rows."""
    c = arrays["w"]
    if scheme.startswith("q4"):
        q = unpack_nibbles(c, cols)
    else:
        q = c.astype(np.int16) + (16 if scheme == "q5_0" else 0)
    return ggml_rows(scheme, q, arrays["w_scale"], arrays.get("w_min"))


def _neg_zero_d_blocks(x, scheme):
    """Blocks where gguf-py and ggml's C reference differ: a ``_0`` block of zeros
    whose first element is -0.0 (gguf-py takes that element as the max, so
    ``d = -0.0 / -8 = +0.0``; ggml keeps its initial ``max = 0.0``, so ``d = -0.0``).
    We follow ggml (llama.cpp's output: scripts/ggml_peer.py checks against it)."""
    if not scheme.endswith("_0") or scheme == "q8_0":
        return set()
    blocks = x.reshape(-1, 32)
    bad = (blocks == 0).all(axis=1) & np.signbit(blocks[:, 0])
    return set(np.nonzero(bad)[0].tolist())


@pytest.mark.parametrize("scheme", BLOCK_SCHEMES)
def test_block_schemes_are_gguf_py_bit_for_bit(rng, scheme):
    x = _blocks_of_every_kind(rng)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        ref = Q.quantize(x, getattr(T, scheme.upper()))
    nbytes = ref.shape[-1] // (x.shape[-1] // 32)
    for block in (None, 64, 96, 32 * 5):  # chunked == whole
        r = sc.compress_model({"w": x}, sc.CompressionConfig((Quantize(scheme),)),
                              options=sc.EngineOptions(block_elems=block))
        ours = _ggml_bytes(r.arrays, scheme, x.shape[-1])
        diff = np.nonzero((ours.reshape(-1, nbytes) != ref.reshape(-1, nbytes)).any(axis=1))[0]
        known = _neg_zero_d_blocks(x, scheme)
        assert set(diff.tolist()) == known, (block, diff)
        for i in known:  # ... and there only the sign bit of d differs
            a, b = ours.reshape(-1, nbytes)[i], ref.reshape(-1, nbytes)[i]
            assert a[1] == b[1] | 0x80 and (a[2:] == b[2:]).all() and a[0] == b[0]
        # the values flowing on (simulate) are gguf-py's dequantization, bit for bit
        sim = sc.compress_model({"w": x}, sc.CompressionConfig((Quantize(scheme, simulate=True),)),
                                options=sc.EngineOptions(block_elems=block)).compressed_tensors[0].data
        with np.errstate(all="ignore"):
            deq = Q.dequantize(ref, getattr(T, scheme.upper())).astype(np.float32)
        same = sim.view(np.uint32) == deq.view(np.uint32)
        zero = (sim == 0) & (deq == 0)  # (the -0.0 blocks above: +0.0 * -0.0)
        assert (same | zero).all(), block


def _f32_gguf(path, tensors):
    w = GGUFWriter(str(path), "llama")
    for k, v in tensors.items():
        w.add_tensor(k, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("scheme", BLOCK_SCHEMES)
def test_blocks_written_into_a_gguf_are_gguf_py_and_their_stats_the_stores(tmp_path, rng, scheme):
    """The GGUF path makes its blocks (and Q8_0 its stats, in one kernel) its own way:
    the same bytes as gguf-py, the same stats as a run into memory, chunked or whole."""
    x = _blocks_of_every_kind(rng)
    src = _f32_gguf(tmp_path / "in.gguf", {"w": x})
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        ref = Q.quantize(x, getattr(T, scheme.upper()))
    nbytes = ref.shape[-1] // (x.shape[-1] // 32)
    config = sc.CompressionConfig((Quantize(scheme),))
    for block in (None, 64, 96, 32 * 5, 256 * 3):
        opts = sc.EngineOptions(block_elems=block)
        out = tmp_path / "o.gguf"
        r = sc.compress_model(str(src), config, output=out, overwrite=True, options=opts)
        (t,) = GGUFReader(str(out)).tensors
        ours = np.asarray(t.data).reshape(-1, nbytes)
        diff = np.nonzero((ours != ref.reshape(-1, nbytes)).any(axis=1))[0]
        assert set(diff.tolist()) == _neg_zero_d_blocks(x, scheme), block
        mem = sc.compress_model({"w": x}, config, options=opts)
        assert [s.to_dict() for s in r.stage_stats] == [s.to_dict() for s in mem.stage_stats], block
        assert r.tensor_stats["w"]["stages"] == mem.tensor_stats["w"]["stages"]


def test_the_one_pass_q8_0_kernel_is_the_generic_steps(rng):
    """``q8_0_pass`` against the kernels and scheme rules it stands for (absmax,
    scales, quantize, pack, diff_stats, count_nonfinite), with NaN (``--nonfinite
    keep``), zero and denormal units, ties and scales of every float16 range, over
    several tiles."""
    from streamcompress import kernels as K
    from streamcompress.stages.schemes import parse_scheme

    n = 32 * 4100  # (three tiles of 65536 elements, the last partial)
    x = (rng.standard_normal(n) * 10.0 ** rng.uniform(-9, 6, n // 32).repeat(32)).astype(np.float32)
    x[:32] = 0
    x[32:64] = np.float32(1e-41)
    x[64:96] = rng.integers(-16, 16, 32) * 0.5
    x[96:128] = -0.0
    x[100], x[70000], x[70001] = np.nan, np.nan, -np.nan
    sch = parse_scheme("q8_0")
    out = np.empty(n // 32 * 34, np.uint8)
    nz, sse, mx, sig, bad, top, flags = K.q8_0_pass(x, x.view(np.uint32), sch.qmin, sch.qmax, K.POW2, out)
    amax = K.unit_absmax(x, 0, 256, 32)
    used, inv, zp = sch.scales_from_stats(amax, None)
    deq, codes = x.copy(), np.empty(n, np.int8)
    K.quantize_units(deq, 0, 256, 32, used, inv, zp, sch.qmin, sch.qmax, True, codes)
    assert (nz, sse, mx, sig) == tuple(K.diff_stats(x, deq)) and np.isfinite(sse)
    assert bad == K.count_nonfinite(x) == 3 and top == amax.max() and flags == 0
    assert np.array_equal(out, ggml_rows("q8_0", codes.reshape(1, -1), used.reshape(1, -1), None).reshape(-1))
    # an inf, and a scale past float16, are flagged (the runner raises scales_from_stats' errors)
    y = np.ones(64, np.float32)
    y[3] = np.inf
    assert K.q8_0_pass(y, y.view(np.uint32), -127, 127, K.POW2, np.empty(68, np.uint8))[6] == 1
    y[3] = 1e7
    assert K.q8_0_pass(y, y.view(np.uint32), -127, 127, K.POW2, np.empty(68, np.uint8))[6] == 2


@pytest.mark.parametrize("scheme", ["q8_0", "q4_0"])
def test_nan_and_inf_into_a_gguf_are_one_line_errors_as_into_a_store(tmp_path, rng, capsys, scheme):
    x = rng.standard_normal((64, 256)).astype(np.float32)
    x[40, 7] = np.nan
    src = _f32_gguf(tmp_path / "in.gguf", {"w": x})
    msgs = []
    for out in ("o.gguf", "o.zarr"):
        capsys.readouterr()
        assert main(["compress", str(src), str(tmp_path / out), "--quantize", scheme, "--skip-1d",
                     "--memory-budget", "1MiB"]) == 1
        msgs.append(one_line_error(capsys, "NaN"))
    assert msgs[0] == msgs[1] and "block" in msgs[0]
    x[40, 7] = np.inf
    src = _f32_gguf(tmp_path / "inf.gguf", {"w": x})
    capsys.readouterr()
    assert main(["compress", str(src), str(tmp_path / "k.gguf"), "--quantize", scheme, "--nonfinite", "keep"]) == 1
    one_line_error(capsys, "holds inf")
    assert not (tmp_path / "o.gguf").exists() and not (tmp_path / "k.gguf").exists()


def test_float16_rounding_is_numpys(rng):
    from streamcompress.kernels import POW2, f16_round

    bits = np.concatenate([rng.integers(0, 0x7F800000, 200_000, dtype=np.uint32),
                           np.arange(0x33000000 - 64, 0x33000000 + 64, dtype=np.uint32),  # around float16's 2**-25
                           np.arange(0x387FC000, 0x38800400, 7, dtype=np.uint32),  # subnormal/normal edge
                           np.arange(0x477FE000, 0x47800100, 3, dtype=np.uint32),  # around 65504 / 65520
                           np.array([0, 0x7F800000], np.uint32)])
    v = bits.view(np.float32)
    with np.errstate(over="ignore"):
        want = v.astype(np.float16)
    for x, w in zip(v.tolist()[::7] + v.tolist()[200_000:], want.tolist()[::7] + want.tolist()[200_000:]):
        hint = int(np.frexp(np.float32(x))[1]) - 1 - (len(str(x)) % 2)  # (any e with 2**e <= x < 2**(e + 2))
        h, f = f16_round(np.float32(x), hint, POW2)
        assert int(h) == int(np.float16(w).view(np.uint16)) and f == np.float32(w), x


def test_block_packing_is_the_numpy_layout(rng):
    for scheme, top in [("q8_0", None), ("q4_0", 15), ("q4_1", 15), ("q5_0", 31), ("q5_1", 31)]:
        q = (rng.integers(-128, 128, (3, 96)).astype(np.int8) if top is None
             else rng.integers(0, top + 1, (3, 96)).astype(np.uint8))
        d = rng.standard_normal((3, 3)).astype(np.float16)
        m = rng.standard_normal((3, 3)).astype(np.float16) if scheme.endswith("_1") else None
        parts = [d.reshape(3, 3, 1).view(np.uint8)] + ([m.reshape(3, 3, 1).view(np.uint8)] if m is not None else [])
        u = q.reshape(3, 3, 32)
        if scheme == "q8_0":
            parts.append(u.view(np.uint8))
        else:
            if scheme.startswith("q5"):
                parts.append(np.packbits(u >> np.uint8(4), axis=-1, bitorder="little"))
            parts.append((u[..., :16] & np.uint8(0x0F)) | (u[..., 16:] << np.uint8(4)))
        want = np.concatenate(parts, axis=-1).reshape(3, -1)
        assert np.array_equal(ggml_rows(scheme, q, d, m), want), scheme


def _llama_gguf(path, rng, ftype=None, dtype=np.float32):
    """A small llama-shaped GGUF by gguf-py's writer: hparams, a tokenizer, norms and matrices."""
    w = GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_block_count(2)
    w.add_context_length(128)
    w.add_embedding_length(64)
    w.add_feed_forward_length(96)
    w.add_head_count(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"tok{i}".encode() for i in range(100)])
    w.add_token_scores([float(i) for i in range(100)])
    w.add_token_types([1] * 100)
    if ftype is not None:
        w.add_file_type(ftype)
    shapes = {"token_embd.weight": (100, 64), "blk.0.attn_norm.weight": (64,), "blk.0.attn_q.weight": (64, 64),
              "blk.0.ffn_up.weight": (96, 64), "blk.1.ffn_down.weight": (64, 96), "output_norm.weight": (64,),
              "output.weight": (100, 64)}
    data = {k: (rng.standard_normal(s) * 0.05).astype(dtype) for k, s in shapes.items()}
    for k, v in data.items():
        if v.dtype.name == "bfloat16":  # (gguf-py takes its bits)
            w.add_tensor(k, v.view(np.uint16), raw_shape=v.shape, raw_dtype=T.BF16)
        else:
            w.add_tensor(k, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return data


def _fields(path):
    return {f.name: f.contents() for f in GGUFReader(str(path)).fields.values() if not f.name.startswith("GGUF.")}


@pytest.mark.parametrize("scheme", ["q8_0", "q4_0", "q5_1"])
def test_gguf_in_quantized_gguf_out_as_gguf_py_reads_it(tmp_path, rng, scheme):
    src = tmp_path / "in.gguf"
    data = _llama_gguf(src, rng)
    out = tmp_path / "out.gguf"
    assert main(["compress", str(src), str(out), "--quantize", scheme, "-q"]) == 0
    before, after = _fields(src), _fields(out)
    assert after.pop("general.file_type") == {"q8_0": 7, "q4_0": 2, "q5_1": 9}[scheme]
    assert after.pop("general.quantization_version") == 2
    assert after == before  # every key/value kept, in its type
    r = GGUFReader(str(out))
    assert [t.name for t in r.tensors] == list(data)  # the input's order
    for t in r.tensors:
        x = data[t.name]
        if x.ndim == 1:  # norms stay F32, as llama.cpp keeps them
            assert t.tensor_type == T.F32 and np.array_equal(np.asarray(t.data), x)
        else:
            assert t.tensor_type == getattr(T, scheme.upper())
            assert np.array_equal(np.asarray(t.data).reshape(-1), Q.quantize(x, t.tensor_type).reshape(-1)), t.name
            assert [int(d) for d in t.shape] == list(reversed(x.shape))
    assert not list(tmp_path.glob(".out.gguf.work*")), "the work store is removed"


@pytest.mark.parametrize("dtype, ftype", [(np.float32, 0), (np.float16, 1), ("bfloat16", 32)])
def test_float_gguf_round_trips_through_zarr_byte_for_byte(tmp_path, rng, dtype, ftype):
    src = tmp_path / "in.gguf"
    if dtype == "bfloat16":
        import ml_dtypes

        data = _llama_gguf(src, rng, ftype=ftype, dtype=ml_dtypes.bfloat16)
        assert all(GGUFReader(str(src)).tensors[i].tensor_type == T.BF16 for i in range(len(data)))
    else:
        _llama_gguf(src, rng, ftype=ftype, dtype=dtype)
    assert main(["import", str(src), str(tmp_path / "s.zarr"), "-q"]) == 0
    assert main(["export", str(tmp_path / "s.zarr"), str(tmp_path / "back.gguf"), "-q"]) == 0
    assert (tmp_path / "back.gguf").read_bytes() == src.read_bytes()


def test_q8_0_gguf_input_is_dequantized_as_gguf_py_does(tmp_path, rng):
    src = tmp_path / "q.gguf"
    x = (rng.standard_normal((8, 64)) * 0.1).astype(np.float32)
    w = GGUFWriter(str(src), "llama")
    q = Q.quantize(x, T.Q8_0)
    w.add_tensor("blk.0.attn_q.weight", q, raw_shape=q.shape, raw_dtype=T.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert main(["import", str(src), str(tmp_path / "s.zarr"), "-q"]) == 0
    import zarr

    got = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["blk.0.attn_q.weight"][...]
    assert got.shape == x.shape and np.array_equal(got, Q.dequantize(q, T.Q8_0))
    # and compressed to q8_0 again, its blocks are the input's (requantizing Q8_0 is exact)
    assert main(["compress", str(src), str(tmp_path / "o.gguf"), "--quantize", "q8_0", "-q"]) == 0
    (t,) = GGUFReader(str(tmp_path / "o.gguf")).tensors
    assert np.array_equal(np.asarray(t.data).reshape(-1), q.reshape(-1))


def _llama_f32(path, rng, n=8, shape=(512, 1024)):
    w = GGUFWriter(str(path), "llama")
    for i in range(n):
        w.add_tensor(f"blk.{i}.ffn_up.weight", (rng.standard_normal(shape) * 0.05).astype(np.float32))
    w.add_tensor("output_norm.weight", np.ones(shape[-1], np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _journal_tensors(journal):
    try:
        return max(0, len(journal.read_text().splitlines()) - 1)
    except OSError:
        return 0


@pytest.mark.parametrize("scheme", ["q4_0", "q8_0"])
def test_a_killed_gguf_compress_resumes_to_the_same_file(tmp_path, rng, scheme):
    src = _llama_f32(tmp_path / "in.gguf", rng)
    clean = tmp_path / "clean.gguf"
    assert main(["compress", str(src), str(clean), "--quantize", scheme, "-q"]) == 0
    out = tmp_path / "out.gguf"
    work, journal = tmp_path / ".out.gguf.work", tmp_path / ".out.gguf.work.json"
    p = subprocess.Popen(cli("compress", src, out, "--quantize", scheme, "--memory-budget", "1MiB"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(p, lambda: _journal_tensors(journal) >= 3)
    assert p.returncode == -signal.SIGKILL, "finished before it could be killed"
    assert not out.exists() and work.exists()
    kept = _journal_tensors(journal)
    r = subprocess.run(cli("-v", "compress", src, out, "--quantize", scheme, "--resume", "-q"), capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("kept blk.") == kept >= 3  # the tensors recorded complete are not redone
    assert out.read_bytes() == clean.read_bytes()
    assert not work.exists() and not journal.exists()


def _interrupted_at_third_record(monkeypatch, src, out, before=None, at=3, resume=False) -> list[str]:
    """A Q8_0 compress of ``src`` into ``out`` (``resume``: resuming it) stopped
    (KeyboardInterrupt) as its ``at``-th tensor's completion is recorded (after
    ``before(sink, name, attrs)``), nothing recorded after it; returns the names
    whose completion was asked, in order."""
    import threading

    from streamcompress.formats.gguf import GGUFSink

    real = GGUFSink.update_attrs
    calls = []
    one_at_a_time = threading.Lock()  # (records are made on two writer threads: a kill stops them all)

    def dies_at(self, name, attrs):
        with one_at_a_time:
            if len(calls) >= at:  # after the "kill": nothing more is written
                raise KeyboardInterrupt
            calls.append(name)
            if len(calls) == at:
                if before is not None:
                    before(self, name, attrs)
                raise KeyboardInterrupt
            real(self, name, attrs)

    monkeypatch.setattr(GGUFSink, "update_attrs", dies_at)
    with pytest.raises(KeyboardInterrupt):
        sc.compress_model(str(src), sc.CompressionConfig((Quantize(sc.parse_scheme("q8_0")),)), output=out,
                          resume=resume, options=sc.EngineOptions(block_elems=64 * 256))
    monkeypatch.setattr(GGUFSink, "update_attrs", real)
    return calls


@pytest.mark.parametrize("damage", ["header", "cut"])
def test_a_damaged_work_file_is_redone_on_resume_not_kept(tmp_path, rng, monkeypatch, damage):
    src = _llama_f32(tmp_path / "in.gguf", rng, n=4, shape=(64, 256))
    clean = tmp_path / "clean.gguf"
    assert main(["compress", str(src), str(clean), "--quantize", "q8_0", "-q"]) == 0
    out, work = tmp_path / "out.gguf", tmp_path / ".out.gguf.work"
    _interrupted_at_third_record(monkeypatch, src, out)
    blob = bytearray(work.read_bytes())
    work.write_bytes(bytes(64) + bytes(blob[64:]) if damage == "header" else bytes(blob[: len(blob) // 2]))
    assert main(["compress", str(src), str(out), "--quantize", "q8_0", "--resume", "-q"]) == 0
    assert out.read_bytes() == clean.read_bytes()


def test_a_disk_too_small_for_the_gguf_fails_before_any_work(tmp_path, rng):
    src = _llama_f32(tmp_path / "in.gguf", rng, n=4, shape=(256, 512))
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        r = subprocess.run(cli("compress", src, mnt / "out.gguf", "--quantize", "q8_0", "-q"), capture_output=True,
                           text=True)
        assert r.returncode == 1 and r.stderr.startswith("streamcompress: error:"), r.stderr
        assert "No space left on device" in r.stderr and "reserved before any work" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert not [p.name for p in mnt.iterdir() if not p.name.endswith(".lock")]  # nothing left but no file
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_journal_line_cut_short_is_not_a_record(tmp_path, rng, monkeypatch, caplog):
    """A kill while a completion record is appended leaves half a line: that tensor is redone."""
    src = _llama_f32(tmp_path / "in.gguf", rng, n=4, shape=(64, 256))
    clean = tmp_path / "clean.gguf"
    assert main(["compress", str(src), str(clean), "--quantize", "q8_0", "-q"]) == 0
    out = tmp_path / "out.gguf"
    journal = tmp_path / ".out.gguf.work.json"

    def half_a_record(sink, name, attrs):  # half of the third record, then the "kill"
        with open(sink.journal, "a") as f:
            f.write(json.dumps({"name": name, "info": attrs["streamcompress"]})[:40])

    calls = _interrupted_at_third_record(monkeypatch, src, out, half_a_record)
    assert len(journal.read_text().splitlines()) == 4 and not out.exists()  # run, 2 records, half a line
    caplog.set_level("INFO", "streamcompress")
    assert main(["compress", str(src), str(out), "--quantize", "q8_0", "--resume", "-q"]) == 0
    # (records are asked for in the order tensors finish on the two writer threads; "kept" goes in model order)
    assert sorted(r.getMessage() for r in caplog.records if r.getMessage().startswith("kept")) == sorted(
        f"kept {n} (complete in the earlier run)" for n in calls[:2])
    assert out.read_bytes() == clean.read_bytes()


def test_a_resume_after_a_record_cut_short_keeps_its_own_records_for_the_next(tmp_path, rng, monkeypatch, caplog):
    """Killed mid-record, then the resumed run killed too: the second resume keeps what
    the first one recorded (its records are not appended to the cut line)."""
    src = _llama_f32(tmp_path / "in.gguf", rng, n=6, shape=(64, 256))
    clean = tmp_path / "clean.gguf"
    assert main(["compress", str(src), str(clean), "--quantize", "q8_0", "-q"]) == 0
    out = tmp_path / "out.gguf"
    journal = tmp_path / ".out.gguf.work.json"

    def half_a_record(sink, name, attrs):
        with open(sink.journal, "a") as f:
            f.write(json.dumps({"name": name, "info": attrs["streamcompress"]})[:40])

    first = _interrupted_at_third_record(monkeypatch, src, out, half_a_record)
    assert not journal.read_text().endswith("\n")
    seen = _interrupted_at_third_record(monkeypatch, src, out, at=2, resume=True)  # one record, then killed
    assert all(json.loads(line) for line in journal.read_text().splitlines())  # (whole records only)
    caplog.set_level("INFO", "streamcompress")
    assert main(["compress", str(src), str(out), "--quantize", "q8_0", "--resume", "-q"]) == 0
    kept = sorted(r.getMessage() for r in caplog.records if r.getMessage().startswith("kept"))
    assert kept == sorted(f"kept {n} (complete in the earlier run)" for n in first[:2] + seen[:1])  # (see above)
    assert out.read_bytes() == clean.read_bytes()


def _held_until_the_last_write(monkeypatch):
    """GGUFSink.make_durable held until the file's last tensor is written (at most
    20 s); returns the list of whether each hold ended by that write."""
    import threading

    from streamcompress.formats.gguf.sink import GGUFSink

    last_written, held = threading.Event(), []
    write, durable = GGUFSink.write, GGUFSink.make_durable

    def wrote(self, name, region, data):
        write(self, name, region, data)
        if name == list(self.tensors)[-1]:
            last_written.set()

    def slow_disk(self, names):
        held.append(last_written.wait(20))
        durable(self, names)

    monkeypatch.setattr(GGUFSink, "write", wrote)
    monkeypatch.setattr(GGUFSink, "make_durable", slow_disk)
    return held


def test_tensors_go_on_while_a_completion_waits_on_the_disk(tmp_path, rng, monkeypatch):
    """A tensor's completion (``fdatasync``, then its record) runs behind on its own
    thread: while the disk holds one, the next tensors are computed and written.
    (A run waited for each tensor's completion before the one after it: a slow
    ``fdatasync`` stalled the kernels, and the disk and the cores took turns.)"""
    src = _llama_f32(tmp_path / "in.gguf", rng, n=5, shape=(64, 256))
    clean = tmp_path / "clean.gguf"
    assert main(["compress", str(src), str(clean), "--quantize", "q8_0", "-q"]) == 0
    held = _held_until_the_last_write(monkeypatch)
    out = tmp_path / "out.gguf"
    assert main(["compress", str(src), str(out), "--quantize", "q8_0", "-q"]) == 0
    assert held and all(held), held  # the first completion was held until every tensor was written
    assert out.read_bytes() == clean.read_bytes()


def test_after_a_failed_completion_no_later_tensor_is_recorded(tmp_path, rng, monkeypatch, capsys):
    """The second tensor's ``fdatasync`` fails once every tensor is written (their
    completions queued behind it): the run fails in one line, and the journal
    records the first tensor only, as the error says; a resume makes the same file."""
    src = _llama_f32(tmp_path / "in.gguf", rng, n=5, shape=(64, 256))
    clean = tmp_path / "clean.gguf"
    assert main(["compress", str(src), str(clean), "--quantize", "q8_0", "-q"]) == 0
    real_sync, syncs = os.fdatasync, []

    def eio_at_the_second(fd):
        syncs.append(fd)
        if len(syncs) == 2:
            raise OSError(errno.EIO, "Input/output error")
        real_sync(fd)

    held = _held_until_the_last_write(monkeypatch)
    monkeypatch.setattr(os, "fdatasync", eio_at_the_second)
    out, journal = tmp_path / "out.gguf", tmp_path / ".out.gguf.work.json"
    assert main(["compress", str(src), str(out), "--quantize", "q8_0", "-q"]) == 1
    one_line_error(capsys, "Input/output error; nothing after the last complete tensor is marked complete")
    assert held[0] and len(syncs) == 2  # the completions queued behind the failed one never ran
    assert [json.loads(line).get("name") for line in journal.read_text().splitlines()] == [
        None, "blk.0.ffn_up.weight"]
    monkeypatch.undo()
    assert main(["compress", str(src), str(out), "--quantize", "q8_0", "--resume", "-q"]) == 0
    assert out.read_bytes() == clean.read_bytes()


def _corrupt(kind, good, path):
    b = bytearray(good.read_bytes())
    r = GGUFReader(str(good))
    t0, t1 = r.tensors[0], r.tensors[1]
    if kind == "truncated":
        b = b[: len(b) - 100]
    elif kind == "bad-magic":
        b[:4] = b"GGUX"
    elif kind == "unknown-type":  # the first tensor's type field: after its name, n_dims and dims
        at = t0.field.offset + 8 + len(t0.name) + 4 + 8 * len(t0.shape)
        b[at:at + 4] = struct.pack("<I", 99)
    elif kind == "overlap":  # the second tensor's offset becomes the first's
        at = t1.field.offset + 8 + len(t1.name) + 4 + 8 * len(t1.shape) + 4
        b[at:at + 8] = struct.pack("<Q", 0)
    elif kind == "header-cut":
        b = b[:40]
    path.write_bytes(bytes(b))


@pytest.mark.parametrize("kind, needle", [("truncated", "truncated"), ("bad-magic", "not a GGUF file"),
                                          ("unknown-type", "ggml type number 99"), ("overlap", "overlap"),
                                          ("header-cut", "truncated or corrupt")])
def test_bad_gguf_input_is_one_line_for_every_command(tmp_path, rng, capsys, kind, needle):
    good = tmp_path / "good.gguf"
    _llama_gguf(good, rng)
    bad = tmp_path / "bad.gguf"
    _corrupt(kind, good, bad)
    for argv in (["info", str(bad)], ["import", str(bad), str(tmp_path / "s")],
                 ["compress", str(bad), str(tmp_path / "o.gguf"), "--quantize", "q8_0"],
                 ["verify", str(bad), str(bad)]):
        capsys.readouterr()
        assert main(argv) == 1, argv
        one_line_error(capsys, needle)
    assert not (tmp_path / "s").exists() and not (tmp_path / "o.gguf").exists()


@pytest.mark.parametrize("dtype", [np.float32, np.float16, "bfloat16"])
@pytest.mark.parametrize("stages", [["--quantize", "q8_0"], ["--quantize", "q4_1"], ["--quantize", "q5_0"],
                                    ["--prune", "0.5", "--quantize", "q4_0"], ["--prune", "0.3"],
                                    ["--quantize", "q8_0", "--tensor-type", "*ffn_up*=none"]])
def test_a_run_into_gguf_equals_the_export_of_its_store(tmp_path, rng, dtype, stages):
    """Blocks written straight into the file give the bytes of a store's export (the
    two paths: this process's direct sink, and a cluster's work store)."""
    src = tmp_path / "in.gguf"
    if dtype == "bfloat16":
        import ml_dtypes

        dtype = ml_dtypes.bfloat16
    _llama_gguf(src, rng, dtype=dtype)
    direct, store, exported = tmp_path / "d.gguf", tmp_path / "s.zarr", tmp_path / "e.gguf"
    assert main(["compress", str(src), str(direct), *stages, "-q", "--memory-budget", "1MiB"]) == 0
    assert main(["compress", str(src), str(store), *stages, "--skip-1d", "-q"]) == 0
    assert main(["export", str(store), str(exported), "-q"]) == 0
    assert direct.read_bytes() == exported.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".d.gguf")) == [".d.gguf.streamcompress"]


def test_a_second_run_on_a_live_gguf_output_is_refused(tmp_path, rng, capsys):
    src = _llama_f32(tmp_path / "in.gguf", rng)
    out = tmp_path / "out.gguf"
    journal = tmp_path / ".out.gguf.work.json"
    p = subprocess.Popen(cli("compress", src, out, "--quantize", "q4_0", "--memory-budget", "1MiB"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.monotonic()
        while not journal.exists() and p.poll() is None and time.monotonic() - t0 < 60:
            time.sleep(0.002)
        assert p.poll() is None, "finished before a second run could start"
        capsys.readouterr()
        assert main(["compress", str(src), str(out), "--quantize", "q8_0", "--overwrite"]) == 1
        one_line_error(capsys, "in use by another streamcompress run")
        assert main(["compress", str(src), str(out), "--quantize", "q4_0", "--resume"]) == 1
        one_line_error(capsys, "in use by another streamcompress run")
    finally:
        p.wait()
    assert p.returncode == 0
    r = GGUFReader(str(out))
    assert r.tensors[0].tensor_type == T.Q4_0


def test_prune_masks_are_refused_for_a_gguf_output(tmp_path, rng, capsys):
    src = _llama_f32(tmp_path / "in.gguf", rng, n=1, shape=(32, 64))
    capsys.readouterr()
    assert main(["compress", str(src), str(tmp_path / "o.gguf"), "--prune", "0.5", "--save-masks"]) == 1
    one_line_error(capsys, "holds no prune masks")
    assert not list(tmp_path.glob("*o.gguf*"))


def test_what_gguf_cannot_hold_is_refused_before_any_work(tmp_path, rng, capsys):
    src = tmp_path / "in.gguf"
    _llama_gguf(src, rng)
    out = tmp_path / "o.gguf"
    capsys.readouterr()
    assert main(["compress", str(src), str(out), "--quantize", "int8:channel"]) == 1
    one_line_error(capsys, "ggml's block types")
    assert not out.exists() and not list(tmp_path.glob(".o.gguf*.zarr"))
    # a store of a non-ggml scheme has no GGUF export either
    assert main(["compress", str(src), str(tmp_path / "c.zarr"), "--quantize", "int8:channel", "-q"]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "c.zarr"), str(out)]) == 1
    one_line_error(capsys, "has no GGUF form")
    assert not out.exists()


def test_overwrite_replaces_only_a_gguf_of_ours(tmp_path, rng, capsys):
    src = tmp_path / "in.gguf"
    _llama_gguf(src, rng)
    out = tmp_path / "o.gguf"
    assert main(["compress", str(src), str(out), "--quantize", "q8_0", "-q"]) == 0
    capsys.readouterr()
    assert main(["compress", str(src), str(out), "--quantize", "q4_0"]) == 1
    one_line_error(capsys, "--overwrite")
    assert main(["compress", str(src), str(out), "--quantize", "q4_0", "--overwrite", "-q"]) == 0
    assert GGUFReader(str(out)).tensors[0].tensor_type == T.Q4_0
    theirs = tmp_path / "theirs.gguf"
    shutil.copyfile(src, theirs)  # a user's file (no marker of ours beside it)
    capsys.readouterr()
    assert main(["compress", str(src), str(theirs), "--quantize", "q8_0", "--overwrite"]) == 1
    one_line_error(capsys, "")
    assert theirs.read_bytes() == src.read_bytes()
    os.utime(out, ns=(1, 1))  # ours, but changed since we wrote it: no longer ours
    capsys.readouterr()
    assert main(["compress", str(src), str(out), "--quantize", "q8_0", "--overwrite"]) == 1
    one_line_error(capsys, "")


@pytest.mark.parametrize("scheme", BLOCK_SCHEMES)
def test_a_gguf_output_reads_back_as_gguf_py_dequantizes_it_and_verifies(tmp_path, rng, scheme, capsys):
    """Block-type GGUF tensors are read (dequantized) as gguf-py reads them, so
    ``verify in.gguf out.gguf`` measures the error of the file itself."""
    src = tmp_path / "in.gguf"
    data = _llama_gguf(src, rng)
    out = tmp_path / "out.gguf"
    assert main(["compress", str(src), str(out), "--quantize", scheme, "-q"]) == 0
    assert main(["import", str(out), str(tmp_path / "back.zarr"), "-q"]) == 0
    import zarr

    g = zarr.open_group(str(tmp_path / "back.zarr"), mode="r")
    for t in GGUFReader(str(out)).tensors:
        want = Q.dequantize(np.asarray(t.data), t.tensor_type).reshape(data[t.name].shape)
        assert np.array_equal(g[t.name][...], want), t.name
    import json

    assert main(["compress", str(src), str(tmp_path / "c.zarr"), "--quantize", scheme, "--skip-1d", "-q"]) == 0
    totals = []
    for o in (out, tmp_path / "c.zarr"):
        capsys.readouterr()
        assert main(["verify", str(src), str(o), "--json"]) == 0
        totals.append(json.loads(capsys.readouterr().out)["total"])
    assert totals[0] == totals[1] and totals[0]["mse"] > 0  # the file's error is the store's


def test_a_split_gguf_export_is_named_and_keyed_as_gguf_split_and_reads_back(tmp_path, rng):
    src = tmp_path / "in.gguf"
    data = _llama_gguf(src, rng)
    store = tmp_path / "c.zarr"
    assert main(["compress", str(src), str(store), "--quantize", "q8_0", "--skip-1d", "-q"]) == 0
    one, parts = tmp_path / "one.gguf", tmp_path / "parts"
    assert main(["export", str(store), str(one), "-q"]) == 0
    assert main(["export", str(store), str(parts), "--format", "gguf", "--max-shard-size", "10KB", "-q"]) == 0
    files = sorted(parts.glob("*.gguf"))
    n = len(files)
    assert n > 2 and [f.name for f in files] == [f"model-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1)]
    whole = {t.name: t for t in GGUFReader(str(one)).tensors}
    seen = []
    for i, f in enumerate(files):
        fields = _fields(f)
        assert (fields["split.no"], fields["split.count"], fields["split.tensors.count"]) == (i, n, len(data))
        if i == 0:  # the model's key/values in the first part only
            assert {k: v for k, v in fields.items() if not k.startswith("split.")} == _fields(one)
        else:
            assert set(fields) == {"split.no", "split.count", "split.tensors.count"}
        for t in GGUFReader(str(f)).tensors:
            w = whole[t.name]
            assert t.tensor_type == w.tensor_type and np.array_equal(np.asarray(t.data), np.asarray(w.data))
            seen.append(t.name)
    assert seen == list(data)
    # the split model reads back whole (from its first part), and exports to the same single file
    assert main(["import", str(files[0]), str(tmp_path / "back.zarr"), "-q"]) == 0
    assert main(["export", str(tmp_path / "back.zarr"), str(tmp_path / "again.gguf"), "-q"]) == 0
    a = {t.name: np.asarray(t.data) for t in GGUFReader(str(tmp_path / "again.gguf")).tensors}
    assert list(a) == list(data)
    files[1].unlink()
    assert main(["info", str(files[0])]) == 1  # a part missing: refused


@pytest.mark.parametrize("scheme, observer", [("q4_1", "hqq"), ("q5_1", "hqq"), ("q4_0", "mse"), ("q5_1", "mse")])
def test_observed_blocks_in_a_gguf_are_what_gguf_py_dequantizes(tmp_path, rng, scheme, observer, capsys):
    """``--observer hqq`` (a _1 block's min) or ``mse`` (its range) changes the blocks
    (no longer llama.cpp's bytes), and gguf-py reads the file back to exactly the
    values the run measured, closer to the input than llama.cpp's own blocks."""
    x = _blocks_of_every_kind(rng)
    src = _f32_gguf(tmp_path / "in.gguf", {"w": x})
    out = tmp_path / "o.gguf"
    assert main(["compress", str(src), str(out), "--quantize", scheme, "--observer", observer, "-q"]) == 0
    (t,) = GGUFReader(str(out)).tensors
    got = Q.dequantize(np.asarray(t.data), t.tensor_type).reshape(x.shape)
    sim = sc.compress_model({"w": x}, sc.CompressionConfig((Quantize(scheme, True, observer=observer),)))
    assert np.array_equal(got, sim.compressed_tensors[0].data)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        ref = Q.quantize(x, getattr(T, scheme.upper()))
    assert not np.array_equal(np.asarray(t.data).reshape(-1), ref.reshape(-1))
    minmax = Q.dequantize(ref, getattr(T, scheme.upper())).reshape(x.shape)
    err = np.abs if observer == "hqq" else np.square  # (what each observer lowers)
    assert err(got - x).sum() < err(minmax - x).sum()
