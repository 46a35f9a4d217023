"""streamcompress against llama.cpp's own quantizer (``llama_model_quantize``, the
function behind ``llama-quantize``), from PyPI ``llama-cpp-python`` (built from
source, about 7 minutes on 2 cores; not a test dependency).

For a llama-architecture F32 GGUF made with gguf-py:

1. **Bytes**: ``streamcompress compress in.gguf out.gguf --quantize T`` against
   llama.cpp's quantizer with ``--pure`` (every matrix type T, 1-D tensors F32):
   every tensor's type, shape and bytes, and every key/value.
2. **Logits**: llama.cpp loads both files and evaluates the same tokens.
3. **Speed** (``--size``): the same F32 GGUF quantized to Q8_0 by both, in
   interleaved pairs, each ending with its output on disk (ours fsyncs; llama.cpp's
   run is followed by ``sync``); median wall time and peak RSS of each process.
   With ``--store``, each pair is a triple: ours also quantizes the same
   weights from a float32 safetensors file into a Zarr store (``--codec none``,
   as llama.cpp writes its blocks uncompressed).

    python scripts/ggml_peer.py                      # 1 and 2, for q8_0 and q4_0
    python scripts/ggml_peer.py --size 1GB 4GB --reps 3  # and 3
    python scripts/ggml_peer.py --size 1GB 4GB --reps 3 --store

``scripts/bench.py --gguf-peer`` runs 3 beside its own benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def make_llama(path: Path, hidden: int, layers: int, ffn: int, vocab: int, seed: int = 0) -> int:
    """A llama GGUF (F32) that llama.cpp loads: hparams, an SPM vocabulary, every tensor of a block."""
    import gguf

    rng = np.random.default_rng(seed)
    heads = max(1, hidden // 64)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("peer-llama")
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_rope_dimension_count(hidden // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)
    w.add_tokenizer_model("llama")
    toks = [b"<unk>", b"<s>", b"</s>"] + [f"\xe2\x96\x81t{i}".encode() for i in range(vocab - 3)]
    w.add_token_list(toks)
    w.add_token_scores([0.0] * 3 + [-float(i) for i in range(vocab - 3)])
    w.add_token_types([2, 3, 3] + [1] * (vocab - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    n = 0

    def t(name, shape):
        nonlocal n
        a = (rng.standard_normal(shape) * (0.02 if len(shape) > 1 else 1.0)).astype(np.float32)
        if len(shape) == 1:
            a = 1.0 + 0.1 * a
        w.add_tensor(name, a)
        n += a.nbytes

    t("token_embd.weight", (vocab, hidden))
    for i in range(layers):
        t(f"blk.{i}.attn_norm.weight", (hidden,))
        for k in ("q", "k", "v", "output"):
            t(f"blk.{i}.attn_{k}.weight", (hidden, hidden))
        t(f"blk.{i}.ffn_norm.weight", (hidden,))
        t(f"blk.{i}.ffn_gate.weight", (ffn, hidden))
        t(f"blk.{i}.ffn_up.weight", (ffn, hidden))
        t(f"blk.{i}.ffn_down.weight", (hidden, ffn))
    t("output_norm.weight", (hidden,))
    t("output.weight", (vocab, hidden))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return n


_LLAMA_QUANTIZE = """
import sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
           "q4_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1, "q5_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_0,
           "q5_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_1}[sys.argv[3]]
