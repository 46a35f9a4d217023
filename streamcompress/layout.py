"""Tensor metadata and the flat-contiguous block plan (pure, no I/O).

A tensor is streamed as *blocks*: hyper-rectangles that are also contiguous
ranges ``[start, start + size)`` of the C-order flat index. Processing blocks
in order therefore visits elements in flat order, which is what the seed's
tie rule ("lower flat index first"), the Random metric's LCG sequence and the
sequential float32 unit sums of structured pruning need. Blocks are aligned
to the storage chunks whenever a chunk-row fits the budget, so each chunk is
decoded once per pass and each output chunk is written once, whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["TensorMeta", "Block", "plan_blocks", "output_chunks"]


@dataclass(frozen=True)
class TensorMeta:
    """What the stages may know of a tensor before reading it."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def is_float(self) -> bool:
        return self.dtype in ("float32", "float64", "float16", "bfloat16")

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)


@dataclass(frozen=True)
class Block:
    """One streamed piece of a tensor: flat range ``[start, start+size)`` and its region."""

    index: int
    start: int
    region: tuple[slice, ...]
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _split_axis(shape: tuple[int, ...], max_elems: int) -> int:
    d = 0
    while d < len(shape) - 1 and math.prod(shape[d + 1 :]) > max_elems:
        d += 1
    return d


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _step(shape: tuple[int, ...], d: int, max_elems: int, align: tuple[int, ...] | None,
          multiple: int) -> int:
    inner = math.prod(shape[d + 1 :])
    step = max(1, min(shape[d], max_elems // max(inner, 1)))
    if step < shape[d]:
        m = multiple if d == len(shape) - 1 else 1
        c = math.lcm(align[d] if align is not None else 1, m)
        unit = c if step >= c else m
        step = max(unit, step // unit * unit)
        # As many blocks as that step makes, but as even as ``unit`` allows: the
        # last block (an output's edge chunk, stored padded to a whole chunk) is
        # not left nearly empty (2048 rows in steps of 1638 stored 3276 rows).
        n = _ceil_div(shape[d], step)
        step = _ceil_div(_ceil_div(shape[d], n), unit) * unit
    return step


def plan_blocks(
    shape: tuple[int, ...], max_elems: int, align: tuple[int, ...] | None = None, multiple: int = 1
) -> list[Block]:
    """Split ``shape`` into flat-contiguous blocks of at most ``max_elems`` elements.

    The block holds full trailing axes after a split axis ``d`` (the first
    axis whose trailing product fits), a range along ``d`` rounded down to a
    multiple of ``align[d]`` (the chunk shape) when at least one chunk fits,
    and single indices before ``d``; the blocks that step makes are then made
    as even as that multiple allows (so an edge block, an output's padded edge
    chunk, is not left nearly empty). A single trailing row larger than the
    budget is still one block (the budget is then exceeded by that row). When
    ``d`` is the last axis, block lengths are multiples of ``multiple`` (e.g.
    a quantization group), so no group straddles two blocks.

    Examples
    --------
    >>> [b.region for b in plan_blocks((4, 3), 6)]
    [(slice(0, 2, None), slice(0, 3, None)), (slice(2, 4, None), slice(0, 3, None))]
    >>> [b.start for b in plan_blocks((2, 2, 3), 4)]
    [0, 3, 6, 9]
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        return [Block(0, 0, (), ())]
    if math.prod(shape) == 0:
        return []
    max_elems = max(1, int(max_elems))
    d = _split_axis(shape, max_elems)
    step = _step(shape, d, max_elems, align, max(1, int(multiple)))
    inner = math.prod(shape[d + 1 :])
    tail = tuple(slice(0, s) for s in shape[d + 1 :])
    blocks: list[Block] = []
    for prefix in np.ndindex(*shape[:d]):
        base = int(np.ravel_multi_index(prefix, shape[:d])) * shape[d] * inner if d else 0
        head = tuple(slice(int(p), int(p) + 1) for p in prefix)
        for i0 in range(0, shape[d], step):
            i1 = min(i0 + step, shape[d])
            region = head + (slice(i0, i1),) + tail
            bshape = (1,) * d + (i1 - i0,) + shape[d + 1 :]
            blocks.append(Block(len(blocks), base + i0 * inner, region, bshape))
    return blocks


def output_chunks(
    shape: tuple[int, ...], blocks: list[Block], input_chunks: tuple[int, ...] | None
) -> tuple[int, ...]:
    """Chunk shape for the output so every output chunk lies inside one block.

    Keeps ``input_chunks`` when the plan is aligned to it, else uses the block shape.

    Examples
    --------
    >>> output_chunks((8, 4), plan_blocks((8, 4), 16, (2, 4)), (2, 4))
    (2, 4)
    """
    shape = tuple(shape)
    if len(shape) == 0:
        return ()
    if not blocks:
        return tuple(max(1, s) for s in shape)
    first = blocks[0].shape
    if input_chunks is not None and all(
        _fits(first[i], shape[i], input_chunks[i]) for i in range(len(shape))
    ):
        return tuple(int(c) for c in input_chunks)
    return tuple(max(1, s) for s in first)


def _fits(block_len: int, axis_len: int, chunk: int) -> bool:
    """True when blocks of ``block_len`` along an axis contain whole chunks."""
    if block_len >= axis_len:
        return True
    return block_len % chunk == 0
