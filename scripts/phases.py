"""Where a run's wall time goes, by phase: ``streamcompress compress`` (any
arguments) with timers around the pipeline's sweeps and the kernels of the
prune and quantize paths, printed at exit (seconds of wall time spent in each
call, summed over calls; kernels run on all cores, and calls on different
threads overlap, so the rows do not add up to the total).

    python scripts/phases.py compress IN OUT --prune 0.5 --quantize int8:channel --overwrite -q

Timers cost a few microseconds a call (a run makes a few hundred): a
measuring aid, not a benchmark (``bench.py`` is that).
"""

from __future__ import annotations

import atexit
import collections
import sys
import time

_SPENT: collections.Counter = collections.Counter()
_CALLS: collections.Counter = collections.Counter()


def _timed(owner, name: str, label: str) -> None:
    f = getattr(owner, name)

    def g(*a, **k):
        t0 = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            _SPENT[label] += time.perf_counter() - t0
            _CALLS[label] += 1

    setattr(owner, name, g)


def main(argv: list[str]) -> int:
    from streamcompress import kernels as K
    from streamcompress import pipeline as P
    from streamcompress.stages import base as B
    from streamcompress.stages import prune as PR
    from streamcompress.stages import quantize as Q

    for owner, name in [(P.TensorPipeline, "observe_sweep"), (P.TensorPipeline, "apply_sweep"),
                        (B.KthSelector, "observe"), (K.BandHistogram, "add"),
                        (PR._UnstructuredRunner, "cut_of"), (Q._SchemeRunner, "apply_measured_cut")]:
        _timed(owner, name, f"{owner.__name__}.{name}")
    for name in ("hist16", "cut_plan", "unit_absmax_kept", "cut_quantize_measured", "q8_0_pass",
                 "quantize_units_measured", "prune_threshold_measured"):
        _timed(K, name, f"kernels.{name}")  # the stages call them as K.<name>
    start = time.perf_counter()

    def report() -> None:
        print(f"{time.perf_counter() - start:8.3f} s  whole run (after imports)", file=sys.stderr)
        for label, s in _SPENT.most_common():
            print(f"{s:8.3f} s  {_CALLS[label]:6d} calls  {label}", file=sys.stderr)

    atexit.register(report)
    from streamcompress.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
