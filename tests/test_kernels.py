"""Every kernel against a slow, obviously correct numpy reference."""

import numpy as np
import pytest

from reference import element_scores, lcg_values, ref_diff_stats, round_half_away
from streamcompress import kernels as K


def data(rng, n, ties=False):
    if ties:
        return rng.integers(-4, 5, n).astype(np.float32)
    return rng.standard_normal(n).astype(np.float32) * np.float32(3)


@pytest.mark.parametrize("n", [1, 5, 4096, 70001])
def test_hist16_coarse_and_fine(rng, n):
    x = data(rng, n)
    keys = x.view(np.uint32) & np.uint32(0x7FFFFFFF)
    coarse = K.hist16(x.view(np.uint32))
    assert (coarse == np.bincount(keys >> 16, minlength=1 << 16)).all()
    hi = int(keys[0] >> 16)
    fine = K.hist16(x.view(np.uint32), hi)
    sel = keys[(keys >> 16) == hi] & 0xFFFF
    assert (fine == np.bincount(sel, minlength=1 << 16)).all()


@pytest.mark.parametrize("ties", [False, True])
def test_two_pass_selection_finds_exact_kth(rng, ties):
    x = data(rng, 50000, ties)
    keys = x.view(np.uint32) & np.uint32(0x7FFFFFFF)
    srt = np.sort(keys)
    for k in [1, 2, 777, 25000, 50000]:
        hi, below = K.locate_kth(K.hist16(x.view(np.uint32)), k)
        lo, below2 = K.locate_kth(K.hist16(x.view(np.uint32), hi), k - below)
        assert (hi << 16 | lo) == srt[k - 1]
        assert below + below2 == int((keys < srt[k - 1]).sum())


@pytest.mark.parametrize("n", [1, 63, 64, 4096, 70001])
def test_band_histogram_counts_below_and_histograms_the_band(rng, n):
    """Keys below the band counted, the band's low bits histogrammed; keys in and
    out of the band at every place of a 64-key group and of the tail."""
    x = data(rng, n)
    keys = x.view(np.uint32) & np.uint32(0x7FFFFFFF)
    lo = max(0, int(np.median(keys >> 16)) - 2)
    band = K.BandHistogram(lo, 5)
    band.add(x.view(np.uint32))
    assert band.below() == int(((keys >> 16) < lo).sum())
    win = band.window()
    for j in range(5):
        sel = keys[(keys >> 16) == lo + j] & 0xFFFF
        assert (win[j] == np.bincount(sel, minlength=1 << 16)).all()


def test_band_histogram_edges_of_the_key_range():
    """A band at bin 0 and one ending at the top bin (NaN's): every key counted once."""
    keys = np.array([0, 1, 0xFFFF, 0x10000, 0x7F800000, 0x7FC00000, 0x7FFFFFFF, 0xFFFFFFFF] * 20, np.uint32)
    low = K.BandHistogram(0, 1)
    assert low.add(keys) == 80  # inf and the NaNs, sign bit or not
    assert low.below() == 0 and low.window()[0].sum() == 60
    top = K.BandHistogram(0x7FFF - 2, 3)
    top.add(keys)
    assert top.below() == 120 and top.window()[2, 0xFFFF] == 40  # 0x7fffffff, with or without the sign
    with pytest.raises(ValueError):
        K.BandHistogram(0x7FFF, 2)


