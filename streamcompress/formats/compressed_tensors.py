"""compressed-tensors out: the format llm-compressor writes and vLLM serves.

Int weights (every int scheme, 4 and 8 bits, symmetric or not, per tensor,
channel or group; q8_0 as int8 groups of 32) are written as compressed-tensors'
own ``pack-quantized`` compressor writes them (``PackedQuantizationCompressor``,
compressed-tensors 0.20), tensor for tensor:

- ``M.weight_packed``: int32 words, each holding ``32 / bits`` consecutive
  values of a row, least-significant bits first, values offset to unsigned
  (``q + 2**(bits-1)`` in compressed-tensors' signed range); rows padded with
  zeros to whole words;
- ``M.weight_scale``: float32, shape ``(1,)``, ``(rows, 1)`` or ``(rows, groups)``;
- ``M.weight_shape``: int64 ``[rows, cols]``;
- ``M.weight_zero_point`` (asymmetric only): for channel and group strategies
  packed the same way down the rows (``ceil(rows * bits / 32)`` words per
  column), for the tensor strategy one int8.

The streamcompress codes map to compressed-tensors' signed range without
arithmetic: a 4-bit stored nibble (``q + 8`` symmetric, ``q`` asymmetric) is
exactly the unsigned value, so 4-bit rows are their stored bytes, and 8-bit
rows are their bytes with the top bit flipped. ``config.json`` gets a
``quantization_config`` with one config group per scheme (``targets:
["Linear"]`` and an ``ignore`` list when one scheme covers every quantized
weight, module names otherwise), each with ``format: pack-quantized``.
Every other tensor is written dense (``safetensors.dense_tensor``).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import ConfigError
from .base import ByteStreams, Checkpoint, Exporter, OutTensor, TensorSource
from .safetensors import dense_tensor, imported_metadata, out_tensor, write_shards

__all__ = ["CompressedTensorsExporter", "CT_FORMAT_VERSION", "pack_rows", "pack_columns"]

#: the compressed-tensors release whose on-disk format this writes (and is tested against)
CT_FORMAT_VERSION = "0.20.1"


def _unsigned(q: dict[str, Any], values: np.ndarray) -> np.ndarray:
    """Stored codes (or zero points) -> compressed-tensors' unsigned packing values (uint8).

    8-bit: ``q + 128`` (the byte with its top bit flipped); 4-bit: the nibble as stored
    (symmetric codes are stored ``q + 8``; asymmetric ones, 0..15, are ``q_ct + 8``)."""
    if q["bits"] == 8:
        return values.astype(np.int8, copy=False).view(np.uint8) ^ np.uint8(0x80)
    return values.astype(np.uint8, copy=False)


def pack_rows(rows: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned values ``(r, cols)`` (uint8) -> int32 words ``(r, ceil(cols * bits / 32))``,
    ``32 // bits`` values per word, the first in the lowest bits (4 and 8 bits)."""
    r, cols = rows.shape
    per = 32 // bits
    words = -(-cols // per)
    u = np.zeros((r, words * per), np.uint32)
    u[:, :cols] = rows
    shifts = (np.arange(per, dtype=np.uint32) * np.uint32(bits))
    return (u.reshape(r, words, per) << shifts).sum(axis=2, dtype=np.uint32).view(np.int32)


def pack_columns(values: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned ``(rows, g)`` -> int32 ``(ceil(rows * bits / 32), g)``: packed down the rows."""
    return np.ascontiguousarray(pack_rows(np.ascontiguousarray(values.T), bits).T)


def _scheme(q: dict[str, Any]) -> dict[str, Any]:
    """The config group's ``weights`` entry (the keys compressed-tensors writes)."""
    w = {"dynamic": False, "group_size": q["group_size"], "num_bits": int(q["bits"]),
         "strategy": q["granularity"], "symmetric": bool(q["symmetric"]), "type": q.get("type", "int")}
    if q["granularity"] == "block":  # square tiles: [rows, columns] of one scale
        w.update(group_size=None, block_structure=[int(q["group_size"])] * 2)
    return w


#: input activations of float8 weights: llm-compressor's FP8_DYNAMIC (per token, at run time)
_FP8_INPUTS = {"dynamic": True, "group_size": None, "num_bits": 8, "strategy": "token", "symmetric": True,
               "type": "float"}
#: ... and of float8 block weights: its FP8_BLOCK (groups of 128 along a token, at run time)
_FP8_BLOCK_INPUTS = {**_FP8_INPUTS, "strategy": "group", "group_size": 128}


def _module(name: str) -> str:
    return name[: -len(".weight")]


class CompressedTensorsExporter(Exporter):
    name = "compressed-tensors"

    def write(self, ckpt: Checkpoint, dest: Path, streams: ByteStreams, *, dtype: str,
              max_shard_size: int) -> list[Path]:
        if sys.byteorder != "little":  # (words are written as their little-endian bytes)
            raise ConfigError("compressed-tensors export needs a little-endian machine")
        out: list[OutTensor] = []
        groups: dict[str, dict[str, Any]] = {}
        float_linear: list[str] = []
        for s in ckpt.sources:
            name = s.meta.name
            if not s.quantized:
                out.append(dense_tensor(s, dtype, streams))
                if name.endswith(".weight") and s.meta.ndim == 2:
                    float_linear.append(_module(name))
                continue
            q = s.quantization
            if s.meta.ndim != 2 or not name.endswith(".weight"):
                raise ConfigError(f"compressed-tensors quantizes Linear weights (2-D '<module>.weight'); "
                                  f"'{name}' has shape {list(s.meta.shape)}: leave it float (--skip-1d, "
                                  "--ignore) or export dense")
            fp8 = q.get("type") == "float"
            if fp8 and q["granularity"] not in ("channel", "tensor", "block"):
                raise ConfigError(f"compressed-tensors float8 weights are per channel, per tensor or in blocks; "
                                  f"'{name}' is {q['scheme']}: quantize with fp8:channel or fp8:block")
            out += self._float8(s, streams.block_elems) if fp8 else self._quantized(s, q, streams.block_elems)
            inputs = (_FP8_BLOCK_INPUTS if q["granularity"] == "block" else _FP8_INPUTS) if fp8 else None
            group = {"weights": _scheme(q), "input_activations": inputs,
                     "format": "float-quantized" if fp8 else "pack-quantized"}
            key = json.dumps(group, sort_keys=True)
            groups.setdefault(key, {**group, "modules": []})["modules"].append(_module(name))
        paths = write_shards(dest, out, max_shard_size, imported_metadata(ckpt))
        self._config(dest, list(groups.values()), float_linear)
        return paths

    @staticmethod
    def _float8(s: TensorSource, block_elems: int) -> list[OutTensor]:
        """float8 E4M3 weights as compressed-tensors' float-quantized: ``M.weight``
        (F8_E4M3, the codes' bits as they are) and ``M.weight_scale`` (float32)."""
        return [out_tensor(s.meta.name, "F8_E4M3", s.meta.shape,
                           lambda: (b.tobytes() for b in s.part_blocks("codes", block_elems))),
                _scale_tensor(s, block_elems)]

    @staticmethod
    def _quantized(s: TensorSource, q: dict[str, Any], block_elems: int) -> list[OutTensor]:
        name, (rows, cols) = s.meta.name, s.meta.shape
        bits = int(q["bits"])
        words = math.ceil(cols * bits / 32)

        def packed() -> Iterator[bytes]:
            codes_cols = s.parts()["codes"][0][-1]
            for codes in s.part_blocks("codes", max(block_elems, codes_cols)):  # (whole rows)
                yield _pad_words(_unsigned(q, codes) if bits == 8 else codes, words)

        scale_shape = s.parts()["scale"][0]
        t = [out_tensor(name + "_packed", "I32", (rows, words), packed), _scale_tensor(s, block_elems),
             out_tensor(name + "_shape", "I64", (2,), lambda: iter([np.array([rows, cols], np.int64).tobytes()]))]
        if not q["symmetric"]:
            zp = np.concatenate([b.reshape(-1) for b in s.part_blocks("zero_point", block_elems)]).reshape(
                scale_shape)
            if q["granularity"] == "tensor":  # one value, not packed, in the signed range
                z = (zp.astype(np.int16) - (8 if bits == 4 else 0)).astype(np.int8)
                t.append(out_tensor(name + "_zero_point", "I8", z.shape, lambda: iter([z.tobytes()])))
            else:
                packed_zp = pack_columns(_unsigned(q, zp.reshape(rows, -1)), bits)
                t.append(out_tensor(name + "_zero_point", "I32", packed_zp.shape,
                                    lambda: iter([packed_zp.tobytes()])))
        return t

    @staticmethod
    def _config(dest: Path, groups: list[dict[str, Any]], float_linear: list[str]) -> None:
        cfg_path = dest / "config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        one = len(groups) == 1
        config_groups = {
            f"group_{i}": {"format": g["format"], "input_activations": g["input_activations"],
                           "output_activations": None, "targets": ["Linear"] if one else g["modules"],
                           "weights": g["weights"]}
            for i, g in enumerate(groups)}
        formats = {g["format"] for g in groups}
        cfg["quantization_config"] = {
            "config_groups": config_groups,
            "format": formats.pop() if len(formats) == 1 else ("mixed-precision" if formats else "dense"),
            "global_compression_ratio": None,
            "ignore": float_linear,
            "kv_cache_scheme": None,
            "moe_sparsity_config": None,
            "quant_method": "compressed-tensors",
            "quantization_status": "compressed",
            "sparsity_config": {},
            "transform_config": {},
            "version": CT_FORMAT_VERSION,
        }
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _scale_tensor(s: TensorSource, block_elems: int) -> OutTensor:
    """``M.weight_scale`` as float32 (float16 scales widen exactly)."""
    return out_tensor(s.meta.name + "_scale", "F32", s.parts()["scale"][0],
                      lambda: (np.asarray(b, np.float32).tobytes() for b in s.part_blocks("scale", block_elems)))


def _pad_words(rows: np.ndarray, words: int) -> bytes:
    """Rows of unsigned bytes that are already the little-endian bytes of their
    int32 words (8-bit values one a byte; 4-bit rows as stored, two nibbles a
    byte, the first low), padded with zeros to ``words`` words each."""
    r, nbytes = rows.shape
    out = np.zeros((r, words * 4), np.uint8)
    out[:, :nbytes] = rows
    return out.tobytes()
