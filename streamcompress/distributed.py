"""Run the engine's work on a Dask distributed cluster.

:class:`DaskExecutor` plugs into :func:`streamcompress.engine.compress_model`
in place of the in-process executor; everything else (validation, block
plans, pipelines, stats, resume records, the report) is the engine's.

* **Tasks.** A tensor is one task: a worker opens the input by path,
  rebuilds the same block plan and pipeline, runs the tensor's statistic
  passes and apply sweep with read-ahead/write-behind, writes its output
  arrays, makes them durable and marks the tensor complete, as the local
  engine does. A tensor stored in more than ``split_bytes`` is split into
  ranges of whole blocks (blocks are aligned to output chunks, so every
  output chunk is still written by exactly one task): each statistic pass
  runs one task per range, the ranges' partials (histograms, absmax,
  min/max) are merged with the runner's own monoid (``merge_partials``) and
  the pass ends on the client's copy of the pipeline, which is then sent
  with the apply tasks; prune's tie count, carried from block to block, is
  read off each range's last histogram so every range starts from the right
  count. Structured pruning (sequential float32 sums) is never split.
* **Global statistics** (global pruning's histograms) are Dask reductions:
  one task per tensor (or range) returns its partial
  (``GlobalState.take_partial``), partials are merged pairwise on the
  workers with the state's own monoid (``merge_partials``) and the sum goes
  to the run's state before its ``end_pass``. The count carried from tensor
  to tensor (ties at the threshold, earlier tensors first) is read off each
  last partial, so tasks run in any order and still match the local engine
  bit for bit.
* **Stats** come back per tensor and are folded in model order by the
  engine: the same float sums as a local run.
* **Threads.** Each task caps Numba's threads to the worker's share of the
  machine's cores (``cores // task threads``), since Dask does not set
  ``NUMBA_NUM_THREADS``; a local cluster also gets it in its environment.
* **Failures.** A worker lost mid-task is retried by Dask on another worker
  (``distributed.scheduler.allowed-failures``); a retried task rewrites
  whole chunks with the same bytes, so the output stays correct.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from .config import CompressionConfig
from .engine.io import _IO, _Progress
from .engine.local import block_writer, create_outputs, finish_tensor, process_tensor
from .engine.options import EngineOptions, check_stop, parse_size
from .engine.plan import Run, _prepare, load_sources
from .errors import ConfigError, StreamCompressError
from .formats.base import stored_nbytes
from .formats.zarr import ZarrSink

__all__ = ["DaskExecutor"]

log = logging.getLogger("streamcompress")


@dataclass(frozen=True)
class _Job:
    """What a worker needs to rebuild the client's :class:`Run` (small, pickled once per task)."""

    input: str
    output: str
    config: CompressionConfig
    options: EngineOptions
    skip: tuple[bool, ...]
    input_fps: tuple[str, ...]
    key: str  # the run's pipeline and input fingerprints


class TaskError(StreamCompressError):
    """An error raised on a worker, carried back as its message (exception
    classes with custom constructors do not always survive pickling)."""


_RUNS: dict[tuple[str, str, str], Run] = {}  # per worker process: the last run rebuilt


def _worker_run(job: _Job) -> Run:
    k = (job.input, job.output, job.key)
    run = _RUNS.get(k)
    if run is None:
        sources = load_sources(job.input, job.options.missing_chunks)
        if len(sources) != len(job.skip):
            raise ConfigError(f"the input '{job.input}' seen by this worker differs from the client's")
        run = _prepare(sources, job.config, list(job.skip), job.options, list(job.input_fps))
        _RUNS.clear()
        _RUNS[k] = run
    return run


