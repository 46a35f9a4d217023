"""Naive in-memory numpy implementation of the seed semantics (SEED_SEMANTICS.md).

Written from the spec, deliberately unlike the engine: whole tensors, sorting
(stable argsort) instead of histograms, Python-int LCG, ``np.cumsum`` for the
sequential float32 sums. Nothing here imports streamcompress.
"""

from __future__ import annotations

import math

import numpy as np

F32 = np.float32


class RefError(Exception):
    def __init__(self, kind, *args):
        super().__init__(kind, *args)
        self.kind = kind


def lcg_values(state: int, count: int) -> np.ndarray:
    out = np.empty(count, dtype=np.float32)
    for i in range(count):
        state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        out[i] = F32(F32(state >> 32) / F32(4294967296.0))
    return out


def element_scores(flat: np.ndarray, metric: str, seed: int) -> np.ndarray:
    if metric == "l1":
        return np.abs(flat)
    if metric in ("l2", "taylor"):
        return (flat * flat).astype(np.float32)
    return lcg_values(seed, flat.size)


def f32_floor(a, b) -> int:
    return int(math.floor(float(F32(F32(a) * F32(b)))))


def ref_prune(x: np.ndarray, sparsity, metric="l1", granularity="unstructured",
              min_nonzero=1, seed=0, name="t"):
    """Returns (pruned, mask) or raises RefError(kind)."""
    s = F32(sparsity)
    if not (0.0 <= s < 1.0):
        raise RefError("InvalidSparsity")
    x = np.asarray(x, dtype=np.float32)
    n = x.size
    if n == 0:
        raise RefError("EmptyTensor")
    out = x.copy().reshape(-1)
    mask = np.ones(n, dtype=np.float32)
    if granularity == "unstructured":
        scores = element_scores(out, metric, seed)
        k = f32_floor(sparsity, n)
        if min_nonzero > n:
            raise RefError("BelowMinNonzero")
        k = min(k, max(n - min_nonzero, 0))
        if k == 0:
            return out.reshape(x.shape), mask.reshape(x.shape)
        order = np.argsort(scores, kind="stable")
        out[order[:k]] = 0.0
        mask[order[:k]] = 0.0
        return out.reshape(x.shape), mask.reshape(x.shape)
    if x.ndim != 2:
        raise RefError("NotTwoDimensional")
    rows, cols = x.shape
    by_rows = granularity == "rows"
    units, unit_size = (rows, cols) if by_rows else (cols, rows)
    mat = x if by_rows else x.T
    if metric == "random":
        scores = np.array([lcg_values((seed + u) % (1 << 64), 1)[0] for u in range(units)],
                          dtype=np.float32)
    elif metric == "l1":
        scores = np.cumsum(np.abs(mat), axis=1, dtype=np.float32)[:, -1]
    else:
        scores = np.sqrt(np.cumsum((mat * mat).astype(np.float32), axis=1, dtype=np.float32)[:, -1])
    k = f32_floor(sparsity, units)
    if min_nonzero > n:
        raise RefError("BelowMinNonzero")
    k = min(k, max(units - math.ceil(min_nonzero / unit_size), 0))
    out = out.reshape(rows, cols)
    mask = mask.reshape(rows, cols)
    if k:
        chosen = np.argsort(scores, kind="stable")[:k]
        if by_rows:
            out[chosen, :] = 0.0
            mask[chosen, :] = 0.0
        else:
            out[:, chosen] = 0.0
            mask[:, chosen] = 0.0
    return out, mask


def round_half_away(t: np.ndarray) -> np.ndarray:
    t = t.astype(np.float64)
    return np.where(t < 0, -np.floor(-t + 0.5), np.floor(t + 0.5))


def ref_quantize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.size == 0:
        return x.copy()
    m = F32(np.max(np.abs(x)))
    if m == 0:
        return x.copy()
    scale = F32(m / F32(127.0))
    q = np.clip(round_half_away((x / scale).astype(np.float32)), -127, 127).astype(np.int8)
    return (q.astype(np.float32) * scale).astype(np.float32)


