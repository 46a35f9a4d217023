"""Command line: ``streamcompress demo | compress | import | export | restore | verify | estimate | info``.

``parser`` builds the arguments and the pipeline they name, ``commands`` holds
one function per subcommand; here are the entry points and signal handling.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Sequence

from ..errors import StreamCompressError
from .commands import _COMMANDS, _CONSOLE
from .parser import build_parser

__all__ = ["main", "build_parser", "run"]



def _on_signal(signum, frame):  # noqa: ARG001 - signal handler signature
    """First SIGINT/SIGTERM: stop after the block in hand; a second one stops at once."""
    import signal

    from ..engine import request_stop

    request_stop(signum)
    signal.signal(signum, signal.SIG_DFL if signum == signal.SIGTERM else signal.default_int_handler)


def _skip_blas_probe() -> None:
    """Numba's CPU target, when it first loads, probes for BLAS by importing
    ``scipy.linalg`` if scipy is installed (0.18 s measured, a tenth of a small
    compress). No kernel here uses BLAS, so in the CLI's own process (see
    :func:`run`) the probe finds none; callers of ``main`` keep theirs."""
    if "numba.np.arraymath" not in sys.modules:
        sys.modules.setdefault("scipy.linalg.cython_blas", None)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 error, 2 usage, 130 SIGINT, 143 SIGTERM)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    import signal
    import threading

    from ..engine import clear_stop

    clear_stop()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
    try:
        return _COMMANDS[args.command](args)
    except StreamCompressError as e:
        print(f"streamcompress: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        term = getattr(e, "signum", None) == signal.SIGTERM
        hint = ""
        if args.command == "compress":
            hint = ("; tensors finished so far are kept: rerun the same command with --resume "
                    "(without --overwrite) to continue")
        print(f"streamcompress: {'terminated' if term else 'interrupted'}{hint}", file=sys.stderr)
        return 143 if term else 130
    except OSError as e:
        print(f"streamcompress: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return 1


def run() -> None:
    """The console entry point: :func:`main`, then exit without the interpreter's
    teardown. Everything is written, fsynced and closed by then (the Dask
    cluster too); the teardown only freed Numba's and LLVM's objects one by one
    (0.45 s measured, a sixth of a 1 GB compress). ``main`` itself returns, for
    callers in a process that goes on, and leaves their process as it was."""
    _CONSOLE["own_process"] = True
    _skip_blas_probe()
    rc = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing more to say
            rc = rc or 1
    os._exit(rc)



if __name__ == "__main__":
    run()
