#!/usr/bin/env python
"""How far a better scale can take symmetric int4 per group on the real all-MiniLM-L6-v2.

The weight error (sum of squares) of the 37 Linear matrices quantized to
int4 (codes -7..7, round half away from zero) with one scale per group,
relative to minmax's scale (absmax / 7), for three ways of choosing the scale:

- ``grid``: the MSE observer's (``--observer mse``): the best of 80 clipping
  factors ``1 - i/100``;
- ``grid + refine``: each candidate's scale refined twice by least squares
  (``s = <x, q> / <q, q>`` for its codes ``q``, codes taken again);
- ``grid then LS``: the grid's best, then 10 least-squares refinements.

In float64 numpy, whole groups at once (no streaming: a bound, not the tool).

    python scripts/observer_limit.py
"""

from __future__ import annotations

import glob
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

QMAX = 7


def _rha(t):
    return np.sign(t) * np.floor(np.abs(t) + 0.5)


def _codes(u, s):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(s == 0, 0, np.clip(_rha(u / s), -QMAX, QMAX))


def _err(u, s):
    return ((_codes(u, s) * s - u) ** 2).sum(axis=1, keepdims=True)


def _ls(u, s):
    q = _codes(u, s)
    qq = (q * q).sum(axis=1, keepdims=True)
    return np.where(qq > 0, (u * q).sum(axis=1, keepdims=True) / np.maximum(qq, 1e-30), s)


def errors(u: np.ndarray) -> dict[str, float]:
    amax = np.abs(u).max(axis=1, keepdims=True)
    base = float(_err(u, amax / QMAX).sum())
    best = np.full((u.shape[0], 1), np.inf)
    best_r = best.copy()
    s_best = amax / QMAX
    for i in range(80):
        s = (1 - i / 100) * amax / QMAX
        e = _err(u, s)
        take = e < best
        best, s_best = np.where(take, e, best), np.where(take, s, s_best)
        r = _ls(u, _ls(u, s))
        best_r = np.minimum(best_r, _err(u, r))
    s = s_best
    for _ in range(10):
        s = _ls(u, s)
    return {"grid": float(best.sum()) / base, "grid + refine": float(best_r.sum()) / base,
            "grid then LS": float(_err(u, s).sum()) / base}


def main() -> int:
    import quality
    from safetensors.numpy import load_file

    weights = {}
    for f in glob.glob(str(quality.minilm_dir() / "*.safetensors")):
        weights.update(load_file(f))
    mats = [v.astype(np.float64) for k, v in weights.items() if v.ndim == 2 and "embeddings" not in k]
    print(f"{len(mats)} matrices, {sum(m.size for m in mats)} weights; weight error relative to minmax's\n")
    print("| int4 group | grid (--observer mse) | grid + refine | grid then LS |")
    print("|---|---|---|---|")
    for g in (32, 128):
        e = errors(np.concatenate([m.reshape(-1, g) for m in mats]))
        print(f"| {g} | {e['grid']:.4f} | {e['grid + refine']:.4f} | {e['grid then LS']:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
