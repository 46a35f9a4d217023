"""Zarr stores, chunked: results equal the in-memory reference for every chunking."""

import math

import ml_dtypes
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streamcompress as sc
from conftest import heavy_tailed, seed_fields, tie_heavy, to_stage
from reference import ref_compress
from streamcompress.layout import plan_blocks

STAGES = [("clip", 0.1), ("prune", dict(sparsity=0.5)), ("quantize_int8",)]


def bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def write_store(path, tensors, chunks=None, bf16=(), f16=(), compressors="auto"):
    """A Zarr v3 group of ``tensors``; ``compressors=None`` stores chunks raw (read
    straight from the chunk files, or mapped, when chunks span whole rows)."""
    g = zarr.open_group(str(path), mode="w")
    for name, arr in tensors:
        if callable(chunks):
            c = chunks(arr.shape)
        elif chunks:
            c = tuple(chunks[-arr.ndim:]) if arr.ndim <= len(chunks) else (1,) * (arr.ndim - len(chunks)) + tuple(chunks)
        else:
            c = arr.shape
        if arr.ndim == 0:
            c = ()
        attrs = {}
        data = arr
        if name in bf16:
            data = arr.astype(ml_dtypes.bfloat16).view(np.uint16)
            attrs["logical_dtype"] = "bfloat16"
        elif name in f16:
            data = arr.astype(np.float16)
        a = g.create_array(name, shape=arr.shape, chunks=tuple(max(1, x) for x in c) if c else (),
                           dtype=data.dtype, attributes=attrs, fill_value=0, compressors=compressors,
                           config={"write_empty_chunks": True})  # every chunk stored: a missing one is damage
        a[...] = data
    g.attrs["tensor_order"] = [n for n, _ in tensors]
    return path


def model(rng):
    return [
        ("model.embed_tokens.weight", heavy_tailed(rng, (40, 12))),
        ("model.layers.0.self_attn.q_proj.weight", tie_heavy(rng, (25, 19))),
        ("model.layers.0.input_layernorm.weight", heavy_tailed(rng, (33,))),
        ("experts", heavy_tailed(rng, (3, 7, 5))),
    ]


