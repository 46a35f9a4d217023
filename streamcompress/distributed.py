"""Run the engine's work on a Dask distributed cluster.

:class:`DaskExecutor` plugs into :func:`streamcompress.engine.compress_model`
in place of the in-process executor; everything else (validation, block
plans, pipelines, stats, resume records, the report) is the engine's.

* **Tasks.** Every tensor is one task: a worker opens the input by path,
  rebuilds the same block plan and pipeline, runs the tensor's statistic
  passes and apply sweep with read-ahead/write-behind, writes its output
  arrays (so every output chunk is written by exactly one task), makes them
  durable and marks the tensor complete, as the local engine does.
* **Global statistics** (global pruning's histograms) are Dask reductions:
  one task per tensor returns its partial (``GlobalState.take_partial``),
  partials are merged pairwise on the workers with the state's own monoid
  (``merge_partials``) and the sum goes to the run's state before its
  ``end_pass``. The count carried from tensor to tensor (ties at the
  threshold, earlier tensors first) is read off each tensor's last partial,
  so tensors run in any order and still match the local engine bit for bit.
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
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator

from .config import CompressionConfig
from .engine import (
    EngineOptions,
    Run,
    _IO,
    _prepare,
    _Progress,
    check_stop,
    load_sources,
    process_tensor,
)
from .errors import ConfigError, StreamCompressError
from .store import ZarrSink, stored_nbytes

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
        sources = load_sources(job.input)
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


def _guard(fn, *args):
    try:
        return fn(*args)
    except StreamCompressError as e:
        raise TaskError(str(e)) from None


def _global_pass(job: _Job, i: int, gi: int, p: int, states: list) -> Any:
    _limit_threads()
    run = _worker_run(job)
    pipe = run.pipeline(i, states)
    src, blocks = run.sources[i], run.plans[i]
    io = _IO(job.options.prefetch)
    try:
        pipe.global_pass(gi, p, lambda: io.blocks(src, blocks, lambda b: None))
    finally:
        io.close()
    return states[gi].take_partial()


def _global_task(job: _Job, i: int, gi: int, p: int, states: list) -> Any:
    return _guard(_global_pass, job, i, gi, p, states)


def _merge_task(state_type: type, a: Any, b: Any) -> Any:
    return state_type.merge_partials(a, b)


def _carry_task(state: Any, partial: Any) -> int:
    return state.tensor_carry(partial)


def _tensor(job: _Job, i: int, states: list):
    _limit_threads()
    run = _worker_run(job)
    sink = ZarrSink.attach(job.output, job.options.codec)
    io = _IO(job.options.prefetch)
    try:
        return process_tensor(run, i, run.pipeline(i, states), sink, io, _Progress(False, 0))
    finally:
        io.close()


def _tensor_task(job: _Job, i: int, states: list):
    return _guard(_tensor, job, i, states)


class DaskExecutor:
    """Runs a compression on a Dask cluster (see the module docstring).

    Parameters
    ----------
    scheduler : address of a running scheduler (``tcp://host:8786``); the
        workers must see the input and output paths (a shared filesystem).
    workers : start a local cluster of this many worker processes instead
        (one task thread each; Numba threads = cores // workers).
    client : an existing ``distributed.Client`` (tests, notebooks); not closed.
    """

    def __init__(self, scheduler: str | None = None, workers: int | None = None, *, client: Any = None) -> None:
        if client is None and (scheduler is None) == (workers is None):
            raise ConfigError("give either a scheduler address or a number of workers")
        if workers is not None and int(workers) < 1:
            raise ConfigError(f"--workers must be at least 1, got {workers}")
        self.scheduler = scheduler
        self.workers = workers
        self.client = client
        self._own: list[Any] = []  # what close() shuts down
        self._last: dict[int, dict[int, Any]] = {}  # global stage -> tensor -> last-pass partial future
        self._carried: dict[int, list[int]] = {}  # global stage -> carried count before each tensor
        self.job: _Job | None = None

    # -- engine protocol ---------------------------------------------------------------
    def check(self, run: Run, tensors: Any, sink: Any) -> None:
        if not isinstance(tensors, (str, os.PathLike)):
            raise ConfigError("a Dask run reads its input by path: pass a store or checkpoint path")
        if not isinstance(sink, ZarrSink):
            raise ConfigError("a Dask run writes a Zarr store: pass an output path")
        self.job = _Job(os.path.abspath(tensors), os.path.abspath(sink.path), run.config, run.options,
                        tuple(run.skip), tuple(run.input_fps), run.pipeline_fp + run.input_fp)
        self._connect()

    def global_pass(self, run: Run, gi: int, p: int, progress: _Progress) -> None:
        self._settle_carries(run)
        state = run.states[gi]
        sel = [i for i, pipe in enumerate(run.pipelines) if pipe is not None]
        futs = {i: self.client.submit(_global_task, self.job, i, gi, p, self._states(run, i), pure=False)
                for i in sel}
        self._wait(futs, lambda i: progress.update(stored_nbytes(run.sources[i])))
        total = self._tree_reduce(type(state), list(futs.values()))
        state.add_partial(total.result() if total is not None else None)
        if p == state.n_passes - 1:
            self._last[gi] = futs  # the carried counts are read off these once the pass has ended

    def tensors(self, run: Run, resumed: dict[int, dict[str, Any]], sink: Any,
                progress: _Progress) -> Iterator[tuple[int, list, dict[str, Any]]]:
        self._settle_carries(run)
        futs = {self.client.submit(_tensor_task, self.job, i, self._states(run, i), pure=False): i
                for i in range(len(run.sources)) if i not in resumed}
        global_sweeps = sum(st.n_passes for st in run.states if st is not None)
        try:
            for fut in _completed(list(futs)):
                i = futs[fut]
                stats, info = fut.result()
                g = global_sweeps if run.pipelines[i] is not None else 0
                progress.update((run.sweeps(i) - g) * stored_nbytes(run.sources[i]))
                progress.describe(run.sources[i].meta.name)
                yield i, stats, info
        finally:  # stopped early (error, SIGINT): drop the work not started
            pending = [f for f in futs if not f.done()]
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

    def _connect(self) -> None:
        if self.client is not None:
            return
        from distributed import Client, LocalCluster

        # distributed logs at INFO by its own config; keep it to warnings unless asked (-v)
        logging.getLogger("distributed").setLevel(min(logging.WARNING, log.getEffectiveLevel()))
        if self.scheduler is not None:
            try:
                self.client = Client(self.scheduler, timeout="30s")
            except OSError as e:
                raise ConfigError(f"cannot reach the Dask scheduler at {self.scheduler}: {e}") from None
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

    def _states(self, run: Run, i: int) -> list:
        """The run's global states as tensor ``i`` must see them (carried counts set)."""
        out = []
        for gi, st in enumerate(run.states):
            if st is not None and gi in self._carried:
                st = copy.copy(st)
                st.start_tensor(self._carried[gi][i])
            out.append(st)
        return out

    def _settle_carries(self, run: Run) -> None:
        """For global stages whose passes ended: the carried count before each tensor."""
        for gi, futs in list(self._last.items()):
            state = run.states[gi]
            carry_futs = {i: self.client.submit(_carry_task, state, f, pure=False) for i, f in futs.items()}
            carries = dict(zip(carry_futs, self.client.gather(list(carry_futs.values()))))
            before, acc = [], 0
            for i in range(len(run.sources)):
                before.append(acc)
                acc += carries.get(i, 0)
            self._carried[gi] = before
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

    def _wait(self, futs: dict[int, Any], done) -> None:
        index = {f: i for i, f in futs.items()}
        for fut in _completed(list(futs.values())):
            fut.result()  # raise a task's error here
            done(index[fut])


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
        pending = [f for f in pending if not f.done() or f not in done]
        yield from done