p.pure = True
p.nthread = 2
rc = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p)
sys.exit(rc)
"""


def llama_quantize(src: Path, dst: Path, qtype: str) -> list[str]:
    return [sys.executable, "-c", _LLAMA_QUANTIZE, str(src), str(dst), qtype]


def ours(src: Path, dst: Path, qtype: str, *flags: str) -> list[str]:
    return [sys.executable, "-m", "streamcompress", "compress", str(src), str(dst), "--quantize", qtype, "-q",
            "--overwrite", *flags]


def as_safetensors(src: Path, dst: Path) -> None:
    """The F32 GGUF's tensors (names and row-major shapes as gguf-py reads them)
    as one float32 safetensors file, copied tensor by tensor."""
    import gguf

    ts = gguf.GGUFReader(str(src)).tensors
    header, off = {}, 0
    for t in ts:
        n = int(np.asarray(t.data).nbytes)
        header[t.name] = {"dtype": "F32", "shape": list(np.asarray(t.data).shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(dst, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for t in ts:
            f.write(np.ascontiguousarray(t.data, dtype=np.float32).tobytes())


def compare(a: Path, b: Path) -> dict:
    import gguf

    ra, rb = gguf.GGUFReader(str(a)), gguf.GGUFReader(str(b))
    ta, tb = {t.name: t for t in ra.tensors}, {t.name: t for t in rb.tensors}
    diff = [n for n in ta if n not in tb or ta[n].tensor_type != tb[n].tensor_type
            or list(ta[n].shape) != list(tb[n].shape)
            or bytes(np.asarray(ta[n].data).tobytes()) != bytes(np.asarray(tb[n].data).tobytes())]
    fa = {f.name: f.contents() for f in ra.fields.values() if not f.name.startswith("GGUF.")}
    fb = {f.name: f.contents() for f in rb.fields.values() if not f.name.startswith("GGUF.")}
    kv = sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))
    return {"tensors": len(ta), "tensors_differing": diff, "keys_differing": kv}


_LOGITS = """
import sys, json, llama_cpp, numpy as np
m = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, logits_all=True, verbose=False, n_threads=2)
m.eval([1, 5, 9, 17, 33, 4])
print(json.dumps(np.asarray(m.scores[:6], dtype=np.float32).tobytes().hex()))
"""


def logits(path: Path) -> np.ndarray:
    out = subprocess.run([sys.executable, "-c", _LOGITS, str(path)], capture_output=True, text=True, check=True)
    return np.frombuffer(bytes.fromhex(json.loads(out.stdout.strip().splitlines()[-1])), np.float32)


def timed(cmd: list[str], then_sync: bool) -> tuple[float, float]:
    """Wall seconds (with a ``sync`` after, when asked) and peak RSS (MiB) of one run."""
    t0 = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{cmd[:4]} failed: {out.stderr[-500:]}")
    if then_sync:
        os.sync()
    wall = time.perf_counter() - t0
    return wall, int(out.stderr.strip().splitlines()[-1]) / 1024


def compile_bytecode() -> None:
    """Our modules' bytecode, as ``pip install`` writes it (llama-cpp-python's is;
    an editable install under ``PYTHONDONTWRITEBYTECODE`` compiles every module
    from source in every run: 0.2 s of start-up here)."""
    import compileall

    import streamcompress

    compileall.compile_dir(str(Path(streamcompress.__file__).parent), quiet=1)


def speed(size: str, reps: int, work: Path, qtype: str = "q8_0", store: bool = False) -> dict:
    """F32 GGUF of about ``size`` to ``qtype`` by both, interleaved ``reps`` pairs:
    median wall seconds, peak RSS, and whether the outputs' tensors are identical.
    ``store``: ours also from the same weights as safetensors into a Zarr store."""
    from streamcompress.engine import parse_size

    target = parse_size(size)
    hidden, ffn, vocab = 2048, 5632, 32000
    per_layer = 4 * (4 * hidden * hidden + 3 * hidden * ffn)
    layers = max(1, round((target - 2 * vocab * hidden * 4) / per_layer))
    big = work / f"big-f32-{size}.gguf"
    if not big.exists():
        make_llama(big, hidden=hidden, layers=layers, ffn=ffn, vocab=vocab)
    st = work / f"big-f32-{size}.safetensors"
    if store and not st.exists():
        as_safetensors(big, st)
    for f in (big, st) if store else (big,):
        subprocess.run(["cat", str(f)], stdout=subprocess.DEVNULL, check=True)  # (all read from the page cache)
    rows: dict[str, list[tuple[float, float]]] = {"streamcompress": [], "llama.cpp": []}
    if store:
        rows[STORE] = []
    for _ in range(reps):  # interleaved, each run starting with no output (deleting one is not timed)
        (work / "o-ours.gguf").unlink(missing_ok=True)
        os.sync()
        rows["streamcompress"].append(timed(ours(big, work / "o-ours.gguf", qtype), then_sync=False))
        (work / "o-llama.gguf").unlink(missing_ok=True)
        os.sync()
        rows["llama.cpp"].append(timed(llama_quantize(big, work / "o-llama.gguf", qtype), then_sync=True))
        if store:
            shutil.rmtree(work / "o-ours.zarr", ignore_errors=True)
            os.sync()
            rows[STORE].append(timed(ours(st, work / "o-ours.zarr", qtype, "--codec", "none"), then_sync=False))
    same = compare(work / "o-llama.gguf", work / "o-ours.gguf")
    med = {k: (statistics.median(w for w, _ in v), max(m for _, m in v)) for k, v in rows.items()}
    out = {"size": size, "input_bytes": big.stat().st_size, "layers": layers, "type": qtype,
           "median_s": {k: v[0] for k, v in med.items()}, "peak_rss_mib": {k: v[1] for k, v in med.items()},
           "ours_speed_vs_llama_cpp": med["llama.cpp"][0] / med["streamcompress"][0],
           "tensors_identical": not same["tensors_differing"], "keys_differing": same["keys_differing"]}
    if store:
        out["ours_store_speed_vs_llama_cpp"] = med["llama.cpp"][0] / med[STORE][0]
    for f in (work / "o-ours.gguf", work / "o-llama.gguf", big, st):
        f.unlink(missing_ok=True)
    shutil.rmtree(work / "o-ours.zarr", ignore_errors=True)
    return out


#: the row of ``speed(store=True)``'s third command
STORE = "streamcompress safetensors -> Zarr"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", nargs="+", default=["q8_0", "q4_0"])
    ap.add_argument("--size", nargs="*", default=None, help="also time Q8_0 on models of about these sizes (1GB 4GB)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--store", action="store_true",
                    help="with --size: also time ours from the same weights as safetensors into a Zarr store")
    ap.add_argument("--dir", default=None, help="working directory (default: a temporary one)")
    args = ap.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="ggml-peer-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "tiny-f32.gguf"
    make_llama(src, hidden=128, layers=2, ffn=352, vocab=512)
    report: dict = {}
    for q in args.types:
        a, b = work / f"llama-{q}.gguf", work / f"ours-{q}.gguf"
        subprocess.run(llama_quantize(src, a, q), check=True, capture_output=True)
        subprocess.run(ours(src, b, q), check=True)
        c = compare(a, b)
        la, lb = logits(a), logits(b)
        c["logits_equal"] = bool(np.array_equal(la, lb))
        c["logits_max_abs_diff"] = float(np.max(np.abs(la - lb)))
        report[q] = c
        print(q, json.dumps(c))
    if args.size:
        compile_bytecode()
    for size in args.size or []:
        report[f"speed {size}"] = speed(size, args.reps, work, store=args.store)
        print(json.dumps(report[f"speed {size}"], indent=2))
    (work / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