def ref_clip(x: np.ndarray, p) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = x.size
    if n == 0:
        return x.copy()
    srt = np.sort(np.abs(x).reshape(-1))
    idx = min(max(math.ceil(float(F32(F32(p) * F32(n)))) - 1, 0), n - 1)
    thr = srt[idx]
    out = x.copy()
    out[np.abs(out) <= thr] = 0.0
    return out


def is_embedding(name: str) -> bool:
    low = name.lower()
    return low.startswith("embed") or low.startswith("token")


def ref_compress(tensors, stages, skip_embedding=False):
    """tensors: list of (name, array); stages: list of tuples
    ("prune", kwargs) / ("quantize_int8",) / ("clip", p).

    Returns (outputs list, stage stats list of dicts) or raises RefError,
    following the seed's loop: stage-major, tensors in order.
    """
    if not tensors:
        raise RefError("EmptyModel")
    if not stages:
        raise RefError("EmptyPipeline")
    for st in stages:
        if st[0] == "clip" and not (0.0 < F32(st[1]) <= 1.0):
            raise RefError("InvalidPercentile")
    work = [(n, np.asarray(a, dtype=np.float32).copy()) for n, a in tensors]
    all_stats = []
    for st in stages:
        d = dict(stage_name=st[0], tensors_processed=0, tensors_skipped=0, params_before=0,
                 nonzero_params_after=0, memory_before_bytes=0, memory_after_bytes=0)
        for i, (name, arr) in enumerate(work):
            tb = 4 * arr.size
            d["params_before"] += arr.size
            d["memory_before_bytes"] += tb
            if skip_embedding and is_embedding(name):
                d["tensors_skipped"] += 1
                d["nonzero_params_after"] += int(np.count_nonzero(arr))
                d["memory_after_bytes"] += tb
                continue
            d["tensors_processed"] += 1
            if st[0] == "prune":
                arr, _ = ref_prune(arr, name=name, **st[1])
                d["memory_after_bytes"] += tb
            elif st[0] == "quantize_int8":
                arr = ref_quantize(arr)
                d["memory_after_bytes"] += int(math.floor(float(F32(F32(tb) * F32(0.25))) + 0.5))
            else:
                arr = ref_clip(arr, st[1])
                d["memory_after_bytes"] += tb
            d["nonzero_params_after"] += int(np.count_nonzero(arr))
            work[i] = (name, arr)
        all_stats.append(d)
    return work, all_stats


def ref_ratio(a: int, b: int) -> float:
    return float(F32(F32(a) / F32(b)))


def ref_summary(work, stats) -> str:
    """The summary text as SEED_SEMANTICS.md prints it."""
    def sp(params, nonzero):
        return 0.0 if params == 0 else ref_ratio(max(params - nonzero, 0), params)

    def ratio(before, after):
        return 1.0 if after == 0 else ref_ratio(before, after)

    lines = [f"=== Compression Summary ({len(stats)} stage(s)) ==="]
    for i, s in enumerate(stats):
        lines.append(
            "  Stage %d: [%s] processed=%d skipped=%d sparsity=%.4f ratio=%.3fx memory=%dB->%dB"
            % (i + 1, s["stage_name"], s["tensors_processed"], s["tensors_skipped"],
               sp(s["params_before"], s["nonzero_params_after"]),
               ratio(s["memory_before_bytes"], s["memory_after_bytes"]),
               s["memory_before_bytes"], s["memory_after_bytes"]))
    total = sum(a.size for _, a in work)
    nz = sum(int(np.count_nonzero(a)) for _, a in work)
    before = stats[0]["memory_before_bytes"]
    after = stats[-1]["memory_after_bytes"]
    lines.append(
        "  Overall: tensors=%d total_params=%d nonzero=%d sparsity=%.4f compression_ratio=%.3fx "
        "memory=%dB->%dB" % (len(work), total, nz, sp(total, nz), ratio(before, after), before, after))
    return "\n".join(lines)


def ref_estimate(tensors, stages, skip_embedding=False) -> int:
    if not tensors or not stages:
        return 0
    total = sum(4 * np.asarray(a).size for _, a in tensors)
    emb = sum(4 * np.asarray(a).size for n, a in tensors if skip_embedding and is_embedding(n))
    size = float(total - emb)
    for st in stages:
        if st[0] == "quantize_int8":
            size *= 0.25
    return emb + int(math.floor(size + 0.5))


