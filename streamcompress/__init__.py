"""streamcompress: out-of-core prune / quantize / clip of huge model checkpoints.

The public API mirrors the seed design (``compression.rs`` of OxiBonsai):
``CompressionConfig``, the stages ``Prune`` / ``QuantizeInt8`` / ``Clip``,
``StageStats``, ``CompressionResult.summary()``, ``estimate_compressed_size``
and the seed's errors, run by a streaming engine over Zarr v3 stores or
in-memory arrays.
"""

from ._version import __version__

from .config import CompressionConfig, is_embedding_layer, load_config
from .engine import EngineOptions, compress_model, estimate_compressed_size, restore, verify
from .errors import (
    BelowMinNonzero,
    CompressionError,
    ConfigError,
    EmptyModel,
    EmptyPipeline,
    EmptyTensor,
    InvalidPercentile,
    InvalidSparsity,
    InvalidStore,
    NonFiniteError,
    NotTwoDimensional,
    OutputError,
    OutputExists,
    PruningError,
    ResumeMismatch,
    StoreNotFound,
    StreamCompressError,
    UnsupportedDtype,
)
from .result import CompressionResult, WeightTensor
from .stages import (
    Clip,
    Granularity,
    Metric,
    Prune,
    PruneNM,
    PruningConfig,
    QuantGranularity,
    Quantize,
    QuantizeInt8,
    QuantScheme,
    Stage,
    parse_scheme,
)
from .stats import StageStats

__all__ = [
    "__version__",
    "CompressionConfig",
    "is_embedding_layer",
    "load_config",
    "EngineOptions",
    "compress_model",
    "compress_store",
    "prune_tensor",
    "estimate_compressed_size",
    "restore",
    "verify",
    "CompressionResult",
    "WeightTensor",
    "StageStats",
    "Stage",
    "Prune",
    "PruneNM",
    "PruningConfig",
    "Metric",
    "Granularity",
    "QuantizeInt8",
    "Quantize",
    "QuantScheme",
    "QuantGranularity",
    "parse_scheme",
    "Clip",
    "StreamCompressError",
    "ConfigError",
    "CompressionError",
    "EmptyModel",
    "EmptyPipeline",
    "InvalidPercentile",
    "PruningError",
    "InvalidSparsity",
    "EmptyTensor",
    "NotTwoDimensional",
    "BelowMinNonzero",
    "NonFiniteError",
    "UnsupportedDtype",
    "StoreNotFound",
    "InvalidStore",
    "OutputExists",
    "OutputError",
    "ResumeMismatch",
]


def compress_store(input, output, config, *, overwrite=False, resume=False, options=None):
    """Compress the Zarr group (or safetensors checkpoint) at ``input`` into a Zarr group at ``output``."""
    return compress_model(input, config, output=output, overwrite=overwrite, resume=resume, options=options)


def prune_tensor(array, config, name="tensor", options=None):
    """The seed's ``prune_tensor``: returns ``(pruned float32 array, mask float32 1/0)``."""
    import numpy as np

    result = compress_model(
        {name: array},
        CompressionConfig((Prune(config),)),
        options=EngineOptions(**{**(options.__dict__ if options else {}), "save_masks": True}),
    )
    out = result.compressed_tensors[0].data
    mask = result.masks.get(name)
    if mask is None:
        mask = np.ones(out.shape, dtype=np.uint8)
    return out, mask.astype(np.float32)
