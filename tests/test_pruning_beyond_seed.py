"""Global magnitude pruning and N:M semi-structured pruning against naive references."""

import numpy as np
import pytest

import streamcompress as sc
from conftest import heavy_tailed, tie_heavy
from reference import ref_global_prune, ref_prune_nm
from streamcompress import kernels as K
from test_streaming import write_store


def bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.57, 0.9])
@pytest.mark.parametrize("metric", ["l1", "l2"])
@pytest.mark.parametrize("make", [heavy_tailed, tie_heavy])
def test_global_prune_exact_count_and_values(rng, sparsity, metric, make):
    tensors = [(f"t{i}", make(rng, (int(rng.integers(1, 20)), 13))) for i in range(5)]
    exp, k = ref_global_prune(tensors, sparsity, metric)
    cfg = sc.CompressionConfig((sc.Prune(sc.PruningConfig(sparsity, metric, scope="global")),))
    for block in (None, 9, 40):
        r = sc.compress_model(tensors, cfg, options=sc.EngineOptions(block_elems=block, save_masks=True))
        for (n, e), got in zip(exp, r.compressed_tensors):
            assert (bits(got.data) == bits(e)).all(), (n, block)
        assert sum(int((m == 0).sum()) for m in r.masks.values()) == k


def test_global_prune_after_clip_and_before_quantize_on_store(tmp_path, rng):
    """Chained: the global threshold is taken on clip's output, streamed from a chunked store."""
    from reference import ref_clip, ref_quantize

    tensors = [("a", heavy_tailed(rng, (30, 16))), ("embed", heavy_tailed(rng, (8, 16))),
               ("b", tie_heavy(rng, (11, 16)))]
    src = write_store(tmp_path / "in.zarr", tensors, (4, 8))
    cfg = sc.CompressionConfig((sc.Clip(0.1), sc.Prune(sc.PruningConfig(0.5, scope="global")), sc.QuantizeInt8()),
                               skip_embedding_layers=True)
    r = sc.compress_store(src, tmp_path / "out.zarr", cfg, options=sc.EngineOptions(block_elems=50))
    sel = [(n, ref_clip(a, 0.1)) for n, a in tensors if n != "embed"]
    pruned, k = ref_global_prune(sel, 0.5)
    exp = {n: ref_quantize(a) for n, a in pruned}
    import zarr

    out = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    for n in ("a", "b"):
        assert (bits(out[n][...]) == bits(exp[n])).all()
    assert (out["embed"][...] == tensors[1][1]).all()
    assert r.stage_stats[1].tensors_skipped == 1


def test_global_prune_errors():
    with pytest.raises(sc.ConfigError):
        sc.PruningConfig(0.5, granularity="rows", scope="global")
    cfg = sc.CompressionConfig((sc.Prune(sc.PruningConfig(0.5, min_nonzero=10, scope="global")),))
    with pytest.raises(sc.BelowMinNonzero):
        sc.compress_model({"a": np.ones(4, np.float32), "b": np.ones(5, np.float32)}, cfg)


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8), (0, 2), (2, 2)])
@pytest.mark.parametrize("metric", ["l1", "l2"])
@pytest.mark.parametrize("make", [heavy_tailed, tie_heavy])
def test_nm_pruning_matches_reference_and_is_valid(rng, n, m, metric, make):
    x = make(rng, (9, 24))
    exp = ref_prune_nm(x, n, m, metric)
    for block in (None, 8, 48):
        r = sc.compress_model({"w": x}, sc.CompressionConfig((sc.PruneNM(n, m, metric),)),
                              options=sc.EngineOptions(block_elems=block))
        y = r.compressed_tensors[0].data
        assert (bits(y) == bits(exp)).all()
        assert K.nm_violations(y.reshape(-1), n, m) == 0
    assert K.nm_violations(x.reshape(-1), n, m) == int(((x.reshape(-1, m) != 0).sum(1) > n).sum())


def test_nm_needs_divisible_last_axis():
    with pytest.raises(sc.ConfigError, match="multiple of 4"):
        sc.compress_model({"w": np.ones((3, 6), np.float32)}, sc.CompressionConfig((sc.PruneNM(),)))
    with pytest.raises(sc.ConfigError):
        sc.PruneNM(3, 2)
