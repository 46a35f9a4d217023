"""The embedded default: a synthetic Llama-shaped checkpoint made on the spot, and
the pipeline ``streamcompress demo`` runs on it.

Tensor names and shapes follow Llama (``model.embed_tokens.weight``,
``model.layers.N.self_attn.q_proj.weight``, ..., ``lm_head.weight``); the data is
heavy-tailed (Gaussian with log-normal per-row scales and rare outliers),
written chunk by chunk so any size fits in memory (``scripts/make_checkpoint.py``
writes big ones for the benchmark).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .formats.base import LOGICAL_DTYPE_ATTR, TENSOR_ORDER_ATTR

__all__ = ["GENERATOR", "llama_shapes", "write_checkpoint", "demo_config"]

#: group attribute ``generator`` of a checkpoint made here
GENERATOR = "streamcompress synthetic Llama checkpoint"


def llama_shapes(target_bytes: int, itemsize: int) -> tuple[dict, list[tuple[str, tuple[int, ...]]]]:
    """Pick hidden size, layers and vocab so the model is close to ``target_bytes``."""
    params = target_bytes // itemsize
    for hidden in (4096, 2048, 1024, 512, 256, 128, 64):
        vocab = 32000 if hidden >= 1024 else 8 * hidden
        ffn = int(hidden * 2.6875) // 64 * 64 or 64
        per_layer = 4 * hidden * hidden + 3 * hidden * ffn + 2 * hidden
        fixed = 2 * vocab * hidden + hidden
        if fixed + per_layer <= params or hidden == 64:
            layers = max(1, (params - fixed) // per_layer)
            break
    cfg = {"hidden_size": hidden, "intermediate_size": ffn, "num_hidden_layers": int(layers),
           "vocab_size": vocab}
    shapes = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        pre = f"model.layers.{i}"
        shapes += [
            (f"{pre}.input_layernorm.weight", (hidden,)),
            (f"{pre}.self_attn.q_proj.weight", (hidden, hidden)),
            (f"{pre}.self_attn.k_proj.weight", (hidden, hidden)),
            (f"{pre}.self_attn.v_proj.weight", (hidden, hidden)),
            (f"{pre}.self_attn.o_proj.weight", (hidden, hidden)),
            (f"{pre}.post_attention_layernorm.weight", (hidden,)),
            (f"{pre}.mlp.gate_proj.weight", (ffn, hidden)),
            (f"{pre}.mlp.up_proj.weight", (ffn, hidden)),
            (f"{pre}.mlp.down_proj.weight", (hidden, ffn)),
        ]
    shapes += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    return cfg, shapes


def fill(rng: np.random.Generator, shape: tuple[int, ...], is_norm: bool) -> np.ndarray:
    if is_norm:
        return (1.0 + 0.05 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    rows = shape[0]
    scale = np.exp(0.5 * rng.standard_normal((rows,) + (1,) * (len(shape) - 1))).astype(np.float32)
    x = rng.standard_normal(shape, dtype=np.float32) * (0.02 * scale)
    n_out = max(1, x.size // 10000)
    idx = rng.integers(0, x.size, n_out)
    x.reshape(-1)[idx] *= np.float32(20.0)  # rare large outliers: the heavy tail
    return x


def write_checkpoint(path: str | Path, size: int, dtype: str = "float32", chunk_bytes: int = 8 << 20,
                     seed: int = 0, overwrite: bool = False) -> list[str]:
    import zarr

    itemsize = 2 if dtype == "bfloat16" else 4
    cfg, shapes = llama_shapes(size, itemsize)
    group = zarr.open_group(str(path), mode="w" if overwrite else "w-")
    rng = np.random.default_rng(seed)
    for name, shape in shapes:
        row = math.prod(shape[1:]) * itemsize
        crow = max(1, min(shape[0], chunk_bytes // max(row, 1)))
        attrs = {LOGICAL_DTYPE_ATTR: "bfloat16"} if dtype == "bfloat16" else {}
        arr = group.create_array(name, shape=shape, chunks=(crow,) + shape[1:],
                                 dtype="uint16" if dtype == "bfloat16" else "float32",
                                 compressors=None, attributes=attrs, fill_value=0,
                                 config={"write_empty_chunks": True})
        step = max(crow, (64 << 20) // max(row, 1) // crow * crow)
        for r0 in range(0, shape[0], step):
            r1 = min(shape[0], r0 + step)
            x = fill(rng, (r1 - r0,) + shape[1:], name.endswith("norm.weight"))
            if dtype == "bfloat16":
                import ml_dtypes

                x = x.astype(ml_dtypes.bfloat16).view(np.uint16)
            arr[r0:r1] = x
    group.attrs.update({TENSOR_ORDER_ATTR: [n for n, _ in shapes], "model_config": cfg,
                        "generator": GENERATOR})
    return [n for n, _ in shapes]



def demo_config():
    """The demo's pipeline: int8 per channel (real codes + one scale per output row),
    1-D tensors (norms) left float: a scheme that keeps a model working."""
    from .config import CompressionConfig
    from .stages import Quantize

    return CompressionConfig((Quantize("int8:channel"),), skip_1d=True)
