import sys
from pathlib import Path

import os

import numpy as np
import pytest
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).parent))

import streamcompress as sc  # noqa: E402

# CI must be reproducible: the same examples every run (locally, random search).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def to_stage(st):
    """Reference stage tuple -> streamcompress stage."""
    if st[0] == "prune":
        return sc.Prune(sc.PruningConfig(**st[1]))
    if st[0] == "quantize_int8":
        return sc.QuantizeInt8()
    return sc.Clip(st[1])


def seed_fields(s):
    return dict(
        stage_name=s.stage_name,
        tensors_processed=s.tensors_processed,
        tensors_skipped=s.tensors_skipped,
        params_before=s.params_before,
        nonzero_params_after=s.nonzero_params_after,
        memory_before_bytes=s.memory_before_bytes,
        memory_after_bytes=s.memory_after_bytes,
    )


def tie_heavy(rng, shape):
    """Integer-valued data with many ties and zeros (stresses the tie rule)."""
    return rng.integers(-3, 4, size=shape).astype(np.float32)


def heavy_tailed(rng, shape):
    return (rng.standard_t(3, size=shape) * 0.02).astype(np.float32)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