def _limit_threads() -> int:
    """Cap Numba's threads (thread-local) to this task's share of the cores."""
    import numba

    from . import kernels as K

    try:
        from distributed import get_worker

        tasks = max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        tasks = 1
    n = max(1, min(int(numba.config.NUMBA_NUM_THREADS), (os.cpu_count() or 1) // tasks))
    numba.set_num_threads(n)
    K.check_threading_layer()
    return n


def _task(fn):
    """A task function: errors come back as their one-line message."""

    @functools.wraps(fn)
    def task(*args):
        try:
            return fn(*args)
        except StreamCompressError as e:
            raise TaskError(str(e)) from None

    return task


@contextmanager
def _on_worker(job: _Job) -> Iterator[tuple[Run, _IO]]:
    """What every task starts with: its Numba threads capped, the run rebuilt
    (once per worker process), and read-ahead/write-behind threads."""
    _limit_threads()
    run = _worker_run(job)
    io = _IO(job.options.prefetch)
    try:
        yield run, io
    finally:
        io.close()


def _sweep(io: _IO, run: Run, i: int, blocks: list):
    return io.sweep(run.sources[i], blocks, lambda b: None)  # progress is the client's


@_task
def _global_task(job: _Job, i: int, gi: int, p: int, states: list) -> Any:
    with _on_worker(job) as (run, io):
        run.pipeline(i, states).global_pass(gi, p, _sweep(io, run, i, run.plans[i]))
    return states[gi].take_partial()


def _merge_task(state_type: type, a: Any, b: Any) -> Any:
    return state_type.merge_partials(a, b)


def _carry_task(state: Any, partial: Any) -> int:
    return state.tensor_carry(partial)


@_task
def _tensor_task(job: _Job, i: int, states: list):
    with _on_worker(job) as (run, io):
        sink = ZarrSink.attach(job.output, job.options.codec)
        return process_tensor(run, i, run.pipeline(i, states), sink, io, _Progress(False, 0))


@_task
def _range_observe_task(job: _Job, i: int, j: int, p: int, pipe: Any, lo: int, hi: int, starts: list) -> Any:
    with _on_worker(job) as (run, io):
        pipe.observe_sweep(j, p, _sweep(io, run, i, run.plans[i][lo:hi]), starts)
    return pipe.runners[j].take_partial(p)


@_task
def _range_apply_task(job: _Job, i: int, pipe: Any, lo: int, hi: int, starts: list):
    with _on_worker(job) as (run, io):
        sink = ZarrSink.attach(job.output, job.options.codec)
        per_block = pipe.apply_sweep(_sweep(io, run, i, run.plans[i][lo:hi]),
                                     block_writer(sink, io, run.sources[i].meta.name), starts)
        io.flush()
    return per_block, [r.info() for r in pipe.runners]


class DaskExecutor:
    """Runs a compression on a Dask cluster (see the module docstring).

    Parameters
    ----------
    scheduler : address of a running scheduler (``tcp://host:8786``); the
        workers must see the input and output paths (a shared filesystem).
    workers : start a local cluster of this many worker processes instead
        (one task thread each; Numba threads = cores // workers).
    client : an existing ``distributed.Client`` (tests, notebooks); not closed.
    split_bytes : a tensor stored in more than this is split into ranges of
        whole blocks of about this size, each a task (default 1 GiB).
    """

    def __init__(self, scheduler: str | None = None, workers: int | None = None, *, client: Any = None,
                 split_bytes: int | str = "1GiB") -> None:
        if client is None and (scheduler is None) == (workers is None):
            raise ConfigError("give either a scheduler address or a number of workers")
        if workers is not None and int(workers) < 1:
            raise ConfigError(f"--workers must be at least 1, got {workers}")
        self.scheduler = scheduler
        self.workers = workers
        self.client = client
        self.split_bytes = parse_size(split_bytes)
        self._own: list[Any] = []  # what close() shuts down
        #: global stage -> tensor -> its ranges' last-pass partial futures (one range if not split)
        self._last: dict[int, dict[int, list]] = {}
        #: global stage -> tensor -> carried count before each of its ranges
        self._carried: dict[int, list[list[int]]] = {}
        self._ranges: dict[int, list[tuple[int, int]]] = {}  # split tensors -> block ranges
        self._rc: dict[tuple[int, int], list[int]] = {}  # (tensor, runner) -> carried count before each range
        self.job: _Job | None = None

    # -- engine protocol ---------------------------------------------------------------
    def check(self, run: Run, tensors: Any, output: Any) -> None:
        if not isinstance(tensors, (str, os.PathLike)):
            raise ConfigError("a Dask run reads its input by path: pass a store or checkpoint path")
        if output is None:
            raise ConfigError("a Dask run writes a Zarr store: pass an output path")
        self.job = _Job(os.path.abspath(tensors), os.path.abspath(output), run.config, run.options,
                        tuple(run.skip), tuple(run.input_fps), run.pipeline_fp + run.input_fp)
        for i, pipe in enumerate(run.pipelines):
            ranges = self._split(run, i)
            if ranges is not None:
                self._ranges[i] = ranges
                pipe.prepare_split()
        self._connect()

    def global_pass(self, run: Run, gi: int, p: int, progress: _Progress) -> None:
        self._settle_carries(run)
        state = run.states[gi]
        futs: dict[int, list] = {}
        for i, pipe in enumerate(run.pipelines):
            if pipe is None:
                continue
            if i in self._ranges:
                self._split_stats(run, i, gi, progress)
                futs[i] = [self.client.submit(_range_observe_task, self.job, i, gi, p, pipe, lo, hi,
                                              self._starts(run, i, k, gi), pure=False)
                           for k, (lo, hi) in enumerate(self._ranges[i])]
            else:
                futs[i] = [self.client.submit(_global_task, self.job, i, gi, p, self._states(run, i), pure=False)]
        index = {f: (i, k) for i, fs in futs.items() for k, f in enumerate(fs)}
        for f in _completed(list(index)):
            f.result()  # raise a task's error here
            i, k = index[f]
            progress.update(self._range_bytes(run, i, k) if i in self._ranges else stored_nbytes(run.sources[i]))
        total = self._tree_reduce(type(state), [f for fs in futs.values() for f in fs])
        state.add_partial(total.result() if total is not None else None)
        if p == state.n_passes - 1:
            self._last[gi] = futs  # the carried counts are read off these once the pass has ended

    def tensors(self, run: Run, resumed: dict[int, dict[str, Any]], sink: Any,
                progress: _Progress) -> Iterator[tuple[int, list, dict[str, Any]]]:
        self._settle_carries(run)
        todo = [i for i in range(len(run.sources)) if i not in resumed]
        whole = {self.client.submit(_tensor_task, self.job, i, self._states(run, i), pure=False): i
                 for i in todo if i not in self._ranges}
        parts: dict[Any, tuple[int, int]] = {}  # range future -> (tensor, range)
        split: dict[int, dict] = {}
        for i in todo:
            if i in self._ranges:  # statistics first (ranges in parallel), then the apply ranges
                pipe = run.pipelines[i]
                self._split_stats(run, i, len(pipe.runners), progress)
                split[i] = {"written": create_outputs(run, i, pipe, sink), "done": {}}
                for k, (lo, hi) in enumerate(self._ranges[i]):
                    f = self.client.submit(_range_apply_task, self.job, i, pipe, lo, hi,
                                           self._starts(run, i, k, len(pipe.runners)), pure=False)
                    parts[f] = (i, k)
        global_sweeps = sum(st.n_passes for st in run.states if st is not None)
        try:
            for fut in _completed([*whole, *parts]):
                if fut in whole:
                    i = whole[fut]
                    stats, info = fut.result()
                    g = global_sweeps if run.pipelines[i] is not None else 0
                    progress.update((run.sweeps(i) - g) * stored_nbytes(run.sources[i]))
                    progress.describe(run.sources[i].meta.name)
                    yield i, stats, info
                    continue
                i, k = parts[fut]
                split[i]["done"][k] = fut.result()
                progress.update(self._range_bytes(run, i, k))
                if len(split[i]["done"]) == len(self._ranges[i]):
                    yield i, *self._finish_split(run, i, sink, split.pop(i))
        finally:  # stopped early (error, SIGINT): drop the work not started
            pending = [f for f in [*whole, *parts] if not f.done()]
            if pending:
                self.client.cancel(pending)

    def close(self) -> None:
        self._last.clear()
        for obj in reversed(self._own):
            try:
                obj.close()
            except Exception:  # noqa: BLE001 - shutting down
                pass
        self._own.clear()
        if self._own_client:
            self.client = None

    # -- helpers -------------------------------------------------------------------------
    _own_client = False
    #: how long to wait for a scheduler (before the output is made)
    CONNECT_TIMEOUT = "10s"

    def _connect(self) -> None:
        if self.client is not None:
            return
        from distributed import Client, LocalCluster

        # distributed logs at INFO by its own config; keep it to warnings unless asked (-v)
        logging.getLogger("distributed").setLevel(min(logging.WARNING, log.getEffectiveLevel()))
        if self.scheduler is not None:
            try:
                self.client = Client(self.scheduler, timeout=self.CONNECT_TIMEOUT)
            except OSError as e:
                raise ConfigError(f"cannot reach the Dask scheduler at {self.scheduler} within "
                                  f"{self.CONNECT_TIMEOUT}: {e} (nothing was written)") from None
        else:
            n = int(self.workers)
            threads = max(1, (os.cpu_count() or 1) // n)
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                                   silence_logs=logging.ERROR, env={"NUMBA_NUM_THREADS": str(threads)})
            self._own.append(cluster)
            self.client = Client(cluster)
        self._own.append(self.client)
        self._own_client = True
        log.info("dask: %s", self.client)

    def _split(self, run: Run, i: int) -> list[tuple[int, int]] | None:
        """Block ranges of about ``split_bytes`` for a big tensor whose passes can be split."""
        pipe = run.pipelines[i]
        if pipe is None or not pipe.splittable:
            return None
        per_elem = stored_nbytes(run.sources[i]) / max(run.sources[i].meta.size, 1)
        ranges, lo, acc = [], 0, 0.0
        for k, b in enumerate(run.plans[i]):
            if k > lo and acc + b.size * per_elem > self.split_bytes:
                ranges.append((lo, k))
                lo, acc = k, 0.0
            acc += b.size * per_elem
        ranges.append((lo, len(run.plans[i])))
        return ranges if len(ranges) > 1 else None

    def _range_bytes(self, run: Run, i: int, k: int) -> int:
        lo, hi = self._ranges[i][k]
        src = run.sources[i]
        return sum(b.size for b in run.plans[i][lo:hi]) * src.stored_itemsize

    def _starts(self, run: Run, i: int, k: int, upto: int) -> list:
        """What each runner ``< upto`` of split tensor ``i`` carries into its range ``k``."""
        out: list = []
        for j in range(upto):
            if run.states[j] is not None:
                out.append(self._carried[j][i][k] if j in self._carried else None)
            else:
                rc = self._rc.get((i, j))
                out.append(rc[k] if rc is not None else None)
        return out

    def _split_stats(self, run: Run, i: int, upto: int, progress: _Progress) -> None:
        """Per-tensor statistic passes of runners ``< upto`` of split tensor ``i``: each
        pass's ranges run as tasks, their partials merge with the runner's monoid."""
        pipe = run.pipelines[i]
        for j in range(upto):
            r = pipe.runners[j]
            if pipe._stats_done[j]:
                continue
            p, parts = 0, []
            while p < r.n_passes:
                futs = [self.client.submit(_range_observe_task, self.job, i, j, p, pipe, lo, hi,
                                           self._starts(run, i, k, j), pure=False)
                        for k, (lo, hi) in enumerate(self._ranges[i])]
                parts = self.client.gather(futs)  # (in range order; errors raise here)
                progress.update(sum(self._range_bytes(run, i, k) for k in range(len(futs))))
                merged = None
                for part in parts:
                    merged = type(r).merge_partials(merged, part)
                r.add_partial(p, merged)
                r.end_pass(p)
                p += 1
                pipe._checked = True  # every range checked its blocks for NaN/inf
            carries = [r.range_carry(part) for part in parts]
            if carries and carries[0] is not None:
                self._rc[(i, j)] = _prefix(carries)
            pipe._stats_done[j] = True

    def _finish_split(self, run: Run, i: int, sink: Any, state: dict):
        pipe = run.pipelines[i]
        results = [state["done"][k] for k in range(len(self._ranges[i]))]
        stats = pipe.fold([row for per_block, _ in results for row in per_block])
        infos = [r.merge_infos([inf[j] for _, inf in results]) for j, r in enumerate(pipe.runners)]
        return stats, finish_tensor(run, i, pipe, sink, state["written"], stats, infos)

    def _states(self, run: Run, i: int) -> list:
        """The run's global states as tensor ``i`` must see them (carried counts set)."""
        out = []
        for gi, st in enumerate(run.states):
            if st is not None and gi in self._carried:
                st = copy.copy(st)
                st.start_tensor(self._carried[gi][i][0])
            out.append(st)
        return out

    def _settle_carries(self, run: Run) -> None:
        """For global stages whose passes ended: the carried count before each range of each tensor."""
        for gi, futs in list(self._last.items()):
            state = run.states[gi]
            flat = [(i, f) for i, fs in sorted(futs.items()) for f in fs]
            counts = self.client.gather([self.client.submit(_carry_task, state, f, pure=False) for _, f in flat])
            before = _prefix(counts)
            per: list[list[int]] = [[] for _ in run.sources]
            for (i, _), c in zip(flat, before):
                per[i].append(c)
            self._carried[gi] = [p or [0] for p in per]  # (skipped tensors carry nothing)
            del self._last[gi]  # the partials are released with their futures

    def _tree_reduce(self, state_type: type, futs: list) -> Any:
        """Pairwise merge of partials on the workers; the one future left (None if no tensors)."""
        while len(futs) > 1:
            nxt = [self.client.submit(_merge_task, state_type, a, b, pure=False)
                   for a, b in zip(futs[::2], futs[1::2])]
            if len(futs) % 2:
                nxt.append(futs[-1])
            futs = nxt
        return futs[0] if futs else None


def _prefix(counts: list[int]) -> list[int]:
    """Exclusive prefix sums: what comes before each item."""
    out, acc = [], 0
    for c in counts:
        out.append(acc)
        acc += c
    return out


def _completed(futs: list) -> Iterator:
    """Futures as they finish; a stop request (SIGINT/SIGTERM) is seen within half a second."""
    from distributed import wait

    pending = list(futs)
    while pending:
        check_stop()
        done = [f for f in pending if f.done()]
        if not done:
            try:
                wait(pending, timeout=0.5, return_when="FIRST_COMPLETED")
            except TimeoutError:
                pass
            continue
        finished = set(done)
        pending = [f for f in pending if f not in finished]
        yield from done
