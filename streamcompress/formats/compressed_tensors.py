"""compressed-tensors (the format llm-compressor writes and vLLM serves) out.

8-bit int schemes only here: quantized weights as ``W`` (I8), ``W_scale`` and
``W_zero_point``, with a ``quantization_config`` (``format: int-quantized``) in
``config.json``; every other tensor dense (``safetensors.dense_tensor``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .base import ByteStreams, Checkpoint, Exporter, OutTensor
from .safetensors import dense_tensor, imported_metadata, out_tensor, write_shards

__all__ = ["CompressedTensorsExporter"]

#: numpy dtype of a stored part -> safetensors dtype
_ST = {"int8": "I8", "uint8": "U8", "float16": "F16", "float32": "F32"}


def _ct_scheme(q: dict[str, Any]) -> dict[str, Any]:
    return {"num_bits": 8, "type": "int", "symmetric": bool(q["symmetric"]), "strategy": q["granularity"],
            "group_size": q["group_size"], "dynamic": False, "observer": "minmax", "block_structure": None,
            "actorder": None}


class CompressedTensorsExporter(Exporter):
    name = "compressed-tensors"

    def write(self, ckpt: Checkpoint, dest: Path, streams: ByteStreams, *, dtype: str,
              max_shard_size: int) -> list[Path]:
        out: list[OutTensor] = []
        groups: dict[str, dict[str, Any]] = {}
        ignore: list[str] = []
        for s in ckpt.sources:
            name = s.meta.name
            if not s.quantized:
                out.append(dense_tensor(s, dtype, streams))
                if name.endswith(".weight") and s.meta.ndim == 2:
                    ignore.append(name[: -len(".weight")])
                continue
            q = s.quantization
            if q["bits"] != 8:
                raise ConfigError(f"compressed-tensors int-quantized export needs 8-bit schemes; '{name}' "
                                  f"is {q['scheme']} (export it dense, or quantize with int8)")
            if not name.endswith(".weight"):
                raise ConfigError(f"compressed-tensors names quantized weights '<module>.weight'; got '{name}'")
            for part, suffix in (("codes", ""), ("scale", "_scale"), ("zero_point", "_zero_point")):
                if part in s.parts():
                    shape, dt = s.parts()[part]
                    out.append(out_tensor(name + suffix, _ST[dt.name], shape,
                                          s.part_stream(part, streams.block_elems)))
            key = json.dumps(_ct_scheme(q), sort_keys=True)
            groups.setdefault(key, {"targets": [], "weights": _ct_scheme(q)})
            groups[key]["targets"].append("re:^" + re.escape(name[: -len(".weight")]) + "$")
        paths = write_shards(dest, out, max_shard_size, imported_metadata(ckpt))
        cfg_path = dest / "config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        cfg["quantization_config"] = {
            "quant_method": "compressed-tensors",
            "format": "int-quantized",
            "quantization_status": "compressed",
            "config_groups": {f"group_{i}": {**g, "input_activations": None, "output_activations": None}
                              for i, g in enumerate(groups.values())},
            "ignore": ignore,
        }
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
        return paths
