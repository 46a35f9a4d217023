"""Block I/O of the engine: read-ahead, write-behind and completion threads, the
ring of reused read buffers, and the progress bar (counted in bytes read)."""

from __future__ import annotations

import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator

import numpy as np

from ..formats.base import TensorSource, stored_nbytes
from ..layout import Block
from .options import check_stop

__all__ = ["_IO", "_Progress"]


class _IO:
    """Read-ahead, write-behind and completion threads, and a ring of reused read buffers.

    ``WRITES`` writes run at once (on as many threads: each compresses its
    chunks, so two use both cores while the main thread computes); ``write``
    first waits for the oldest when that many are in flight. A read goes to a
    ring buffer nothing else references (the block in hand, or a write in
    flight that holds the block itself, keep theirs): two buffers when writes
    take codes, up to ``WRITES + 2`` when they take the block.
    """

    #: writes in flight at once
    WRITES = 2

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.reader = ThreadPoolExecutor(1, "sc-read") if enabled else None
        self.writer = ThreadPoolExecutor(self.WRITES, "sc-write") if enabled else None
        self.syncer = ThreadPoolExecutor(1, "sc-sync") if enabled else None
        self.pending: deque[Future] = deque()  # writes
        self.finishing: deque[Future] = deque()  # after_writes tasks
        self.ring: list[np.ndarray] = []

    def _free_buffer(self, need: int) -> np.ndarray:
        self.ring = [b for b in self.ring if b.size >= need]  # (smaller ones in use live on in their views)
        for buf in self.ring:
            if sys.getrefcount(buf) <= 3:  # the ring's, the loop's and the call's: no view of it is alive
                return buf
        buf = np.empty(need, np.float32)
        self.ring.append(buf)
        return buf

    def _reader(self, src: TensorSource, blocks: list[Block]):
        """``read(block)`` for this sweep: into the ring when the source can."""
        if not src.reads_into or not blocks:
            return src.read
        need = max(b.size for b in blocks)

        def read(b: Block) -> np.ndarray:
            return src.read_into(b, self._free_buffer(need))

        return read

    def sweep(self, src: TensorSource, blocks: list[Block], on_read):
        """A pipeline's ``sweep(readonly=False)`` over ``blocks`` of ``src``."""
        return lambda readonly=False: self.blocks(src, blocks, on_read, readonly)

    def blocks(self, src: TensorSource, blocks: list[Block], on_read, readonly: bool = False) -> Iterator:
        """``(block, flat float32)`` of each block in turn, the next one read on the
        reader thread while this one is in use. ``readonly``: the caller only
        reads the values, so blocks the source can map from the page cache come
        mapped (no copy; a block that cannot be mapped is read into the ring)."""
        read = self._reader(src, blocks)
        fetch = read
        if readonly and src.maps:
            def fetch(b: Block) -> np.ndarray:
                x = src.map_block(b)
                return read(b) if x is None else x

        if not self.enabled:
            for b in blocks:
                check_stop()
                x = fetch(b)
                on_read(b)
                yield b, x
                del x  # (a mapped block is unmapped before the next is mapped)
            return
        fut = self.reader.submit(fetch, blocks[0]) if blocks else None
        try:
            for i, b in enumerate(blocks):
                check_stop()
                x = fut.result()
                fut = self.reader.submit(fetch, blocks[i + 1]) if i + 1 < len(blocks) else None
                on_read(b)
                yield b, x
                del x
        finally:
            if fut is not None:
                fut.cancel()
                try:
                    fut.result()
                except BaseException:  # noqa: BLE001 - the reader's error is not ours to raise
                    pass

    def write(self, fn, *args) -> None:
        if not self.enabled:
            fn(*args)
            return
        while len(self.pending) >= self.WRITES:
            self.pending.popleft().result()
        self.pending.append(self.writer.submit(fn, *args))

    def after_writes(self, fn, *args) -> Future:
        """Run ``fn(*args)`` once every write submitted so far is done, on the one
        completion thread (the caller goes on; completions run in the order asked,
        and a write or ``fn`` that waits on the disk holds no writer thread); the
        future holds its result, or the first error of those writes or of ``fn``.
        Once one completion has failed, the later ones do not run (they raise
        its error): nothing after a failed tensor is recorded complete."""
        if not self.enabled:
            self.flush()
            fut: Future = Future()
            try:
                fut.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
                fut.set_exception(e)
            return fut
        earlier = list(self.pending)
        self.pending.clear()
        prev = self.finishing[-1] if self.finishing else None

        def run():
            for f in earlier:  # submitted before this task: each is running or ahead in the queue
                f.result()
            if prev is not None and prev.exception() is not None:  # (done: the one thread ran it first)
                raise prev.exception()
            return fn(*args)

        fut = self.syncer.submit(run)
        self.finishing.append(fut)
        return fut

    def flush(self) -> None:
        """Wait for every write and after_writes task (raising the first error)."""
        for q in (self.pending, self.finishing):
            while q:
                f = q.popleft()
                if not f.cancelled():  # (cancelled by a close after an earlier error: that error was raised)
                    f.result()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            for ex in (self.reader, self.writer, self.syncer):
                if ex is not None:
                    ex.shutdown(wait=True, cancel_futures=True)


class _Progress:
    def __init__(self, enabled: bool, total: int) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                            desc="compress", dynamic_ncols=True)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def on_read(self, src: TensorSource):
        """Callback counting a block of ``src`` as its stored bytes."""
        per_elem = stored_nbytes(src) / max(src.meta.size, 1)
        return lambda b: self.update(int(b.size * per_elem))

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text[-40:], refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
