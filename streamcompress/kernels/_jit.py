"""Numba options in one place, and the choice of a thread-safe threading layer.

The ``workqueue`` layer aborts the process when two Python threads call
parallel kernels at once (the engine reads ahead and writes behind on
background threads), so a thread-safe layer (OpenMP or TBB) is asked for here
and asserted by ``threads.check_threading_layer``.
"""

from __future__ import annotations

import os

import numba

# Idle OpenMP threads sleep instead of spinning: the kernels run a few ms per
# block between reads and writes on other threads, and spinning threads took
# their cores (measured: 25% less CPU time and 10-15% faster end to end).
# Read by libgomp when it loads (at the first parallel kernel); a user's
# setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if "NUMBA_THREADING_LAYER" not in os.environ:
    # Must be set before the first parallel kernel launches.
    numba.config.THREADING_LAYER = "threadsafe"

#: Options of every serial kernel.
JIT = {"nogil": True, "cache": True}
#: Options of every parallel kernel.
PJIT = {**JIT, "parallel": True}

#: Fixed tile of the deterministic reductions: partial sums are taken per
#: tile and added in tile order, so results do not depend on thread count.
TILE = 1 << 16