# -- real quantization schemes (FORMAT.md), naive ---------------------------
SCHEMES = {"int8": (True, -127, 127), "int8_asym": (False, -128, 127), "int4": (True, -7, 7),
           "int4_asym": (False, 0, 15), "q8_0": (True, -127, 127)}


def ref_units(x, granularity, group):
    """List of (index into x, unit values) in unit order."""
    x = np.asarray(x, np.float32)
    if granularity == "group" and x.ndim >= 1:
        L = x.shape[-1]
        rows = x.reshape(-1, L)
        out = []
        for r in range(rows.shape[0]):
            for j in range(0, L, group):
                out.append(((r, slice(j, min(j + group, L))), rows[r, j:j + group]))
        return out
    if granularity == "channel" and x.ndim >= 2:
        rows = x.reshape(x.shape[0], -1)
        return [((r, slice(None)), rows[r]) for r in range(rows.shape[0])]
    return [((0, slice(None)), x.reshape(1, -1)[0])]


def _ref_unit(u, name, scale_dtype, p=np.float32(1)):
    """(codes, scale used, zero point, dequantized, scale judged) of one unit, its range shrunk by ``p``."""
    sym, qmin, qmax = SCHEMES[name]
    if name == "q8_0":
        d = np.float32(np.abs(u).max() / np.float32(127))
        idv = np.float32(0) if d == 0 else np.float32(np.float32(1) / d)
        q = round_half_away((u * idv).astype(np.float32))
        used = np.float32(np.float16(d))
        z = 0
        s = d
    elif sym:
        s = np.float32(np.float32(np.float32(np.abs(u).max()) * p) / np.float32(qmax))
        used = np.float32(s.astype(scale_dtype))
        q = np.zeros(u.shape) if used == 0 else round_half_away((u / used).astype(np.float32))
        z = 0
    else:
        lo = min(np.float32(np.float32(min(np.float32(u.min()), np.float32(0))) * p), np.float32(0))
        hi = max(np.float32(np.float32(max(np.float32(u.max()), np.float32(0))) * p), np.float32(0))
        s = np.float32((hi - lo) / np.float32(qmax - qmin))
        used = np.float32(s.astype(scale_dtype))
        z = 0 if used == 0 else int(np.clip(round_half_away(np.array([np.float32(qmin) - np.float32(lo / used)]))[0], qmin, qmax))
        q = np.zeros(u.shape) if used == 0 else round_half_away((u / used).astype(np.float32))
    q = np.clip(q + z, qmin, qmax).astype(np.int64)
    return q, used, z, ((q - z).astype(np.float32) * used).astype(np.float32), s


def ref_mse_shrink(u, name):
    """The MSE observer's shrink factor of one unit: the first ``p = 1 - i/100``
    (``i < 80``) of least squared error, judged with float32 scales, the error
    summed in float64 in element order."""
    best, bp = np.inf, np.float32(1)
    for i in range(80):
        p = np.float32(1.0 - i / 100.0)
        _, _, _, deq, _ = _ref_unit(u, name, "float32", p)
        err = np.cumsum((deq.astype(np.float64) - u.astype(np.float64)) ** 2)[-1]
        if err < best:
            best, bp = err, p
    return bp


def ref_quantize_scheme(x, name, granularity="tensor", group=32, scale_dtype="float32", observer="minmax"):
    """Returns (codes int array shaped like x, scales 1-D per unit (stored dtype), zps 1-D, dequantized)."""
    x = np.asarray(x, np.float32)
    if granularity == "group" and x.ndim >= 1:
        work = x.reshape(-1, x.shape[-1])
    elif granularity == "channel" and x.ndim >= 2:
        work = x.reshape(x.shape[0], -1)
    else:
        work = x.reshape(1, -1)
    codes = np.zeros(work.shape, np.int64)
    deq = np.zeros(work.shape, np.float32)
    scales, zps = [], []
    for (r, sl), u in ref_units(x, granularity, group):
        p = ref_mse_shrink(u, name) if observer == "mse" and granularity in ("channel", "group") else np.float32(1)
        q, used, z, d, _ = _ref_unit(u, name, scale_dtype, p)
        codes[r, sl] = q
        deq[r, sl] = d
        scales.append(used)
        zps.append(z)
    return codes.reshape(x.shape), np.array(scales, np.float32), np.array(zps, np.int64), deq.reshape(x.shape)


