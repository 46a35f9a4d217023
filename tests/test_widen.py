"""bfloat16 inputs widened to float32 by a kernel into the engine's reused buffers:
exact for every bit pattern, for safetensors, GGUF and Zarr (direct and zarr-read)
inputs, across block plans, and a damaged input is still an error."""

import ml_dtypes
import numpy as np
import pytest
import zarr
from safetensors.numpy import save_file

from streamcompress import kernels as K
from streamcompress.errors import MissingChunk
from streamcompress.formats.base import _widen
from streamcompress.formats.gguf.reader import GGUFFormat
from streamcompress.formats.safetensors import scan_checkpoint
from streamcompress.formats.zarr import ZarrSource
from streamcompress.layout import plan_blocks


def every_pattern(rows: int = 1024) -> np.ndarray:
    """All 65536 bfloat16 bit patterns (NaN payloads, infinities, subnormals, -0), shuffled, as (rows, -1)."""
    bits = np.random.default_rng(3).permutation(np.arange(1 << 16, dtype=np.uint32)).astype(np.uint16)
    return bits.reshape(rows, -1)


def expected(bits: np.ndarray) -> np.ndarray:
    """float32 bit patterns of the exact widening (bits << 16)."""
    return bits.reshape(-1).astype(np.uint32) << np.uint32(16)


def read_all_into(src, max_elems):
    """Each block of a plan read with read_into into one dirty buffer: (uint32 bits, all results shared it)."""
    buf = np.full(max_elems + 3, np.nan, np.float32)
    out, shared = [], True
    for b in plan_blocks(src.meta.shape, max_elems):
        x = src.read_into(b, buf)
        shared &= np.shares_memory(x, buf)
        out.append(x.view(np.uint32).copy())
    return np.concatenate(out), shared


def test_the_kernel_widens_every_bit_pattern_exactly():
    bits = every_pattern().reshape(-1)
    out = np.empty(bits.size, np.float32)
    K.widen_bf16(bits, out.view(np.uint32))
    assert (out.view(np.uint32) == expected(bits)).all()
    ref = bits.view(ml_dtypes.bfloat16).astype(np.float32)  # and what ml_dtypes makes of the numbers
    assert np.array_equal(out, ref, equal_nan=True)
    assert (_widen(bits, "bfloat16").view(np.uint32) == expected(bits)).all()  # read() too


@pytest.mark.parametrize("max_elems", [333, 64 * 16, 1 << 17])
def test_safetensors_bf16_is_widened_into_the_buffer(tmp_path, max_elems):
    bits = every_pattern()
    save_file({"w": bits.view(ml_dtypes.bfloat16), "b": bits[0].view(ml_dtypes.bfloat16)}, tmp_path / "m.safetensors")
    sources = {s.meta.name: s for s in scan_checkpoint(tmp_path / "m.safetensors")[0]}
    for name, want in (("w", bits), ("b", bits[0])):
        src = sources[name]
        assert src.reads_into and not src.maps  # (a float32 mapping of bf16 bits would be wrong)
        got, shared = read_all_into(src, max_elems)
        assert shared and (got == expected(want)).all()


@pytest.mark.parametrize("max_elems", [333, 4096, 1 << 17])
def test_gguf_bf16_is_widened_into_the_buffer(tmp_path, max_elems):
    from gguf import GGMLQuantizationType as T
    from gguf import GGUFWriter

    bits = every_pattern()
    w = GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    w.add_tensor("w", bits, raw_shape=bits.shape, raw_dtype=T.BF16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    (src,) = GGUFFormat.open(tmp_path / "m.gguf").sources
    assert src.logical_dtype == "bfloat16" and src.reads_into
    got, shared = read_all_into(src, max_elems)
    assert shared and (got == expected(bits)).all()


def bf16_array(path, bits, chunks, **kw):
    g = zarr.open_group(str(path), mode="a")
    a = g.create_array("t", shape=bits.shape, chunks=chunks, dtype="uint16", fill_value=0,
                       attributes={"logical_dtype": "bfloat16"}, config={"write_empty_chunks": True}, **kw)
    a[...] = bits
    return a


@pytest.mark.parametrize("compressors", [None, "auto"])
@pytest.mark.parametrize("max_elems", [333, 64 * 100, 64 * 300, 1 << 17])
def test_zarr_bf16_is_widened_into_the_buffer(tmp_path, compressors, max_elems):
    bits = every_pattern()
    src = ZarrSource("t", bf16_array(tmp_path / "s.zarr", bits, (100, 64), compressors=compressors))
    assert src.reads_into and not src.maps
    got, shared = read_all_into(src, max_elems)  # blocks inside a chunk, across chunks, the edge chunk
    assert shared and (got == expected(bits)).all()


@pytest.mark.parametrize("compressors", [None, "auto"])
def test_a_missing_bf16_chunk_is_still_an_error(tmp_path, compressors):
    bits = every_pattern()
    a = bf16_array(tmp_path / "s.zarr", bits, (100, 64), compressors=compressors)
    (tmp_path / "s.zarr" / "t" / "c" / "1" / "0").unlink()
    with pytest.raises(MissingChunk, match=r"tensor 't' .*chunk 'c/1/0' .* is missing"):
        read_all_into(ZarrSource("t", a), 64 * 100)
    got, _ = read_all_into(ZarrSource("t", a, missing="fill"), 64 * 100)
    want = expected(bits).reshape(bits.shape)
    want[100:200] = 0
    assert (got == want.reshape(-1)).all()
