"""streamcompress: out-of-core prune / quantize / clip of huge model checkpoints.

The public API mirrors the seed design (``compression.rs`` of OxiBonsai):
``CompressionConfig``, the stages ``Prune`` / ``QuantizeInt8`` / ``Clip``,
``StageStats``, ``CompressionResult.summary()``, ``estimate_compressed_size``
and the seed's errors, run by a streaming engine over Zarr v3 stores or
in-memory arrays.
"""

from importlib import import_module

from ._version import __version__

#: Where each public name lives. Importing the package loads none of them (nor
#: numpy): each is imported on first use (PEP 562), so the console command can
#: set up its own process before numpy loads (``streamcompress.__main__``).
_WHERE = {
    **dict.fromkeys(["CompressionConfig", "is_embedding_layer", "load_config"], "config"),
    **dict.fromkeys(["EngineOptions", "compress_model", "estimate_compressed_size", "restore", "verify"], "engine"),
    **dict.fromkeys(["BelowMinNonzero", "CompressionError", "ConfigError", "EmptyModel", "EmptyPipeline",
                     "EmptyTensor", "InvalidPercentile", "InvalidSparsity", "InvalidStore", "NonFiniteError",
                     "NotTwoDimensional", "OutputError", "OutputExists", "PruningError", "ResumeMismatch",
                     "StoreNotFound", "StreamCompressError", "UnsupportedDtype"], "errors"),
    **dict.fromkeys(["CompressionResult", "WeightTensor"], "result"),
    **dict.fromkeys(["Clip", "Granularity", "Metric", "Prune", "PruneNM", "PruningConfig", "QuantGranularity",
                     "Quantize", "QuantizeInt8", "QuantScheme", "Stage", "parse_scheme"], "stages"),
    "StageStats": "stats",
}


def __getattr__(name: str):
    where = _WHERE.get(name)
    if where is None:  # a submodule not imported yet (``streamcompress.engine``)
        try:
            return import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(import_module(f".{where}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


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
    from .engine import compress_model

    return compress_model(input, config, output=output, overwrite=overwrite, resume=resume, options=options)


def prune_tensor(array, config, name="tensor", options=None):
    """The seed's ``prune_tensor``: returns ``(pruned float32 array, mask float32 1/0)``."""
    import numpy as np

    from .config import CompressionConfig
    from .engine import EngineOptions, compress_model
    from .stages import Prune

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