def ref_global_prune(tensors, sparsity, metric="l1", min_nonzero=1):
    """One stable sort over all tensors' scores, concatenated in order."""
    from fractions import Fraction

    flat = [np.asarray(a, np.float32).reshape(-1) for _, a in tensors]
    scores = np.concatenate([element_scores(f, metric, 0) for f in flat]) if flat else np.zeros(0)
    total = scores.size
    k = min(math.floor(Fraction(repr(float(sparsity))) * total), total - min_nonzero)
    cut = np.zeros(total, bool)
    cut[np.argsort(scores, kind="stable")[:k]] = True
    out, pos = [], 0
    for (name, a), f in zip(tensors, flat):
        o = f.copy()
        o[cut[pos:pos + f.size]] = 0
        out.append((name, o.reshape(np.shape(a))))
        pos += f.size
    return out, k


def ref_prune_nm(x, n, m, metric="l1"):
    x = np.asarray(x, np.float32)
    g = x.reshape(-1, m).copy()
    s = np.abs(g) if metric == "l1" else (g * g).astype(np.float32)
    order = np.argsort(s, axis=1, kind="stable")[:, : m - n]
    np.put_along_axis(g, order, 0.0, axis=1)
    return g.reshape(x.shape)


def _f16(v):
    return np.asarray(v, np.float32).astype(np.float16).astype(np.float32)


def ref_hqq_unit(u, d, m, top, lp=0.7, beta=10.0, kappa=1.01, iters=20):
    """HQQ's min for one unit (as ``kernels.observe``: float64, sums in element
    order, each unit stopping at its first step that does not lower its error,
    keeping the best min seen)."""
    u = np.asarray(u, np.float64)
    d, m = float(d), float(m)
    if d == 0 or u.size == 0:
        return m
    best, bm = math.inf, m
    for _ in range(iters):
        q = np.clip(round_half_away((u - m) / d), 0, top)
        e = u - (q * d + m)
        a = np.abs(e)
        t = np.zeros_like(a)
        nz = a > 0
        t[nz] = a[nz] - (1.0 / beta) * a[nz] ** (lp - 1.0)
        we = np.sign(e) * np.maximum(t, 0)
        err = acc = 0.0
        for i in range(u.size):  # (in element order, as the kernel sums)
            err += a[i]
            acc += (u[i] - we[i]) - q[i] * d
        if not err < best:
            break
        best, bm = err, m
        m = acc / u.size
        beta *= kappa
    return bm


def ref_hqq_ggml(x, bits):
    """``(codes, d, min, dequantized)`` of ggml's q4_1 / q5_1 (groups of 32 along
    rows) with HQQ's min: ggml's ``d = (max - min) / top`` and min, both float16,
    then the min HQQ moves (float16), and codes to nearest for the stored values."""
    top = (1 << bits) - 1
    x = np.asarray(x, np.float32)
    codes = np.zeros(x.shape, np.uint8)
    deq = np.zeros(x.shape, np.float32)
    ds, ms = [], []
    for at, u in ref_units(x, "group", 32):
        d = _f16(np.float32(np.float32(u.max() - u.min()) / np.float32(top)))
        m = _f16(np.float32(ref_hqq_unit(u, d, _f16(u.min()), top)))
        t = ((u - m).astype(np.float32) / (d if d else np.float32(1))).astype(np.float32)
        q = np.zeros(u.size) if d == 0 else np.clip(round_half_away(t), 0, top)
        rows = codes.reshape(-1, x.shape[-1])
        rows[at] = q.astype(np.uint8)
        deq.reshape(-1, x.shape[-1])[at] = (q.astype(np.float32) * d).astype(np.float32) + m
        ds.append(d)
        ms.append(m)
    return codes, np.array(ds, np.float32), np.array(ms, np.float32), deq


