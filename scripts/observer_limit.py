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

Then, for asymmetric int4 per group (codes 0..15, minmax's scale and zero point
as ``int4_asym`` makes them), the weight error of HQQ's zero point (its published
iteration: lp norm 0.7, beta 10, kappa 1.01, 20 steps, each group stopping on
its own) kept as a float, rounded to an integer at the end (what ``int4_asym``
can store), or rounded at every step: why ``--observer hqq`` is for the ggml
kinds with a float min (q4_1, q5_1) and not for ``int4_asym``.

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


def _asym_err(u, s, z):
    q = np.clip(np.round(u / s + z), 0, 15)
    return float((((q - z) * s - u) ** 2).sum())


def _hqq_zero(u, s, z, round_each, lp=0.7, beta=10.0, kappa=1.01, iters=20):
    z = z.copy()
    best, zbest = np.full(z.shape, np.inf), z.copy()
    live = np.ones(z.shape, bool)
    for _ in range(iters):
        zz = np.round(z) if round_each else z
        q = np.clip(np.round(u / s + zz), 0, 15)
        e = u - (q - zz) * s
        cur = np.abs(e).mean(axis=1, keepdims=True)
        live &= cur < best
        best, zbest = np.where(live, cur, best), np.where(live, z, zbest)
        a = np.abs(e)
        we = np.sign(e) * np.maximum(a - np.power(a + 1e-30, lp - 1) / beta, 0)
        z = np.where(live, np.mean(q - (u - we) / s, axis=1, keepdims=True), z)
        beta *= kappa
    return zbest


def hqq_zero_points(u: np.ndarray) -> dict[str, float]:
    lo, hi = np.minimum(u.min(axis=1, keepdims=True), 0), np.maximum(u.max(axis=1, keepdims=True), 0)
    s = np.where(hi > lo, (hi - lo) / 15, 1.0)
    z = np.round(-lo / s)
    base = _asym_err(u, s, z)
    zf = _hqq_zero(u, s, z, False)
    return {"float": _asym_err(u, s, zf) / base,
            "rounded at the end": _asym_err(u, s, np.clip(np.round(zf), 0, 15)) / base,
            "rounded every step": _asym_err(u, s, np.clip(np.round(_hqq_zero(u, s, z, True)), 0, 15)) / base}


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
    print("\n| int4_asym group | HQQ zero point, float | rounded at the end | rounded every step |")
    print("|---|---|---|---|")
    for g in (32, 128):
        e = hqq_zero_points(np.concatenate([m.reshape(-1, g) for m in mats]))
        print(f"| {g} | {e['float']:.4f} | {e['rounded at the end']:.4f} | {e['rounded every step']:.4f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
