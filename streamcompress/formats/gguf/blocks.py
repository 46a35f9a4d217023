"""ggml block bytes from the codes and scales a Zarr store holds (FORMAT.md), row
by row: what a GGUF file holds for Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1.

A block of 32 values is ``d`` (float16) [``m`` (float16): ``_1`` kinds] [``qh``
(4 bytes: bit 4 of each 5-bit code, value ``j`` in bit ``j``): 5-bit kinds]
then ``qs``: 8-bit codes as int8, 4-bit codes as 16 bytes whose low nibbles are
values 0..15 and high nibbles values 16..31 (5-bit: their low 4 bits).
"""

from __future__ import annotations

import numpy as np

__all__ = ["BITS", "BLOCK", "BLOCK_BYTES", "GGML_TYPE", "ggml_rows", "dequantize_blocks"]

#: values per block
BLOCK = 32
#: bytes per block of each scheme
BLOCK_BYTES = {"q8_0": 34, "q4_0": 18, "q4_1": 20, "q5_0": 22, "q5_1": 24}
#: ggml type numbers (GGMLQuantizationType)
GGML_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "bf16": 30}


#: bits per code of each scheme
BITS = {"q8_0": 8, "q4_0": 4, "q4_1": 4, "q5_0": 5, "q5_1": 5}


def ggml_rows(scheme: str, q: np.ndarray, d: np.ndarray, m: np.ndarray | None) -> np.ndarray:
    """``(rows, n / 32 * BLOCK_BYTES)`` uint8 from ``q``: the unsigned codes
    ``(rows, n)`` (``q + 8`` / ``q + 16`` of the signed ``_0`` codes, ``q``
    of ``_1``; int8 codes as they are for q8_0), ``d`` and ``m`` ``(rows, n / 32)``
    float16 (``kernels.pack_ggml_blocks``)."""
    from ... import kernels as K

    rows, n = q.shape
    nb = n // BLOCK
    out = np.empty(rows * nb * BLOCK_BYTES[scheme], np.uint8)
    qu = np.ascontiguousarray(q).reshape(-1)
    qu = qu.view(np.uint8) if qu.dtype in (np.int8, np.uint8) else qu.astype(np.uint8)
    d16 = np.ascontiguousarray(d, np.float16).reshape(-1).view(np.uint16)
    m16 = (np.ascontiguousarray(m, np.float16).reshape(-1).view(np.uint16) if m is not None
           else np.empty(0, np.uint16))
    K.pack_ggml_blocks(qu, d16, m16, BITS[scheme], out)
    return out.reshape(rows, nb * BLOCK_BYTES[scheme])


def dequantize_blocks(scheme: str, raw: np.ndarray) -> np.ndarray:
    """float32 values of ``(n_blocks, BLOCK_BYTES)`` uint8 blocks (as ggml dequantizes them)."""
    b = raw.reshape(-1, BLOCK_BYTES[scheme])
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    if scheme == "q8_0":
        return (b[:, 2:].view(np.int8).astype(np.float32) * d).reshape(-1)
    at = 2
    m = None
    if scheme.endswith("_1"):
        m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
        at = 4
    hi = None
    if scheme.startswith("q5"):
        hi = np.unpackbits(b[:, at:at + 4], axis=1, bitorder="little")  # bit j of the block: value j's bit 4
        at += 4
    qs = b[:, at:]
    q = np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=1)
    if hi is not None:
        q = q | (hi << np.uint8(4))
    if m is not None:
        return (q.astype(np.float32) * d + m).reshape(-1)
    half = 8 if scheme.startswith("q4") else 16
    return ((q.astype(np.int16) - half).astype(np.float32) * d).reshape(-1)