def _ggml_store(u, p, bits, with_min):
    """``(codes, d16, min16, values)`` of one unit as ggml's kind stores it with its
    range times ``p`` (ggml's rule: float32 ``1 / d`` for the codes, float16 ``d``
    and min for the values; codes clamped to ``0..top``)."""
    half = 1 << (bits - 1)
    top = np.float32(2 * half - 1)
    u = np.asarray(u, np.float32)
    f32 = np.float32
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        if with_min:
            lo = f32(u.min() * f32(p))
            d = f32(f32(f32(u.max() * f32(p)) - lo) / top)
            iv = f32(1) / d if d != 0 else f32(0)
            t = ((u - lo).astype(np.float32) * iv).astype(np.float32) + f32(0.5)
        else:
            m = u[np.argmax(np.abs(u))]
            lo = f32(0)
            d = f32(f32(m * f32(p)) / f32(-half))
            iv = f32(1) / d if d != 0 else f32(0)
            t = (u * iv).astype(np.float32) + f32(half + 0.5)
        q = np.where(np.isfinite(t), np.clip(np.trunc(t), 0, top), 0).astype(np.uint8)
    d16, m16 = _f16(d), _f16(lo)
    if with_min:
        vals = ((q.astype(np.float32) * d16).astype(np.float32) + m16).astype(np.float32)
    else:
        vals = ((q.astype(np.float32) - f32(half)) * d16).astype(np.float32)
    return q, d16, m16, vals


def ref_mse_ggml(x, bits, with_min, steps=80):
    """``(codes, d, min, dequantized)`` of q4_0 / q5_0 / q4_1 / q5_1 with the MSE
    observer: per unit of 32 along rows, the first ``p = 1 - i / 100`` of least
    squared error (float64, element order) as stored."""
    x = np.asarray(x, np.float32)
    L = x.shape[-1]
    codes = np.zeros(x.shape, np.uint8).reshape(-1, L)
    deq = np.zeros(x.shape, np.float32).reshape(-1, L)
    ds, ms = [], []
    for at, u in ref_units(x, "group", 32):
        best, pick = math.inf, None
        for i in range(steps):
            got = _ggml_store(u, np.float32(1.0 - i / 100.0), bits, with_min)
            dd = got[3].astype(np.float64) - u.astype(np.float64)
            e = 0.0
            for v in dd:
                e += v * v
            if e < best:
                best, pick = e, got
        codes[at], ds_, ms_, deq[at] = pick[0], pick[1], pick[2], pick[3]
        ds.append(ds_)
        ms.append(ms_)
    return codes.reshape(x.shape), np.array(ds, np.float32), np.array(ms, np.float32), deq.reshape(x.shape)


def ref_diff_stats(before, after, tile=1 << 16, lanes=32):
    """``(nonzero_after, sum_sq_err, max_abs_err, sum_sq_signal)`` as the engine
    sums them: per tile of ``tile`` elements, element ``i`` into lane
    ``i % lanes`` (each lane a sequential float64 ``np.cumsum``), the lanes added
    pairwise (lane ``k`` and ``k + h`` for halving ``h``), then the tiles in order.
    A tile whose sums are not finite is summed again without its non-finite
    differences and signals."""
    a_all = np.asarray(after, np.float32).reshape(-1).astype(np.float64)
    b_all = np.asarray(before, np.float32).reshape(-1).astype(np.float64)

    def lane_sums(v):
        out = [float(np.cumsum(v[j::lanes])[-1]) if v[j::lanes].size else 0.0 for j in range(lanes)]
        h = lanes // 2
        while h:
            out = [out[k] + out[k + h] for k in range(h)]
            h //= 2
        return out[0]

    nz, sse, mx, sig = 0, 0.0, 0.0, 0.0
    for lo in range(0, max(a_all.size, 1), tile):
        a, b = a_all[lo:lo + tile], b_all[lo:lo + tile]
        with np.errstate(invalid="ignore", over="ignore"):
            d = a - b
            e, s = lane_sums(d * d), lane_sums(b * b)
            if not (math.isfinite(e) and math.isfinite(s)):
                fd, fb = np.isfinite(d), np.isfinite(b)
                e, s = lane_sums(np.where(fd, d, 0) ** 2), lane_sums(np.where(fb, b, 0) ** 2)
                d = np.where(fd, d, 0)
        nz += int(np.count_nonzero(a))
        sse += e
        sig += s
        mx = max(mx, float(np.abs(d[~np.isnan(d)]).max()) if np.any(~np.isnan(d)) else 0.0)
    return nz, sse, mx, sig