@pytest.mark.parametrize("order", ["iid", "sorted", "reversed"])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("block", [20000, 60000])
def test_selector_one_pass_when_the_first_block_guesses_right(rng, order, ties, block):
    """The selector's band (guessed from the first block) gives the same exact
    k-th key as two passes; sorted data makes the guess miss and the two passes
    run after it. A block small enough to be its own sample always takes one pass."""
    from streamcompress.stages.base import KthSelector

    x = np.abs(data(rng, 60000, ties))
    if order != "iid":
        x = np.sort(x)[:: 1 if order == "sorted" else -1].copy()
    keys = x.view(np.uint32)
    srt = np.sort(keys)
    for k in [1, 900, 30000, 60000]:
        sel = KthSelector(k, keys.size)
        p = 0
        while p < sel.n_passes:
            for b in range(0, keys.size, block):
                sel.observe(p, keys[b:b + block])
            sel.end_pass(p)
            p += 1
        assert sel.threshold == srt[k - 1]
        assert sel.below == int((keys < srt[k - 1]).sum()) and sel.ties == int((keys == srt[k - 1]).sum())
        if block == keys.size or (order == "iid" and k == 30000):  # a median is guessed well from 20000 keys
            assert sel.n_passes == 1
    if order == "sorted" and block < keys.size:
        assert sel.n_passes == 3  # k = n: the first block's guess is far below


def test_locate_kth_rejects_out_of_range():
    with pytest.raises(ValueError):
        K.locate_kth(np.array([1, 1]), 3)


@pytest.mark.parametrize("ties_left", [-3, 0, 1, 5, 10**9])
def test_prune_threshold_tie_rule(rng, ties_left):
    x = data(rng, 200000, ties=True)
    keys = x.view(np.uint32).copy()
    thr = np.float32(2.0).view(np.uint32)
    is_tie = (keys & 0x7FFFFFFF) == thr
    rank = np.cumsum(is_tie) - 1
    cut = ((keys & 0x7FFFFFFF) < thr) | (is_tie & (rank < ties_left))
    expect = np.where(cut, np.float32(0), x)
    y = x.copy()
    mask = np.full(x.size, 7, np.uint8)
    ties = K.prune_threshold(y.view(np.uint32), y.view(np.uint32), np.uint32(thr), ties_left, mask, True)
    assert ties == is_tie.sum()
    assert (y.view(np.uint32) == expect.view(np.uint32)).all()
    assert (mask == (~cut).astype(np.uint8)).all()
    if ties_left >= is_tie.sum():  # told that every tie goes: the same, without counting first
        z = x.copy()
        assert K.prune_threshold(z.view(np.uint32), z.view(np.uint32), np.uint32(thr), 0, mask, True,
                                 all_ties=True) == ties
        assert (z.view(np.uint32) == expect.view(np.uint32)).all()
        assert (mask == (~cut).astype(np.uint8)).all()


def test_quantize_matches_reference_bit_exactly(rng):
    x = data(rng, 100003)
    x[:5] = [0.0, -0.0, 1e-9, -1e-9, 3.0]
    scale = np.float32(np.float32(np.abs(x).max()) / np.float32(127))
    q = np.clip(round_half_away((x / scale).astype(np.float32)), -127, 127).astype(np.int8)
    expect = (q.astype(np.float32) * scale).astype(np.float32)
    y = x.copy()
    K.quantize_int8_sim(y, scale)
    assert (y.view(np.uint32) == expect.view(np.uint32)).all()  # also +0.0, never -0.0


def test_quantize_with_an_underflowing_scale_is_the_seeds_division_by_zero():
    """absmax of denormals: scale = absmax / 127 is 0 and the seed computes x / 0."""
    x = np.array([-1e-45, 1e-45, 0.0, -0.0, -3e-45], dtype=np.float32)
    scale = np.float32(np.float32(np.abs(x).max()) / np.float32(127))
    assert scale == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.clip(np.nan_to_num(round_half_away((x / scale).astype(np.float32)), nan=0.0), -127, 127)
    expect = (q.astype(np.float32) * scale).astype(np.float32)
    y = x.copy()
    K.quantize_int8_sim(y, scale)
    assert (y.view(np.uint32) == expect.view(np.uint32)).all()  # -0.0 for the negatives


def test_round_half_away_at_exact_halves():
    scale = np.float32(1.0)
    x = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997], dtype=np.float32)
    K.quantize_int8_sim(x, scale)
    assert x.tolist() == [1.0, 2.0, 3.0, -1.0, -3.0, 0.0]


