"""Reading Zarr inputs: the direct chunk-file path equals zarr's own read."""

import numpy as np
import pytest
import zarr

from streamcompress.errors import InvalidStore, MissingChunk
from streamcompress.layout import plan_blocks
from streamcompress.formats.zarr import ZarrSource
from streamcompress.formats.zarr.direct import DirectChunks as _DirectChunks


def make(path, data, chunks, **kw):
    g = zarr.open_group(str(path), mode="a")
    a = g.create_array("t", shape=data.shape, chunks=chunks, dtype="float32", compressors=None,
                       fill_value=7.0, config={"write_empty_chunks": True}, **kw)
    a[...] = data
    return a


def read_all(src, max_elems):
    """Every block of a plan read with read_into (into a dirty reused buffer), joined."""
    buf = np.full(max_elems + 5, np.nan, np.float32)
    out = []
    for b in plan_blocks(src.meta.shape, max_elems):
        out.append(src.read_into(b, buf).copy())
    return np.concatenate(out)


@pytest.mark.parametrize("shape,chunks", [((10, 6), (4, 6)), ((37,), (8,)), ((5, 3, 4), (2, 3, 4))])
@pytest.mark.parametrize("max_elems", [1, 7, 12, 24, 1000])
def test_direct_reads_equal_the_array(tmp_path, shape, chunks, max_elems, monkeypatch):
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) * np.float32(0.5) - 3
    src = ZarrSource("t", make(tmp_path / "s.zarr", data, chunks))
    monkeypatch.setattr(ZarrSource, "read_raw", lambda *a, **k: pytest.fail("zarr read, not direct"))
    assert (read_all(src, max_elems) == data.reshape(-1)).all()
    assert isinstance(src._direct, _DirectChunks)


def test_a_missing_chunk_is_an_error_unless_fill_is_asked(tmp_path):
    data = np.arange(40, dtype=np.float32).reshape(10, 4)
    a = make(tmp_path / "s.zarr", data, (4, 4))
    (tmp_path / "s.zarr" / "t" / "c" / "1" / "0").unlink()
    with pytest.raises(MissingChunk, match=r"tensor 't' block 2 .*chunk 'c/1/0' .* is missing"):
        read_all(ZarrSource("t", a), 8)
    with pytest.raises(MissingChunk):  # also through mapped sweeps and zarr's own read
        ZarrSource("t", a).read_raw(plan_blocks(data.shape, 8)[2])
    expect = data.copy()
    expect[4:8] = 7.0  # zarr's reading: the fill value
    assert (read_all(ZarrSource("t", a, missing="fill"), 8) == expect.reshape(-1)).all()


def test_a_chunk_file_of_the_wrong_size_is_left_to_zarr(tmp_path):
    a = make(tmp_path / "s.zarr", np.ones((8, 4), np.float32), (4, 4))
    f = tmp_path / "s.zarr" / "t" / "c" / "1" / "0"
    f.write_bytes(f.read_bytes()[:-4])
    with pytest.raises(InvalidStore, match="cannot read its chunk data"):
        read_all(ZarrSource("t", a), 16)


@pytest.mark.parametrize("kw", [dict(chunks=(4, 2)), dict(chunks=(4, 4), compressors="auto")])
def test_not_direct_when_chunks_split_rows_or_are_compressed(tmp_path, kw):
    data = np.arange(32, dtype=np.float32).reshape(8, 4)
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    a = g.create_array("t", shape=data.shape, dtype="float32", **kw)
    a[...] = data
    src = ZarrSource("t", a)
    assert (read_all(src, 8) == data.reshape(-1)).all()
    assert src._direct is False


