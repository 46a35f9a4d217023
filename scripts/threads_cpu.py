"""CPU time of each thread of one ``streamcompress`` command, run in this process.

A monitor thread reads ``/proc/self/task/*/stat`` every 20 ms and keeps each
thread's last user and system time; threads are named by their Python name
(``sc-read``, ``sc-write``, ``sc-sync``: the engine's; ``numba/other``: Numba's
workers and any thread without a Python name). Linux only.

    python scripts/threads_cpu.py compress IN OUT --quantize q8_0 -q --overwrite

Prints the wall time and each thread group's CPU seconds. One run a process
(the command's start-up is part of what it measures): repeat it from the shell.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import threading
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # (as the console command does)


def _group(name: str) -> str:
    for prefix in ("sc-", "asyncio"):
        if name.startswith(prefix):
            return name.rsplit("_", 1)[0]
    return name


def run_once(argv: list[str]) -> tuple[float, dict[str, tuple[float, float]]]:
    """Wall seconds of ``streamcompress argv`` and each thread group's (user, system) seconds."""
    from streamcompress.cli import main

    tick = os.sysconf("SC_CLK_TCK")
    last: dict[int, tuple[float, float]] = {}
    names: dict[int, str] = {}
    stop = threading.Event()
    me = threading.get_native_id()

    def watch() -> None:
        while not stop.is_set():
            for t in threading.enumerate():
                if t.native_id:
                    names[t.native_id] = t.name
            for tid in os.listdir("/proc/self/task"):
                with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/stat") as fh:
                    f = fh.read().rsplit(")", 1)[1].split()
                    last[int(tid)] = (int(f[11]) / tick, int(f[12]) / tick)
            time.sleep(0.02)

    w = threading.Thread(target=watch, name="monitor", daemon=True)
    w.start()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main(argv)
    wall = time.perf_counter() - t0
    stop.set()
    w.join()
    groups: dict[str, tuple[float, float]] = {}
    for tid, (u, s) in last.items():
        g = "main" if tid == me else _group(names.get(tid, "numba/other"))
        gu, gs = groups.get(g, (0.0, 0.0))
        groups[g] = (gu + u, gs + s)
    return wall, groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("argv", nargs=argparse.REMAINDER, help="the streamcompress command's arguments")
    wall, groups = run_once(ap.parse_args().argv)
    print(f"wall {wall:.2f} s")
    for g, (u, s) in sorted(groups.items(), key=lambda kv: -sum(kv[1])):
        if u + s >= 0.005:
            print(f"  {g:12s} {u + s:5.2f} CPU-s (user {u:.2f}, system {s:.2f})")


if __name__ == "__main__":
    main()
