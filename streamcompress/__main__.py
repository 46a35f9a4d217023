"""``python -m streamcompress``, and the ``streamcompress`` console command."""

import os


def main() -> None:
    """The command line in a process of its own (:func:`streamcompress.cli.run`),
    set up before numpy loads: numpy's OpenBLAS starts its worker threads when
    it loads, and they spin before they sleep (5% of a Q8_0 run's CPU samples,
    0.1 CPU-s of each start-up, measured) while no kernel here uses BLAS, so
    it gets one thread unless the user chose otherwise."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from .cli import run

    run()


if __name__ == "__main__":
    main()