def test_mapped_blocks_equal_the_data_and_writes_stay_private(tmp_path):
    data = np.arange(60, dtype=np.float32).reshape(10, 6)
    a = make(tmp_path / "s.zarr", data, (4, 6))
    src = ZarrSource("t", a)
    blocks = plan_blocks(src.meta.shape, 12)  # rows 0-1, 2-3 (chunk 0), 4-5, 6-7 (chunk 1), 8-9 (edge chunk)
    for b in blocks:
        x = src.map_block(b)
        assert x is not None and (x == data.reshape(-1)[b.start:b.start + b.size]).all()
        x[:] = -1  # copy-on-write: the file keeps its values
    assert (np.asarray(zarr.open_array(str(tmp_path / "s.zarr" / "t"))[...]) == data).all()
    across = plan_blocks(src.meta.shape, 18)[1]  # rows 3-5 span chunks 0 and 1
    assert src.map_block(across) is None
    (tmp_path / "s.zarr" / "t" / "c" / "1" / "0").unlink()
    assert src.map_block(blocks[2]) is None  # a missing chunk is zarr's to fill


def test_compressed_arrays_are_not_mapped(tmp_path):
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    a = g.create_array("t", shape=(8, 4), chunks=(4, 4), dtype="float32")
    a[...] = 1
    assert ZarrSource("t", a).map_block(plan_blocks((8, 4), 16)[0]) is None


@pytest.mark.parametrize("held", [0, 1, 2])
def test_read_buffers_are_reused_only_when_nothing_holds_them(tmp_path, held):
    """The engine's ring: a block still referenced (in hand, or held by a write in
    flight) is never overwritten by a later read; free buffers are reused."""
    from streamcompress.engine import _IO

    data = np.arange(64 * 8, dtype=np.float32).reshape(64, 8)
    src = ZarrSource("t", make(tmp_path / "s.zarr", data, (8, 8)))
    blocks = plan_blocks(src.meta.shape, 64)
    io = _IO(True)
    try:
        kept = []
        for b, x in io.blocks(src, blocks, lambda b: None):
            kept.append((b, x.reshape(b.shape)))  # like a write that takes the block itself
            kept = kept[-held:] if held else []
            for kb, kx in kept:
                assert (kx == data[kb.region]).all()
        assert len(io.ring) <= held + 2
    finally:
        io.close()


@pytest.mark.parametrize("codec", ["zstd", "none"])
@pytest.mark.parametrize("dtype,shape,chunks", [("int8", (10, 6), (4, 6)), ("float32", (9, 5, 4), (4, 5, 2)),
                                                ("float16", (7, 1), (3, 1)), ("uint8", (13,), (5,))])