def test_absmax_count_and_nonfinite(rng):
    x = data(rng, 99999)
    assert K.absmax(x) == np.abs(x).max()
    assert K.count_nonzero(x) == np.count_nonzero(x)
    x[[3, 50000]] = [np.nan, -np.inf]
    assert K.count_nonfinite(x) == 2
    assert K.absmax(x) == np.abs(x[~np.isnan(x)]).max()  # f32::max fold: NaN ignored, inf kept
    K.zero_nonfinite(x)
    assert np.isfinite(x).all() and x[3] == 0 and x[50000] == 0


def test_clip_le(rng):
    x = data(rng, 10000, ties=True)
    thr = np.float32(1.0).view(np.uint32)
    y = x.copy()
    K.clip_le(y.view(np.uint32), y.view(np.uint32), np.uint32(thr))
    assert (y == np.where(np.abs(x) <= 1.0, 0, x)).all()


@pytest.mark.parametrize("seed", [0, 42, 2**64 - 1])
def test_random_scores_match_sequential_lcg(seed):
    ref = lcg_values(seed, 3000)
    assert (K.random_scores(0, 3000, seed) == ref).all()
    assert (K.random_scores(1234, 1766, seed) == ref[1234:]).all()
    assert (K.random_unit_scores(5, seed) == [lcg_values((seed + u) % 2**64, 1)[0] for u in range(5)]).all()


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("split", [1, 7, 333, 1000])
def test_structured_scores_sequential_f32(rng, squared, split):
    """Blocks cutting rows anywhere give the sequential float32 sums."""
    x = data(rng, 37 * 29).reshape(37, 29)
    v = (x * x).astype(np.float32) if squared else np.abs(x)
    rows_ref = np.cumsum(v, axis=1, dtype=np.float32)[:, -1]
    cols_ref = np.cumsum(v, axis=0, dtype=np.float32)[-1, :]
    flat = x.reshape(-1)
    racc = np.zeros(37, np.float32)
    cacc = np.zeros(29, np.float32)
    for s in range(0, flat.size, split):
        blk = flat[s:s + split].copy()
        K.accumulate_row_scores(blk, s, 29, racc, squared)
        K.accumulate_col_scores(blk, s, 29, cacc, squared)
    assert (racc == rows_ref).all()
    assert (cacc == cols_ref).all()


def test_apply_unit_mask(rng):
    x = data(rng, 6 * 4)
    pr = np.array([0, 1, 0, 1], np.uint8)
    y = x.copy()
    m = np.zeros(24, np.uint8)
    K.apply_unit_mask(y, 0, 4, pr, False, m, True)
    expect = x.reshape(6, 4).copy()
    expect[:, [1, 3]] = 0
    assert (y == expect.reshape(-1)).all()
    assert (m == (expect.reshape(-1) != 0) | (x == 0) & (np.tile(pr, 6) == 0)).all()


def test_diff_stats(rng):
    a = data(rng, 70000)
    b = a.copy()
    b[::3] = 0
    nz, sse, mx, sig = K.diff_stats(a, b)
    d = b.astype(np.float64) - a
    assert nz == np.count_nonzero(b)
    assert sse == pytest.approx((d * d).sum(), rel=1e-12)
    assert mx == np.abs(d).max()
    assert sig == pytest.approx((a.astype(np.float64) ** 2).sum(), rel=1e-12)


@pytest.mark.parametrize("n", [0, 1, 15, 17, 65535, 65536, 65537, 200003])
@pytest.mark.parametrize("special", [False, True])
def test_diff_stats_sums_in_its_fixed_order(rng, n, special):
    """Bit for bit the reference's order (lanes per tile, pairwise, tiles in
    order), with and without NaN/inf on either side, for any thread count."""
    a = specials(rng, n) if special and n else data(rng, n)
    with np.errstate(over="ignore", invalid="ignore"):
        b = (np.round(a * 16) / 16).astype(np.float32)
    b[::5] = 0
    if special and n > 3:
        b[rng.integers(0, n, 3)] = np.array([np.nan, np.inf, -np.inf], np.float32)
    want = ref_diff_stats(a, b)
    assert tuple(K.diff_stats(a, b)) == want
    import numba
    was = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        assert tuple(K.diff_stats(a, b)) == want
    finally:
        numba.set_num_threads(was)


