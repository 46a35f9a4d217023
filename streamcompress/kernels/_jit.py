"""Numba options in one place, and the choice of a thread-safe threading layer.

The ``workqueue`` layer aborts the process when two Python threads call
parallel kernels at once (the engine reads ahead and writes behind on
background threads), so a thread-safe layer (OpenMP or TBB) is asked for here
and asserted by ``threads.check_threading_layer``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

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


def drop_stale_cache(here: Path = Path(__file__).parent) -> bool:
    """Drop Numba's cache of these kernels if any kernel's source changed since it was made.

    Numba checks a cached kernel against its own file's time stamp only, so a
    kernel would load as compiled with an old version of a kernel it calls in
    another file (``q8_0_pass`` in ggml.py inlines ``diff_tile`` from
    elementwise.py: a checkout that changes only elementwise.py gave statistics
    in the old order). A digest of every kernel source is kept beside the cache;
    when it differs, the cache is dropped and rebuilt on use. Returns whether it
    was dropped. Silent where the package cannot be written (Numba then caches
    elsewhere, and an installed package changes as a whole)."""
    cache = here / "__pycache__"
    try:
        h = hashlib.sha256()
        for p in sorted(here.glob("*.py")):
            h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
        stamp = cache / "streamcompress-kernels.sha256"
        want = h.hexdigest()
        if stamp.is_file() and stamp.read_text() == want:
            return False
        for p in cache.glob("*.nb[ic]"):
            p.unlink(missing_ok=True)
        cache.mkdir(exist_ok=True)
        tmp = cache / f"{stamp.name}.{os.getpid()}.tmp"
        tmp.write_text(want)
        os.replace(tmp, stamp)
        return True
    except OSError:
        return False


drop_stale_cache()

#: Options of every serial kernel.
JIT = {"nogil": True, "cache": True}
#: Options of every parallel kernel.
PJIT = {**JIT, "parallel": True}

#: Fixed tile of the deterministic reductions: partial sums are taken per
#: tile and added in tile order, so results do not depend on thread count.
TILE = 1 << 16