CHUNKINGS = [
    None,                                       # one chunk
    lambda s: tuple(math.ceil(d / 3) for d in s),   # ragged edges
    lambda s: (1,) + s[1:],                     # one row per chunk
    lambda s: tuple(max(1, d // 4) for d in s[:-1]) + (max(1, s[-1] // 2),) if len(s) > 1 else (7,),
    lambda s: (2,) * len(s),                    # tiny chunks splitting rows
]


@pytest.mark.parametrize("chunking", range(len(CHUNKINGS)))
@pytest.mark.parametrize("block_elems", [None, 8, 60, 1000])
@pytest.mark.parametrize("compressors", ["auto", None])
def test_store_equals_reference(tmp_path, rng, chunking, block_elems, compressors):
    tensors = model(rng)
    src = write_store(tmp_path / "in.zarr", tensors, CHUNKINGS[chunking], compressors=compressors)
    cfg = sc.CompressionConfig(tuple(to_stage(s) for s in STAGES))
    r = sc.compress_store(src, tmp_path / "out.zarr", cfg,
                          options=sc.EngineOptions(block_elems=block_elems))
    work, stats = ref_compress(tensors, STAGES)
    out = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    for name, exp in work:
        assert (bits(out[name][...]) == bits(exp)).all(), name
        assert out[name].attrs["streamcompress"]["complete"] is True
    assert [seed_fields(s) for s in r.stage_stats] == stats
    assert out.attrs["tensor_order"] == [n for n, _ in tensors]
    meta = out.attrs["streamcompress"]
    assert sc.CompressionConfig.from_dict(meta["pipeline"]) == cfg
    assert meta["result"]["total_nonzero"] == stats[-1]["nonzero_params_after"]


@pytest.mark.parametrize("kind", ["bf16", "f16"])
def test_half_precision_inputs(tmp_path, rng, kind):
    tensors = model(rng)[:2]
    names = [tensors[1][0]]
    src = write_store(tmp_path / "in.zarr", tensors, (5, 4),
                      bf16=names if kind == "bf16" else (), f16=names if kind == "f16" else ())
    cast = (lambda a: a.astype(ml_dtypes.bfloat16).astype(np.float32)) if kind == "bf16" else (
        lambda a: a.astype(np.float16).astype(np.float32))
    ref_tensors = [(tensors[0][0], tensors[0][1]), (names[0], cast(tensors[1][1]))]
    cfg = sc.CompressionConfig(tuple(to_stage(s) for s in STAGES), skip_embedding_layers=False)
    sc.compress_store(src, tmp_path / "out.zarr", cfg, options=sc.EngineOptions(block_elems=17))
    work, _ = ref_compress(ref_tensors, STAGES)
    out = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert (bits(out[names[0]][...]) == bits(work[1][1])).all()
    assert out[names[0]].attrs["source_dtype"] == ("bfloat16" if kind == "bf16" else "float16")


def test_skipped_bf16_tensor_copied_bit_for_bit(tmp_path, rng):
    tensors = [("embed", heavy_tailed(rng, (6, 4))), ("w", heavy_tailed(rng, (6, 4)))]
    src = write_store(tmp_path / "in.zarr", tensors, (2, 4), bf16=("embed",))
    cfg = sc.CompressionConfig((sc.QuantizeInt8(),), skip_embedding_layers=True)
    sc.compress_store(src, tmp_path / "out.zarr", cfg)
    a_in = zarr.open_group(str(src), mode="r")["embed"]
    a_out = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["embed"]
    assert a_out.dtype == np.uint16 and a_out.attrs["logical_dtype"] == "bfloat16"
    assert (a_in[...] == a_out[...]).all()


def test_scalar_and_empty_tensors(tmp_path, rng):
    tensors = [("s", np.array(2.5, np.float32)), ("e", np.zeros((0, 3), np.float32)),
               ("w", heavy_tailed(rng, (4, 4)))]
    stages = [("clip", 0.5), ("quantize_int8",)]
    src = write_store(tmp_path / "in.zarr", tensors, (2, 2))
    cfg = sc.CompressionConfig(tuple(to_stage(s) for s in stages))
    r = sc.compress_store(src, tmp_path / "out.zarr", cfg)
    work, stats = ref_compress(tensors, stages)
    out = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert out["s"][()] == work[0][1]
    assert out["e"].shape == (0, 3)
    assert [seed_fields(s) for s in r.stage_stats] == stats


def test_masks_saved(tmp_path, rng):
    tensors = [("w", tie_heavy(rng, (9, 7)))]
    src = write_store(tmp_path / "in.zarr", tensors, (2, 3))
    cfg = sc.CompressionConfig((sc.Prune(sc.PruningConfig(0.6)),))
    sc.compress_store(src, tmp_path / "out.zarr", cfg,
                      options=sc.EngineOptions(save_masks=True, block_elems=10))
    from reference import ref_prune

    _, mask = ref_prune(tensors[0][1], 0.6)
    out = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert (out["__masks__/w"][...] == mask).all()


def test_block_plan_covers_flat_order_once():
    for shape, budget, align in [((7, 5), 9, (2, 5)), ((3, 4, 5), 7, None), ((10,), 3, (4,)),
                                 ((2, 3, 4, 5), 50, (1, 3, 4, 5)), ((6, 8), 1000, (4, 3))]:
        blocks = plan_blocks(shape, budget, align)
        idx = np.arange(math.prod(shape)).reshape(shape)
        flat = np.concatenate([idx[b.region].reshape(-1) for b in blocks])
        assert (flat == np.arange(idx.size)).all()
        assert all(b.start == idx[b.region].reshape(-1)[0] for b in blocks)
        inner = math.prod(shape[1:])
        assert all(b.size <= max(budget, inner) for b in blocks)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=3), st.integers(1, 400),
       st.integers(1, 8), st.sampled_from([1, 2, 4, 32]))
