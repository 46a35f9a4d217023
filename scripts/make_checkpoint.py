#!/usr/bin/env python
"""Write a synthetic Llama-shaped checkpoint as a Zarr v3 group (``streamcompress.demo``).

    python scripts/make_checkpoint.py examples/tiny.zarr --size 64MB
    python scripts/make_checkpoint.py /data/ckpt.zarr --size 2GB --dtype bfloat16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamcompress.demo import write_checkpoint  # noqa: E402
from streamcompress.engine import parse_size  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output", help="path of the new Zarr group")
    p.add_argument("--size", default="64MB", help="approximate size, e.g. 64MB, 2GB (default 64MB)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--chunk-size", default="8MiB", help="target chunk size (default 8MiB)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    names = write_checkpoint(a.output, parse_size(a.size), a.dtype, parse_size(a.chunk_size), a.seed,
                             a.overwrite)
    print(f"wrote {len(names)} tensors to {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