def test_sink_writes_the_chunk_files_zarr_writes(tmp_path, codec, dtype, shape, chunks, monkeypatch):
    """Whole chunks go straight to their files (edge chunks padded): byte for byte
    what zarr itself writes for the same array, and read back by zarr."""
    from streamcompress.formats.zarr import ZarrSink
    from streamcompress.formats.zarr.direct import ChunkWriter as _ChunkWriter

    rng = np.random.default_rng(0)
    data = (rng.standard_normal(shape) * 40).astype(dtype)
    direct = []
    real_write = _ChunkWriter.write
    monkeypatch.setattr(_ChunkWriter, "write", lambda self, r, d: direct.append(real_write(self, r, d)) or direct[-1])
    sinks = {}
    for how in ("direct", "zarr"):
        sink = sinks[how] = ZarrSink(tmp_path / f"{how}.zarr", codec=codec)
        sink.create("a", shape, chunks, dtype, {})
        if how == "zarr":
            sink.writers["a"] = False  # zarr writes every region
        grid = [range(0, d, c) for d, c in zip(shape, chunks)]
        for lo in np.stack(np.meshgrid(*grid, indexing="ij"), -1).reshape(-1, len(shape)):
            region = tuple(slice(int(a), min(int(a) + c, d)) for a, c, d in zip(lo, chunks, shape))
            sink.write("a", region, data[region])
    assert isinstance(sinks["direct"].writers["a"], _ChunkWriter) and direct and all(direct)  # every chunk
    files = {how: {p.relative_to(tmp_path / f"{how}.zarr" / "a"): p.read_bytes()
                   for p in (tmp_path / f"{how}.zarr" / "a" / "c").rglob("*") if p.is_file()} for how in sinks}
    assert files["direct"] == files["zarr"] and len(files["zarr"]) == np.prod([-(-d // c) for d, c in zip(shape, chunks)])
    back = zarr.open_group(str(tmp_path / "direct.zarr"), mode="r")["a"][...]
    assert back.dtype == data.dtype and (back.view(np.uint8) == data.view(np.uint8)).all()


@pytest.mark.parametrize("codec", ["zstd", "none"])
def test_sink_writes_the_metadata_zarr_writes_and_asks_zarr_once_per_dtype(tmp_path, codec, monkeypatch):
    """Arrays after the first of their data type are made, completed (their
    attributes updated) and sized directly: every ``zarr.json`` byte for byte the
    one zarr writes, and zarr's own create, update and size are not called."""
    from streamcompress.formats.zarr import ZarrSink

    arrays = [("a", (10, 6), (4, 6), "int8"), ("b", (9, 5, 4), (4, 5, 2), "float32"),
              ("c", (7, 3), (7, 3), "int8"), ("d", (5,), (5,), "float32"), ("e", (), (), "float32"),
              ("f", (), (), "float32"), ("g", (300, 2), (100, 2), "float16"), ("h", (3, 2), (2, 2), "float16")]
    info = {"complete": True, "stored_bytes": 12, "x": [1.5, float("nan")], "s": "\u00e9"}
    ref = ZarrSink(tmp_path / "ref.zarr", codec=codec)
    for name, shape, chunks, dtype in arrays:
        ref.group.create_array(name, shape=shape, chunks=chunks if shape else (), dtype=dtype,
                               compressors=ref._compressors(), fill_value=0, attributes={"k": name},
                               config=ref.CONFIG)
        ref.group[name].attrs.update({"streamcompress": info})
    from zarr.core.attributes import Attributes

    creates = []
    real_create, real_size = zarr.Group.create_array, zarr.Array.nbytes_stored
    monkeypatch.setattr(zarr.Group, "create_array",
                        lambda self, name, **k: creates.append(name) or real_create(self, name, **k))
    monkeypatch.setattr(zarr.Array, "nbytes_stored", lambda self: pytest.fail("zarr's size"))
    monkeypatch.setattr(Attributes, "update", lambda *a: pytest.fail("zarr's update"))
    sink = ZarrSink(tmp_path / "o.zarr", codec=codec)
    for name, shape, chunks, dtype in arrays:
        sink.create(name, shape, chunks, dtype, {"k": name})
        sink.write(name, tuple(slice(0, n) for n in shape), np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape))
        assert sink.stored_bytes(name) == real_size(zarr.open_array(str(tmp_path / "o.zarr" / name), mode="r"))
        sink.update_attrs(name, {"streamcompress": info})
    assert creates == ["a", "b", "e", "g"]  # the first of each data type (0-d apart)
    monkeypatch.undo()
    for name, *_ in arrays:
        assert (tmp_path / "o.zarr" / name / "zarr.json").read_bytes() == \
            (tmp_path / "ref.zarr" / name / "zarr.json").read_bytes(), name
    g = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")
    for name, shape, _, dtype in arrays:
        assert (g[name][...] == np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)).all()
        assert g[name].attrs["streamcompress"]["complete"] is True


def test_sink_leaves_other_regions_and_dtypes_to_zarr(tmp_path):
    from streamcompress.formats.zarr import ZarrSink

    sink = ZarrSink(tmp_path / "o.zarr")
    sink.create("a", (8, 4), (4, 4), "float32", {})
    sink.write("a", (slice(0, 4), slice(0, 4)), np.ones((4, 4), np.float64))  # zarr casts it
    sink.write("a", (slice(4, 6), slice(0, 4)), np.full((2, 4), 2, np.float32))  # part of a chunk
    back = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")["a"][...]
    assert (back[:4] == 1).all() and (back[4:6] == 2).all() and (back[6:] == 0).all()


def test_sweeps_of_raw_stores_never_go_through_zarr_reads(tmp_path, monkeypatch):
    """Blocks that straddle chunks (not mappable) are read directly into the ring,
    in statistic sweeps too: zarr's read (a new buffer per block) is not used
    (it raised peak RSS by 100 MiB with a small budget)."""
    import streamcompress as sc

    rng = np.random.default_rng(1)
    data = rng.standard_normal((40, 16)).astype(np.float32)
    make(tmp_path / "s.zarr", data, (8, 16))
    zarr.open_group(str(tmp_path / "s.zarr")).attrs["tensor_order"] = ["t"]
    cfg = sc.CompressionConfig((sc.Prune(sc.PruningConfig(0.5)), sc.QuantizeInt8()))
    expect = sc.compress_model({"t": data}, cfg).compressed_tensors[0].data
    monkeypatch.setattr(ZarrSource, "read_raw", lambda *a, **k: pytest.fail("zarr read"))
    r = sc.compress_model(str(tmp_path / "s.zarr"), cfg, output=tmp_path / "o.zarr",
                          options=sc.EngineOptions(block_elems=3 * 16))  # 3-row blocks: some straddle 8-row chunks
    out = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")["t"][...]
    assert (out.view(np.uint32) == np.asarray(expect).view(np.uint32)).all() and r.total_nonzero > 0


@pytest.mark.parametrize("location", ["start", "end"])
@pytest.mark.parametrize("crc", [True, False])
def test_a_missing_inner_chunk_of_a_shard_is_an_error_unless_fill_is_asked(tmp_path, location, crc, rng):
    """A shard holds the inner chunks its writer got to (zarr marks the others
    empty in the shard's index, and reads them as the fill value): a region
    touching one that is not stored is a MissingChunk, whichever way the index is
    laid out; regions of stored chunks read as written."""
    from zarr.codecs import BytesCodec, ShardingCodec

    from streamcompress.formats.zarr.reader import read_region

    kw = {} if crc else {"index_codecs": [BytesCodec()]}
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    a = g.create_array("t", shape=(10, 6), chunks=(4, 6), dtype="float32", compressors=None, fill_value=0.0,
                       serializer=ShardingCodec(chunk_shape=(2, 3), index_location=location, **kw))
    data = rng.standard_normal((10, 6)).astype(np.float32)
    stored = rng.random((5, 2)) < 0.6  # which inner chunks the writer got to
    stored[[0, 2, 4], 0] = True  # each shard file exists: only its index tells
    stored[4, 1] = False
    for i, j in zip(*np.nonzero(stored)):
        a[2 * i:2 * i + 2, 3 * j:3 * j + 3] = data[2 * i:2 * i + 2, 3 * j:3 * j + 3]
    a = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["t"]
    for _ in range(40):
        r0, c0 = int(rng.integers(0, 10)), int(rng.integers(0, 6))
        r1, c1 = int(rng.integers(r0 + 1, 11)), int(rng.integers(c0 + 1, 7))
        region = (slice(r0, r1), slice(c0, c1))
        touched = stored[r0 // 2:(r1 - 1) // 2 + 1, c0 // 3:(c1 - 1) // 3 + 1]
        if touched.all():
            assert (read_region(a, region, "t", "here") == data[region]).all()
        else:
            with pytest.raises(MissingChunk, match=r"tensor 't' here: inner chunk \(\d, \d\) of shard 'c/\d/0'"):
                read_region(a, region, "t", "here")
        expect = np.where(np.repeat(np.repeat(stored, 2, 0), 3, 1), data, 0.0)[region]
        assert (read_region(a, region, "t", "here", missing="fill") == expect).all()
    with pytest.raises(MissingChunk):  # through a source's block reads too
        read_all(ZarrSource("t", a), 12)


def test_a_shard_index_of_an_unknown_encoding_is_refused_not_trusted(tmp_path, monkeypatch):
    from streamcompress.formats.zarr import shards

    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    a = g.create_array("t", shape=(4, 6), chunks=(2, 6), shards=(4, 6), dtype="float32")
    a[...] = 1.0
    monkeypatch.setattr(shards, "_index_layout", lambda codec: None)
    with pytest.raises(InvalidStore, match="cannot tell the stored chunks of shard 'c/0/0'.*--missing-chunks fill"):
        read_all(ZarrSource("t", a), 12)
    assert (read_all(ZarrSource("t", a, missing="fill"), 12) == 1.0).all()