def test_block_plan_is_even_within_the_budget(shape, budget, chunk, multiple):
    """The blocks along the split axis are as many as the budget needs and as even
    as the chunk (or group) multiple allows, so an output's edge chunk, stored
    padded to a whole chunk, holds less than one multiple per block of padding."""
    shape = tuple(shape)
    align = (chunk,) * len(shape)
    blocks = plan_blocks(shape, budget, align, multiple)
    idx = np.arange(math.prod(shape)).reshape(shape)
    assert (np.concatenate([idx[b.region].reshape(-1) for b in blocks]) == np.arange(idx.size)).all()
    d = next((i for i in range(len(shape)) if math.prod(shape[i + 1:]) <= budget), len(shape) - 1)
    lengths = [b.shape[d] for b in blocks if b.region[:d] == blocks[0].region[:d]]
    inner = math.prod(shape[d + 1:])
    fit = max(1, min(shape[d], budget // inner))
    if len(lengths) == 1:
        return
    m = multiple if d == len(shape) - 1 else 1
    c = math.lcm(chunk, m)
    unit = c if fit >= c else m
    floor = max(unit, fit // unit * unit)  # the longest step the budget allows
    assert len(lengths) == -(-shape[d] // floor)
    assert all(n % unit == 0 for n in lengths[:-1]) and max(lengths) <= floor
    assert max(lengths) * len(lengths) - shape[d] < len(lengths) * unit


def test_a_store_pads_its_edge_chunks_by_less_than_a_row_per_block(tmp_path):
    """2048 rows in blocks of at most 1638 rows: two chunks of 1024 rows, not a
    second chunk of 1638 rows that holds 410 (the store was 60% padding)."""
    w = np.random.default_rng(0).standard_normal((2048, 64)).astype(np.float32)
    sc.compress_model({"w": w}, sc.CompressionConfig((sc.Quantize(sc.parse_scheme("q8_0")),)),
                      output=tmp_path / "o.zarr", options=sc.EngineOptions(block_elems=1638 * 64))
    g = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")
    assert g["w"].chunks == (1024, 64) and g["w_scale"].chunks == (1024, 2)
    assert g["w"].nbytes_stored() < w.size + 4096  # int8 codes, crc32c and metadata: no padded rows


tensors_st = st.lists(
    st.tuples(
        st.lists(st.integers(1, 9), min_size=1, max_size=3),
        st.sampled_from(["normal", "ties", "zeros"]),
    ),
    min_size=1,
    max_size=3,
)
stage_st = st.one_of(
    st.builds(lambda s, m: ("prune", dict(sparsity=s, metric=m)),
              st.floats(0, 0.95), st.sampled_from(["l1", "l2", "random"])),
    st.just(("quantize_int8",)),
    st.builds(lambda p: ("clip", p), st.floats(0.01, 1.0)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=tensors_st, stages=st.lists(stage_st, min_size=1, max_size=3),
       block=st.integers(1, 40), chunk=st.integers(1, 5), seed=st.integers(0, 2**32), raw=st.booleans())
def test_property_chunked_equals_in_memory(tmp_path_factory, spec, stages, block, chunk, seed, raw):
    rng = np.random.default_rng(seed)
    tensors = []
    for i, (shape, kind) in enumerate(spec):
        shape = tuple(shape)
        if kind == "normal":
            a = heavy_tailed(rng, shape)
        elif kind == "ties":
            a = tie_heavy(rng, shape)
        else:
            a = np.zeros(shape, np.float32)
        tensors.append((f"t{i}", a))
    cfg = sc.CompressionConfig(tuple(to_stage(s) for s in stages))
    whole = sc.compress_model(tensors, cfg)
    d = tmp_path_factory.mktemp("p")
    rows = lambda s: (min(chunk, s[0]),) + tuple(s[1:]) if s else ()  # noqa: E731 - whole rows: direct reads
    src = write_store(d / "in.zarr", tensors, rows if raw else (lambda s: tuple(min(chunk, x) for x in s)),
                      compressors=None if raw else "auto")
    chunked = sc.compress_store(src, d / "out.zarr", cfg, options=sc.EngineOptions(block_elems=block))
    out = zarr.open_group(str(d / "out.zarr"), mode="r")
    for t in whole.compressed_tensors:
        assert (bits(out[t.name][...]) == bits(t.data)).all()
    assert [seed_fields(s) for s in chunked.stage_stats] == [seed_fields(s) for s in whole.stage_stats]
    assert chunked.summary() == whole.summary()
    work, stats = ref_compress(tensors, stages)
    assert [seed_fields(s) for s in whole.stage_stats] == stats


def test_progress_bar_counts_bytes_of_every_sweep(tmp_path, rng, capsys):
    tensors = [("w", heavy_tailed(rng, (64, 32)))]
    src = write_store(tmp_path / "in.zarr", tensors, (8, 32))
    # planned: prune's band and its two passes + quantize's stat sweep + the apply sweep
    # (the sweeps a band makes unneeded count as done when it resolves)
    cfg = sc.CompressionConfig.prune_then_quantize(0.5)
    sc.compress_store(src, tmp_path / "out.zarr", cfg,
                      options=sc.EngineOptions(progress=True, block_elems=256))
    err = capsys.readouterr().err
    assert "compress" in err and "40.0k/40.0k" in err  # 5 sweeps * 8 KiB


def test_make_checkpoint_script(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from make_checkpoint import write_checkpoint

    names = write_checkpoint(tmp_path / "m.zarr", 2_000_000, "bfloat16", chunk_bytes=64 << 10)
    g = zarr.open_group(str(tmp_path / "m.zarr"), mode="r")
    assert names[0] == "model.embed_tokens.weight" and names[-1] == "lm_head.weight"
    assert "model.layers.0.self_attn.q_proj.weight" in names
    q = g["model.layers.0.self_attn.q_proj.weight"]
    assert q.dtype == np.uint16 and q.attrs["logical_dtype"] == "bfloat16"
    vals = q[...].astype(np.uint32) << 16
    x = vals.view(np.float32)
    kurt = float(((x - x.mean()) ** 4).mean() / x.var() ** 2)
    assert kurt > 4  # heavy-tailed (a Gaussian has 3)
    r = sc.compress_store(tmp_path / "m.zarr", tmp_path / "o.zarr", sc.CompressionConfig.prune_then_quantize(0.5))
    assert r.tensor_names == names


def test_memory_does_not_grow_with_the_number_of_tensors(tmp_path, rng):
    """Nothing block-sized outlives its tensor: the traced peak of a 24-tensor model
    is that of a 3-tensor one (each tensor's codes alone would add 24 x 128 KiB)."""
    import gc
    import tracemalloc

    cfg = sc.CompressionConfig((sc.Prune(sc.PruningConfig(0.5)), sc.Quantize(sc.parse_scheme("int8:channel"))))
    opts = sc.EngineOptions(block_elems=65536)
    peaks = []
    for n in (3, 24):
        src = write_store(tmp_path / f"in{n}.zarr", [(f"l.{i}.w", heavy_tailed(rng, (256, 256))) for i in range(n)],
                          (64, 256))
        sc.compress_store(src, tmp_path / f"out{n}.zarr", cfg, options=opts)  # warm up (JIT, imports)
        gc.collect()
        tracemalloc.start()
        sc.compress_store(src, tmp_path / f"again{n}.zarr", cfg, options=opts)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < peaks[0] + (1 << 20), peaks


@pytest.mark.parametrize("order", ["rising", "falling", "iid"])
def test_prune_exact_when_the_first_block_guesses_its_band_wrong(tmp_path, rng, monkeypatch, order):
    """The prune's one-read selection guesses its band from the first block: rows
    whose scale rises (or falls) over the tensor make it miss, and the two passes
    that follow give the reference's bytes and stats; so does a band that holds."""
    from streamcompress.stages.base import KthSelector

    x = heavy_tailed(rng, (64, 300))
    scale = np.geomspace(1e-3, 1e3, 64).astype(np.float32)[:, None]
    x = x * (scale if order == "rising" else scale[::-1] if order == "falling" else 1)
    passes = []
    end_pass = KthSelector.end_pass
    monkeypatch.setattr(KthSelector, "end_pass", lambda self, p: (passes.append(p), end_pass(self, p))[1])
    tensors = [("w", x)]
    stages = [("prune", dict(sparsity=0.5)), ("quantize_int8",)]
    src = write_store(tmp_path / "in.zarr", tensors, (8, 300))
    r = sc.compress_store(src, tmp_path / "out.zarr", sc.CompressionConfig(tuple(to_stage(s) for s in stages)),
                          options=sc.EngineOptions(block_elems=2400))
    work, stats = ref_compress(tensors, stages)
    out = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert (bits(out["w"][...]) == bits(work[0][1])).all()
    assert [seed_fields(s) for s in r.stage_stats] == stats
    if order != "iid":
        assert passes == [0, 1, 2]  # the band missed: the two passes ran after it