def _tie_case(rng, n, keys_of, ties):
    """``(x, keys, thr, ties_left, all_ties)`` of a cut on the tie path ``ties``:
    NaNs with payloads, a quarter of the elements tied at one key (spread over
    every tile), keys x's own bits or its squares'."""
    x = specials(rng, n) if n > 8 else data(rng, n)
    if n > 8:
        x.view(np.uint32)[[2, 5]] = [0x7FC01234, 0xFFC00001]  # NaNs with payloads
        x[rng.integers(0, n, n // 4)] = x[0]  # ties at one key, in every tile
    with np.errstate(over="ignore", invalid="ignore"):
        keys = x.view(np.uint32) if keys_of == "x" else K.square(x).view(np.uint32)
    thr = int(keys[0] & 0x7FFFFFFF) if n else 0
    cnt = int(((keys & 0x7FFFFFFF) == thr).sum())
    left, all_ties = {"all": (cnt, True), "counted all": (cnt, False), "none": (0, False),
                      "some": (max(cnt // 2, 1), False)}[ties]
    return x, keys, thr, left, all_ties


@pytest.mark.parametrize("n", [0, 1, 31, 65536, 65537, 200003])
@pytest.mark.parametrize("keys_of", ["x", "squares"])
@pytest.mark.parametrize("ties", ["all", "counted all", "none", "some"])
def test_a_measured_prune_cut_is_the_cut_then_diff_stats(rng, n, keys_of, ties):
    """``prune_threshold_measured`` (the cut and the stage's stats in one pass, no
    copy) gives ``prune_threshold``'s bits (NaN payloads, -0.0 and +0.0 as they
    are), tie count and mask, and the reference's stats of x before and after,
    on every tie path, with keys that are x's own bits, on 1 and 2 threads."""
    import numba

    x, keys, thr, left, all_ties = _tie_case(rng, n, keys_of, ties)
    was = numba.get_num_threads()
    try:
        for threads in (1, was):
            numba.set_num_threads(threads)
            for want in (False, True):
                a, b = x.copy(), x.copy()
                ka = a.view(np.uint32) if keys_of == "x" else keys.copy()
                kb = b.view(np.uint32) if keys_of == "x" else keys.copy()
                ma = np.ones(n if want else 0, np.uint8)
                mb = ma.copy()
                t_want = K.prune_threshold(b.view(np.uint32), kb, thr, left, mb, want, all_ties=all_ties)
                t_got, stats = K.prune_threshold_measured(a, ka, thr, left, ma, want, all_ties=all_ties)
                assert t_got == t_want
                assert a.view(np.uint32).tobytes() == b.view(np.uint32).tobytes()
                assert ma.tobytes() == mb.tobytes()
                assert tuple(stats) == ref_diff_stats(x, b)
    finally:
        numba.set_num_threads(was)


@pytest.mark.parametrize("n, L, g, start", [(0, 8, 8, 0), (5, 5, 5, 0), (65536, 4096, 4096, 0),
                                              (200003, 200003, 200003, 0), (131072 + 96, 5632, 32, 5632 * 3),
                                              (100000, 1000, 64, 37), (65537, 3, 2, 1)])
@pytest.mark.parametrize("kind", ["symmetric, divide", "asymmetric", "symmetric, inverse"])
def test_measured_quantize_is_the_inplace_kernel_then_diff_stats(rng, n, L, g, start, kind):
    """``quantize_units_measured`` (codes and the stage's stats in one pass, ``x``
    left as it was) gives ``quantize_units``' codes and the reference's stats of
    x and its dequantized values, for units that cross tiles and start
    mid-unit, zero scales, zero points, NaN/inf and -0.0, on 1 and 2 threads."""
    import numba

    x = specials(rng, n) if n > 8 else data(rng, n)
    if n > 8:
        x.view(np.uint32)[[2, 5]] = [0x7FC01234, 0xFFC00001]  # NaNs with payloads
    k = K.unit_range(start, n, L, g)[1] if n else 1
    scales = np.abs(rng.standard_normal(k)).astype(np.float32) / 50
    scales[:: 3] = 0  # (a unit of scale 0: every code the zero point)
    inv = np.where(scales != 0, 1 / np.where(scales != 0, scales, 1), 0).astype(np.float32)
    zps = (rng.integers(-20, 20, k) if kind == "asymmetric" else np.zeros(k)).astype(np.int8)
    qmin, qmax = (-128, 127) if kind == "asymmetric" else (-127, 127)
    use_inv = kind == "symmetric, inverse"
    was = numba.get_num_threads()
    try:
        for threads in (1, was):
            numba.set_num_threads(threads)
            a, b = x.copy(), x.copy()
            ca, cb = np.empty(n, np.int8), np.empty(n, np.int8)
            with np.errstate(all="ignore"):
                K.quantize_units(b, start, L, g, scales, inv, zps, qmin, qmax, use_inv, cb)
                stats = K.quantize_units_measured(a, start, L, g, scales, inv, zps, qmin, qmax, use_inv, ca)
                want = ref_diff_stats(x, b)
            assert a.view(np.uint32).tobytes() == x.view(np.uint32).tobytes()  # (x as it was)
            assert ca.tobytes() == cb.tobytes()
            assert tuple(stats) == want
    finally:
        numba.set_num_threads(was)


@pytest.mark.parametrize("n, L, g, start", [(0, 8, 8, 0), (31, 31, 31, 0), (65536, 4096, 4096, 0),
                                              (200003, 200003, 200003, 0), (131072 + 96, 5632, 32, 5632 * 3),
                                              (150001, 1000, 64, 37)])
@pytest.mark.parametrize("keys_of", ["x", "squares"])
@pytest.mark.parametrize("ties", ["all", "counted all", "none", "some"])
def test_a_cut_and_its_quantizer_in_one_pass_are_the_two_kernels_in_turn(rng, n, L, g, start, keys_of, ties):
    """``cut_quantize_measured`` (a cut as ``cut_plan`` describes it, then the codes
    of what it leaves, ``x`` left as it is) gives the ties, the cut's stats and
    the quantizer's codes and stats of ``prune_threshold_measured`` then
    ``quantize_units_measured`` on the cut copy; ``unit_absmax_kept`` is
    ``unit_absmax`` of the cut; on every tie path (ties ranked across tiles
    included), keys x's bits or not, NaN and -0.0, on 1 and 2 threads."""
    import numba

    x, keys, thr, left, all_ties = _tie_case(rng, n, keys_of, ties)
    k = K.unit_range(start, n, L, g)[1] if n else 1
    was = numba.get_num_threads()
    try:
        for threads in (1, was):
            numba.set_num_threads(threads)
            lim, offsets, _ = K.cut_plan(keys, thr, left, all_ties)
            assert (offsets.size > 0) == (ties == "some" and n > 8)  # (the ranked path is taken)
            b = x.copy()
            t_want, cut_want = K.prune_threshold_measured(b, b.view(np.uint32) if keys_of == "x" else keys.copy(),
                                                          thr, left, np.zeros(0, np.uint8), False, all_ties=all_ties)
            mx = K.unit_absmax(b, start, L, g) if n else np.zeros(1, np.float32)
            if offsets.size == 0 and n:
                assert K.unit_absmax_kept(x, keys, lim, start, L, g).tobytes() == mx.tobytes()
            scales = (mx / np.float32(127)).astype(np.float32)
            inv = np.where(scales != 0, 1 / np.where(scales != 0, scales, 1), 0).astype(np.float32)
            zps = np.zeros(k, np.int8)
            cb, ca = np.empty(n, np.int8), np.empty(n, np.int8)
            a = x.copy()
            with np.errstate(all="ignore"):
                q_want = K.quantize_units_measured(b, start, L, g, scales, inv, zps, -127, 127, False, cb)
                t_got, cut_got, q_got = K.cut_quantize_measured(a, keys, lim, np.uint32(thr), offsets, left, start,
                                                                L, g, scales, inv, zps, -127, 127, False, ca)
            assert a.view(np.uint32).tobytes() == x.view(np.uint32).tobytes()  # (x as it was)
            assert int(t_got) == t_want
            assert tuple(cut_got) == tuple(cut_want)
            assert ca.tobytes() == cb.tobytes()
            assert tuple(q_got) == tuple(q_want)
    finally:
        numba.set_num_threads(was)


def test_scores_reference_consistency(rng):
    x = data(rng, 100)
    assert (K.square(x) == element_scores(x, "l2", 0)).all()


def test_threading_layer_is_threadsafe():
    assert K.check_threading_layer() in ("omp", "tbb")


def specials(rng, n):
    """Normal data sprinkled with NaN, +-inf, -0.0, denormals and huge values."""
    x = rng.standard_normal(n).astype(np.float32)
    vals = np.array([np.nan, -np.nan, np.inf, -np.inf, -0.0, 1e-45, -3e-39, 3e38, -3e38], np.float32)
    idx = rng.integers(0, n, max(1, n // 50))
    x[idx] = vals[rng.integers(0, vals.size, idx.size)]
    return x


@pytest.mark.parametrize("n", [1, 3, 65535, 65536, 65537, 200003])
def test_reductions_equal_numpy_with_special_values(rng, n):
    x = specials(rng, n)
    finite_or_inf = np.abs(x[~np.isnan(x)])
    ref_absmax = np.float32(finite_or_inf.max()) if finite_or_inf.size else np.float32(0)
    assert K.absmax(x).view(np.uint32) == max(ref_absmax, np.float32(0)).view(np.uint32)
    assert K.count_nonzero(x) == np.count_nonzero(x)  # NaN counts as non-zero
    assert K.count_nonfinite(x) == (~np.isfinite(x)).sum()


@pytest.mark.parametrize("L,g,start,n", [(1000, 1000, 0, 7000), (1000, 1000, 500, 2600), (96, 32, 40, 1000),
                                          (70000, 70000, 10, 139990)])
def test_unit_absmax_and_minmax_equal_numpy(rng, L, g, start, n):
    x = specials(rng, n)
    u0, k = K.unit_range(start, n, L, g)
    G = -(-L // g)
    f = np.arange(start, start + n)
    unit = (f // L) * G + (f % L) // g - u0
    amax, mn, mx = np.zeros(k, np.float32), np.zeros(k, np.float32), np.zeros(k, np.float32)
    for j in range(k):
        v = x[unit == j]
        v = v[~np.isnan(v)]
        amax[j] = max(np.abs(v).max(), 0) if v.size else 0
        mn[j] = min(v.min(), 0) if v.size else 0
        mx[j] = max(v.max(), 0) if v.size else 0
    assert (K.unit_absmax(x, start, L, g).view(np.uint32) == amax.view(np.uint32)).all()
    got_mn, got_mx = K.unit_minmax(x, start, L, g)
    assert (got_mn == mn).all() and (got_mx == mx).all()


def test_band_histogram_accumulates_blocks_and_counts_nonfinite(rng):
    x = specials(rng, 150001)
    keys = x.view(np.uint32) & np.uint32(0x7FFFFFFF)
    lo = max(0, int(np.median(keys >> 16)) - 3)
    band = K.BandHistogram(lo, 7)
    for a, b in [(0, 5), (5, 70000), (70000, 150001)]:
        assert band.add(x[a:b].view(np.uint32)) == (~np.isfinite(x[a:b])).sum()
    assert band.below() == int(((keys >> 16) < lo).sum())
    win = band.window()
    for j in range(7):
        assert (win[j] == np.bincount(keys[(keys >> 16) == lo + j] & 0xFFFF, minlength=1 << 16)).all()


def test_band_histogram_folds_slots_before_they_overflow(rng, monkeypatch):
    """The spills are int32: slots are folded into int64 totals before a count could
    pass 2**31 - 1 (the limit lowered here so a small test crosses it several times)."""
    monkeypatch.setattr(K.BandHistogram, "_FOLD_AT", 1000)
    x = np.abs(rng.standard_normal(5000).astype(np.float32))
    keys = x.view(np.uint32)
    lo = int(np.median(keys >> 16)) - 1
    band = K.BandHistogram(lo, 3)
    for b in range(0, 5000, 700):
        band.add(keys[b:b + 700])
    assert band._W is not None  # folded at least once
    assert band.below() == int(((keys >> 16) < lo).sum())
    for j in range(3):
        assert (band.window()[j] == np.bincount(keys[(keys >> 16) == lo + j] & 0xFFFF, minlength=1 << 16)).all()


@pytest.mark.parametrize("reps", [255, 256, 257, 511, 512, 100000])
def test_band_histogram_carries_uint8_cells_past_255(rng, reps):
    """The band's uint8 cells wrap into their spill: a key repeated ``reps``
    times (alone, beside others, over several blocks and both threads' slices)
    is counted ``reps`` times, and so are its neighbours. The repeats come first,
    so each is counted by the first thread's slice of the first block (up to
    4500 keys: blocks of 9000 are split in two) where the cells wrap exactly."""
    base = np.abs(rng.standard_normal(20000).astype(np.float32))
    keys0 = base.view(np.uint32)
    lo = int(np.median(keys0 >> 16)) - 1
    hot = np.uint32((lo + 1) << 16 | 0x1234)
    keys = np.concatenate([np.full(reps, hot, np.uint32), np.full(300, hot + 1, np.uint32), keys0])
    band = K.BandHistogram(lo, 3)
    for b in range(0, keys.size, 9000):
        band.add(keys[b:b + 9000])
    win = band.window()
    for j in range(3):
        assert (win[j] == np.bincount(keys[(keys >> 16) == lo + j] & 0xFFFF, minlength=1 << 16)).all()
    assert win[1, 0x1234] >= reps


_STALE_CHILD = """
import numpy as np
from streamcompress import kernels as K
x = (np.random.default_rng(3).standard_normal(1 << 16) * 3).astype(np.float32)
out = np.zeros(x.size // 32 * 34, np.uint8)
got = K.q8_0_pass(x, x.view(np.uint32), -127, 127, K.POW2, out)[:4]
b = out.reshape(-1, 34)
deq = (b[:, 2:].view(np.int8).astype(np.float32) * b[:, :2].copy().view(np.float16).astype(np.float32)).reshape(-1)
print(repr(tuple(float(v) for v in got)))
print(repr(tuple(float(v) for v in K.diff_stats(x, deq))))
"""


def test_a_cached_kernel_is_rebuilt_when_a_kernel_it_calls_changes(tmp_path):
    """Numba's cache checks a kernel's own file only: after a change to
    ``diff_tile`` (elementwise.py) alone, ``q8_0_pass`` (ggml.py, which inlines
    it) must not load as compiled with the old one."""
    import ast
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    src = Path(K.__file__).resolve().parent.parent
    shutil.copytree(src, tmp_path / "streamcompress", ignore=shutil.ignore_patterns("__pycache__"))

    def run():
        env = {**os.environ, "PYTHONPATH": str(tmp_path)}
        env.pop("NUMBA_CACHE_DIR", None)
        got = subprocess.run([sys.executable, "-c", _STALE_CHILD], env=env, cwd=tmp_path,
                             capture_output=True, text=True, check=True)
        fused, generic = got.stdout.splitlines()[-2:]
        return ast.literal_eval(fused), ast.literal_eval(generic)

    fused, generic = run()
    assert fused == generic
    assert list((tmp_path / "streamcompress/kernels/__pycache__").glob("ggml.q8_0_pass*.nbi"))  # (cached)
    el = tmp_path / "streamcompress/kernels/elementwise.py"
    el.write_text(el.read_text().replace("LANES = 32\n", "LANES = 8\n", 1))
    fused2, generic2 = run()
    assert generic2 != generic  # (the change moves the sums' last bits: the check can fail)
    assert fused2 == generic2
