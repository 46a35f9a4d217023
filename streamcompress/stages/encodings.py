"""The stored forms of a quantized tensor, made from its runner's last block
(``stages.quantize._SchemeRunner``): ``QuantEncoding``, the codes, scales and
zero points (or mins) of FORMAT.md; ``GGMLEncoding``, a GGUF's ggml blocks."""

from __future__ import annotations

import math

import numpy as np

from .. import kernels as K
from ..layout import Block
from .base import ArraySpec, Encoding, StageRunner
from .schemes import QuantGranularity

__all__ = ["QuantEncoding", "GGMLEncoding", "BLOCK_BYTES"]


class QuantEncoding(Encoding):
    """Codes ``W``, scales ``W_scale`` and zero points ``W_zero_point`` (FORMAT.md)."""

    def __init__(self, runner: StageRunner) -> None:
        self.r = runner
        self.s = runner.s
        self.shape = runner.meta.shape

    def specs(self, out_chunks: tuple[int, ...]) -> list[ArraySpec]:
        s, shape = self.s, self.shape
        code_shape = s.code_shape(shape) if shape else (1,) if s.packed else ()
        code_chunks = tuple(out_chunks)
        if s.packed:
            if not shape:
                code_chunks = (1,)
            else:
                c = out_chunks[-1]
                code_chunks = code_chunks[:-1] + ((-(-c // 2)) if c >= shape[-1] else c // 2,)
        sshape = s.scale_shape(shape)
        if self.r.local and s.effective_granularity(shape) is QuantGranularity.GROUP:
            c = out_chunks[-1]
            schunks = tuple(out_chunks[:-1]) + ((sshape[-1] if c >= shape[-1] else c // s.group_size),)
        elif self.r.local and s.effective_granularity(shape) is QuantGranularity.CHANNEL:
            schunks = (out_chunks[0],) + (1,) * (len(shape) - 1)
        else:
            schunks = sshape
        attrs = {"quantization": s.format_attrs(shape)}
        specs = [ArraySpec("", code_shape, code_chunks, s.code_dtype, attrs),
                 ArraySpec("_scale", sshape, schunks, s.scale_dtype)]
        if s.has_min:
            specs.append(ArraySpec("_min", sshape, schunks, "float16"))
        elif not s.symmetric:
            specs.append(ArraySpec("_zero_point", sshape, schunks, "int8"))
        return specs

    def _scale_region(self, block: Block) -> tuple:
        s, shape = self.s, self.shape
        eg = s.effective_granularity(shape)
        if eg is QuantGranularity.GROUP:
            last = block.region[-1]
            lo, hi = last.start or 0, last.stop if last.stop is not None else shape[-1]
            return tuple(block.region[:-1]) + (slice(lo // s.group_size, -(-hi // s.group_size)),)
        if eg is QuantGranularity.CHANNEL:
            return (block.region[0],) + (slice(0, 1),) * (len(shape) - 1)
        return (slice(0, 1),)

    def emit(self, block: Block, x: np.ndarray) -> list[tuple[str, tuple, np.ndarray]]:
        b, codes, used, zp = self.r._last
        self.r._last = None  # the block's codes are not kept past their write (the runner outlives it)
        s, shape = self.s, self.shape
        if s.packed:
            nib = codes if not s.symmetric else codes + 8  # offset binary for signed int4
            bshape = block.shape if block.shape else (1,)
            data = K.pack_nibbles(nib.reshape(bshape))
            if shape:
                last = block.region[-1]
                lo = last.start or 0
                region = tuple(block.region[:-1]) + (slice(lo // 2, lo // 2 + data.shape[-1]),)
            else:
                region = (slice(0, 1),)
        else:
            data = codes.reshape(block.shape)
            region = block.region
        out = [("", region, data)]
        if self.r.local:
            sregion = self._scale_region(block)
            sshape = tuple(sl.stop - sl.start for sl in sregion)
            out.append(("_scale", sregion, used.astype(s.scale_dtype).reshape(sshape)))
            if s.has_min:
                out.append(("_min", sregion, zp.astype(np.float16).reshape(sshape)))
            elif not s.symmetric:
                out.append(("_zero_point", sregion, zp.astype(np.int8).reshape(sshape)))
        elif block.index == 0:  # whole scale arrays, written with the first block
            used_all, _, zp_all = self.r._glob
            sshape = s.scale_shape(shape)
            full = tuple(slice(0, d) for d in sshape)
            out.append(("_scale", full, used_all.astype(s.scale_dtype).reshape(sshape)))
            if not s.symmetric:
                out.append(("_zero_point", full, zp_all.astype(np.int8).reshape(sshape)))
        return out


#: bytes of one block of 32 of each ggml scheme
BLOCK_BYTES = {"q8_0": 34, "q4_0": 18, "q4_1": 20, "q5_0": 22, "q5_1": 24}


class GGMLEncoding(Encoding):
    """A ggml block scheme's tensor as the bytes a GGUF file holds: one flat
    uint8 array of its blocks of 32 (``d``, ``m``, ``qh``, ``qs``: see
    ``kernels.pack_ggml_blocks``), each block's bytes made straight from its
    codes and scales (no codes array of the whole tensor)."""

    def __init__(self, runner: StageRunner) -> None:
        self.r = runner
        self.s = runner.s
        self.kind = runner.s.name
        self.block_bytes = BLOCK_BYTES[self.kind]
        self.nbytes = runner.meta.size // 32 * self.block_bytes

    def specs(self, out_chunks: tuple[int, ...]) -> list[ArraySpec]:
        chunk = max(1, math.prod(out_chunks) // 32 * self.block_bytes)
        return [ArraySpec("", (self.nbytes,), (min(chunk, max(self.nbytes, 1)),), "uint8",
                          {"ggml": self.kind})]

    def emit(self, block: Block, x: np.ndarray) -> list[tuple[str, tuple, np.ndarray]]:
        last, self.r._last = self.r._last, None
        lo = block.start // 32 * self.block_bytes
        if len(last) == 2:  # made by apply_measured
            return [("", (slice(lo, lo + last[1].size),), last[1])]
        b, codes, used, zp = last
        half = {"q4_0": 8, "q5_0": 16}.get(self.kind, 0)
        q = codes.view(np.uint8)
        if half:
            q = q + np.uint8(half)  # (the signed _0 codes back to ggml's unsigned ones)
        with np.errstate(over="ignore"):
            d16 = used.astype(np.float16).view(np.uint16)
            m16 = zp.astype(np.float16).view(np.uint16) if self.s.has_min else np.empty(0, np.uint16)
        out = np.empty(used.size * self.block_bytes, np.uint8)
        K.pack_ggml_blocks(q, d16, m16, self.s.bits, out)
        return [("", (slice(lo, lo + out.size),), out)]
