"""The seed's behaviour (SEED_SEMANTICS.md) against the naive reference."""

import numpy as np
import pytest

import streamcompress as sc
from conftest import heavy_tailed, seed_fields, tie_heavy, to_stage
from reference import (
    RefError,
    ref_clip,
    ref_compress,
    ref_estimate,
    ref_prune,
    ref_quantize,
    ref_summary,
)

METRICS = ["l1", "l2", "taylor", "random"]


def bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def run(tensors, stages, skip=False, block_elems=None):
    cfg = sc.CompressionConfig(tuple(to_stage(s) for s in stages), skip)
    return sc.compress_model(tensors, cfg, options=sc.EngineOptions(block_elems=block_elems))


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("granularity", ["unstructured", "rows", "columns"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("make", [heavy_tailed, tie_heavy])
def test_prune_matches_reference(rng, metric, granularity, sparsity, make):
    x = make(rng, (23, 17))
    cfg = dict(sparsity=sparsity, metric=metric, granularity=granularity, seed=99)
    exp, exp_mask = ref_prune(x, **cfg)
    for block in (None, 5, 17, 40):
        out, mask = sc.prune_tensor(x, sc.PruningConfig(**cfg),
                                    options=sc.EngineOptions(block_elems=block))
        assert (bits(out) == bits(exp)).all(), block
        assert (mask == exp_mask).all(), block


def test_prune_mask_keeps_unselected_zero(rng):
    x = np.array([0, 0, 0, 1, 2, 3], dtype=np.float32)
    out, mask = sc.prune_tensor(x, sc.PruningConfig(0.34))  # k = floor(2.04) = 2
    assert out.tolist() == [0, 0, 0, 1, 2, 3]
    assert mask.tolist() == [0, 0, 1, 1, 1, 1]


@pytest.mark.parametrize("min_nonzero", [0, 1, 5, 391, 392])
def test_min_nonzero_caps_k(rng, min_nonzero):
    x = tie_heavy(rng, (391,))
    if min_nonzero > x.size:
        with pytest.raises(RefError):
            ref_prune(x, 0.99, min_nonzero=min_nonzero)
        with pytest.raises(sc.BelowMinNonzero):
            sc.prune_tensor(x, sc.PruningConfig(0.99, min_nonzero=min_nonzero))
        return
    exp, _ = ref_prune(x, 0.99, min_nonzero=min_nonzero)
    out, _ = sc.prune_tensor(x, sc.PruningConfig(0.99, min_nonzero=min_nonzero))
    assert (bits(out) == bits(exp)).all()


def test_structured_min_nonzero_units(rng):
    x = heavy_tailed(rng, (10, 4))
    exp, _ = ref_prune(x, 0.9, granularity="rows", min_nonzero=9)  # keeps ceil(9/4) = 3 rows
    out, _ = sc.prune_tensor(x, sc.PruningConfig(0.9, granularity="rows", min_nonzero=9))
    assert (bits(out) == bits(exp)).all()
    assert int((np.abs(out).sum(axis=1) > 0).sum()) == 3


@pytest.mark.parametrize("make", [heavy_tailed, tie_heavy])
def test_quantize_matches_reference(rng, make):
    x = make(rng, (31, 9))
    r = run([("w", x)], [("quantize_int8",)], block_elems=13)
    assert (bits(r.compressed_tensors[0].data) == bits(ref_quantize(x))).all()


def test_quantize_all_zero_and_empty_unchanged():
    z = np.zeros((3, 3), np.float32)
    e = np.zeros((0, 4), np.float32)
    r = run([("z", z), ("e", e)], [("quantize_int8",)])
    assert (r.compressed_tensors[0].data == 0).all()
    assert r.compressed_tensors[1].data.shape == (0, 4)


@pytest.mark.parametrize("p", [1e-6, 0.1, 0.3, 0.5, 0.77, 1.0])
@pytest.mark.parametrize("make", [heavy_tailed, tie_heavy])
def test_clip_matches_reference(rng, p, make):
    x = make(rng, (19, 11))
    r = run([("w", x)], [("clip", p)], block_elems=7)
    assert (bits(r.compressed_tensors[0].data) == bits(ref_clip(x, p))).all()


def test_clip_one_zeros_everything(rng):
    r = run([("w", heavy_tailed(rng, (5, 5)))], [("clip", 1.0)])
    assert (r.compressed_tensors[0].data == 0).all()


PIPELINES = [
    [("prune", dict(sparsity=0.5)), ("quantize_int8",)],
    [("clip", 0.2), ("prune", dict(sparsity=0.6, metric="l2")), ("quantize_int8",)],
    [("quantize_int8",), ("prune", dict(sparsity=0.4, granularity="columns"))],
    [("prune", dict(sparsity=0.3, metric="random", seed=5)), ("clip", 0.5), ("quantize_int8",)],
    [("prune", dict(sparsity=0.5, granularity="rows")), ("prune", dict(sparsity=0.7))],
]


@pytest.mark.parametrize("stages", PIPELINES)
@pytest.mark.parametrize("skip", [False, True])
def test_pipeline_outputs_stats_and_summary(rng, stages, skip):
    tensors = [
        ("embed_tokens.weight", heavy_tailed(rng, (12, 8))),
        ("layers.0.w", tie_heavy(rng, (9, 14))),
        ("Token_type", heavy_tailed(rng, (4, 6))),
        ("layers.0.v", heavy_tailed(rng, (16, 3))),
    ]
    work, stats = ref_compress(tensors, stages, skip)
    for block in (None, 11, 50):
        r = run(tensors, stages, skip, block_elems=block)
        assert [t.name for t in r.compressed_tensors] == [n for n, _ in tensors]
        for (n, exp), got in zip(work, r.compressed_tensors):
            assert (bits(got.data) == bits(exp)).all(), (n, block)
        assert [seed_fields(s) for s in r.stage_stats] == stats
        assert r.summary() == ref_summary(work, stats)


def test_summary_text_literal():
    x = np.arange(1, 11, dtype=np.float32)
    r = sc.compress_model([sc.WeightTensor("layer.weight", x)], sc.CompressionConfig.prune_then_quantize(0.5))
    assert r.summary() == (
        "=== Compression Summary (2 stage(s)) ===\n"
        "  Stage 1: [prune] processed=1 skipped=0 sparsity=0.5000 ratio=1.000x memory=40B->40B\n"
        "  Stage 2: [quantize_int8] processed=1 skipped=0 sparsity=0.5000 ratio=4.000x memory=40B->10B\n"
        "  Overall: tensors=1 total_params=10 nonzero=5 sparsity=0.5000 compression_ratio=4.000x memory=40B->10B"
    )


def test_skipped_tensors_are_unchanged_and_never_validated(rng):
    emb = np.array([np.nan, 1.0], np.float32)  # NaN would be an error if processed
    cfg = sc.CompressionConfig((sc.Prune(sc.PruningConfig(0.5, granularity="rows")),), True)
    r = sc.compress_model([("embed", emb), ("w", heavy_tailed(rng, (4, 4)))], cfg)
    assert np.isnan(r.compressed_tensors[0].data[0])
    assert r.stage_stats[0].tensors_skipped == 1


@pytest.mark.parametrize(
    "tensors, stages, skip, kind",
    [
        ([], [], False, sc.EmptyModel),
        ([], [("clip", 2.0)], False, sc.EmptyModel),
        ([("w", np.ones(3, np.float32))], [], False, sc.EmptyPipeline),
        ([("w", np.ones(3, np.float32))], [("prune", dict(sparsity=1.5)), ("clip", 0.0)], False,
         sc.InvalidPercentile),
        ([("w", np.ones(3, np.float32))], [("prune", dict(sparsity=1.0))], False, sc.InvalidSparsity),
        ([("w", np.ones(3, np.float32))], [("prune", dict(sparsity=-0.1))], False, sc.InvalidSparsity),
        ([("w", np.ones(3, np.float32))], [("prune", dict(sparsity=float("nan")))], False, sc.InvalidSparsity),
        ([("w", np.ones(3, np.float32))], [("prune", dict(sparsity=0.99999999))], False, sc.InvalidSparsity),
        ([("w", np.ones(0, np.float32))], [("prune", dict(sparsity=0.0))], False, sc.EmptyTensor),
        ([("w", np.ones(3, np.float32))], [("prune", dict(sparsity=0.5, granularity="rows"))], False,
         sc.NotTwoDimensional),
        ([("w", np.ones(3, np.float32))], [("prune", dict(sparsity=0.0, min_nonzero=4))], False,
         sc.BelowMinNonzero),
        # stage-major order: stage 1's error on the 2nd tensor beats stage 2's on the 1st
        ([("a", np.ones((2, 2), np.float32)), ("b", np.ones(3, np.float32))],
         [("prune", dict(sparsity=0.5, granularity="rows")), ("prune", dict(sparsity=2.0))], False,
         sc.NotTwoDimensional),
        # all tensors skipped: the bad sparsity is never checked
        ([("embed", np.ones(3, np.float32))], [("prune", dict(sparsity=2.0))], True, None),
    ],
)
def test_errors_in_seed_order(tensors, stages, skip, kind):
    try:
        ref_compress(tensors, stages, skip)
        ref_kind = None
    except RefError as e:
        ref_kind = e.kind
    assert ref_kind == (kind.__name__ if kind else None)
    if kind is None:
        run(tensors, stages, skip)
        return
    with pytest.raises(kind) as info:
        run(tensors, stages, skip)
    assert isinstance(info.value, sc.CompressionError)


def test_error_messages_match_seed():
    assert str(sc.EmptyModel()) == "empty model: no tensors"
    assert str(sc.EmptyPipeline()) == "empty pipeline: no stages"
    assert str(sc.InvalidPercentile(1.5)) == "invalid clip percentile 1.5: must be in (0, 1]"
    assert str(sc.InvalidSparsity(1.0)) == "pruning error: sparsity 1 must be in [0.0, 1.0)"
    assert str(sc.EmptyTensor("w")) == "pruning error: empty tensor: 'w'"
    assert str(sc.BelowMinNonzero(4, 3)) == "pruning error: cannot prune below min_nonzero=4 with 3 total elements"
    assert isinstance(sc.InvalidSparsity(2.0), ValueError)


def test_stage_stats_helpers_and_monoid():
    a = sc.StageStats("prune", 1, 0, 100, 50, 400, 400)
    b = sc.StageStats("prune", 0, 1, 30, 30, 120, 120)
    e = sc.StageStats.empty("prune")
    assert e.merge(a) == a == a.merge(e)
    assert a.merge(b).merge(a) == a.merge(b.merge(a))
    assert a.compression_ratio() == 1.0 and a.sparsity() == 0.5
    assert sc.StageStats("q", memory_before_bytes=40, memory_after_bytes=0).compression_ratio() == 1.0
    assert sc.StageStats("q").sparsity() == 0.0
    with pytest.raises(ValueError):
        a.merge(sc.StageStats("clip"))


def test_quantize_memory_after_rounds_in_f32():
    from streamcompress.layout import TensorMeta

    q = sc.QuantizeInt8()
    m = TensorMeta("w", (2**24 + 1,))
    big = 4 * (2**24 + 1)  # not representable in f32
    assert q.memory_after(m, big) == int(np.float32(big) * np.float32(0.25))
    assert q.memory_after(m, 40) == 10 and q.memory_after(m, 2) == 1


@pytest.mark.parametrize("stages", [[], [("prune", dict(sparsity=0.5))], [("quantize_int8",)],
                                    [("quantize_int8",), ("clip", 0.5), ("quantize_int8",)]])
@pytest.mark.parametrize("skip", [False, True])
def test_estimate_compressed_size(rng, stages, skip):
    tensors = [("embed.w", np.zeros((3, 5), np.float32)), ("w", np.zeros(7, np.float32)),
               ("token", np.zeros(1, np.float32))]
    cfg = sc.CompressionConfig(tuple(to_stage(s) for s in stages), skip)
    assert sc.estimate_compressed_size(tensors, cfg) == ref_estimate(tensors, stages, skip)
    assert sc.estimate_compressed_size([], cfg) == 0


def test_config_helpers_and_round_trip(tmp_path):
    c = sc.CompressionConfig.prune_then_quantize(0.5)
    assert [s.name for s in c.stages] == ["prune", "quantize_int8"]
    assert [s.name for s in sc.CompressionConfig.quantize_only().stages] == ["quantize_int8"]
    assert sc.CompressionConfig.prune_only(0.2).stages[0].config.sparsity == 0.2
    c2 = sc.CompressionConfig.new().add_stage(sc.Clip(0.1)).add_stage(sc.QuantizeInt8())
    assert sc.CompressionConfig.from_dict(c2.to_dict()) == c2
    p = tmp_path / "p.toml"
    p.write_text('skip_embedding_layers = true\n[[stages]]\nname = "prune"\nsparsity = 0.5\n'
                 'metric = "l2"\n[[stages]]\nname = "quantize_int8"\n')
    loaded = sc.load_config(p)
    assert loaded.skip_embedding_layers and loaded.stages[0].config.metric is sc.Metric.L2
    with pytest.raises(sc.ConfigError):
        sc.PruningConfig(0.5, metric="l3")
    with pytest.raises(sc.ConfigError):
        sc.PruningConfig("half")
    with pytest.raises(sc.ConfigError):
        sc.CompressionConfig.from_dict({"stages": [{"name": "bogus"}]})


def ref_stage_errors(tensors, stages):
    """Per-stage (sum sq err, max abs err, sum sq signal, count), stage by stage with the reference."""
    out = []
    work = [(n, np.asarray(a, np.float32)) for n, a in tensors]
    for st in stages:
        new, _ = ref_compress(work, [st])
        d = [(b.astype(np.float64) - a.astype(np.float64)) for (_, a), (_, b) in zip(work, new)]
        out.append((sum(float((x * x).sum()) for x in d), max(float(np.abs(x).max()) for x in d),
                    sum(float((a.astype(np.float64) ** 2).sum()) for _, a in work),
                    sum(a.size for _, a in work)))
        work = new
    return out


@pytest.mark.parametrize("stages", PIPELINES[:3])
def test_error_statistics_match_reference(rng, stages):
    tensors = [("a", heavy_tailed(rng, (20, 9))), ("b", heavy_tailed(rng, (7, 30)))]
    r = run(tensors, stages, block_elems=13)
    for s, (sse, mx, sig, cnt) in zip(r.stage_stats, ref_stage_errors(tensors, stages)):
        assert s.n_compared == cnt
        assert s.sum_sq_err == pytest.approx(sse, rel=1e-9)
        assert s.max_abs_err == mx
        assert s.sum_sq_signal == pytest.approx(sig, rel=1e-9)
        assert s.mse() == pytest.approx(sse / cnt, rel=1e-9)
        assert s.sqnr_db() == pytest.approx(10 * np.log10(sig / sse), rel=1e-9)
