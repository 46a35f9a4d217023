"""A checkpoint's non-tensor files (config, tokenizer, model code) carried along with it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .base import AUX_DIR

__all__ = ["aux_files", "copy_aux"]

#: the non-tensor files of a Hugging Face checkpoint (config, tokenizer, chat
#: template, sentence-transformers modules, model card)
_AUX_NAMES = frozenset({
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "preprocessor_config.json", "processor_config.json", "chat_template.json",
    "chat_template.jinja", "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model",
    "sentencepiece.bpe.model", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
    "data_config.json", "README.md", "LICENSE", "LICENSE.txt", "NOTICE",
})


#: custom model code (``trust_remote_code``) and tiktoken vocabularies
_AUX_PREFIXES = ("modeling_", "configuration_", "tokenization_", "processing_", "image_processing_")


_AUX_MAX_BYTES = 256 << 20



def _is_aux(f: Path) -> bool:
    if f.name in _AUX_NAMES or f.suffix == ".tiktoken":
        return True
    return f.suffix == ".py" and f.name.startswith(_AUX_PREFIXES)


def aux_files(src: str | os.PathLike) -> list[tuple[str, Path]]:
    """Non-tensor files to carry along (config.json, tokenizer files, ...):
    ``(relative path, absolute path)``.

    From a checkpoint directory (or a single file's directory): the known
    Hugging Face config, tokenizer and model-code files, at the top level and
    one level down (sentence-transformers keeps ``1_Pooling/config.json``),
    never inside a Zarr store or a hidden directory, never over 256 MiB;
    nothing else there is copied. From a store: everything in its ``__aux__``.
    """
    p = Path(src)
    if p.is_file():  # (a GGUF file carries its own metadata: see copy_aux)
        p = p.parent if p.suffix == ".safetensors" else None
        if p is None:
            return []
    if (p / "zarr.json").exists():
        aux = p / AUX_DIR
        return [(str(f.relative_to(aux)), f) for f in sorted(aux.rglob("*")) if f.is_file()] if aux.is_dir() else []
    candidates = [f for f in sorted(p.iterdir()) if f.is_file()]
    for d in sorted(p.iterdir()):
        if d.is_dir() and not d.name.startswith(".") and not (d / "zarr.json").exists():
            candidates += [f for f in sorted(d.iterdir()) if f.is_file()]
    out = []
    for f in candidates:
        rel = f.relative_to(p)
        if not _is_aux(f) or f.stat().st_size > _AUX_MAX_BYTES:
            continue
        out.append((str(rel), f))
    return out


def copy_aux(src: str | os.PathLike, dest_dir: Path, exclude: tuple[str, ...] = ()) -> list[str]:
    """Copy the non-tensor files of ``src`` (checkpoint dir or store) into ``dest_dir``,
    but those under a folder of ``exclude``."""
    copied = []
    p = Path(src)
    if p.is_file() and p.suffix == ".gguf":  # its key/values, as they are (formats.gguf)
        from .gguf import metadata_files

        for rel, data in metadata_files(p).items():
            (dest_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest_dir / rel).write_bytes(data)
            copied.append(rel)
    for rel, path in aux_files(src):
        if rel.startswith(tuple(f"{e}/" for e in exclude)):
            continue
        target = dest_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        copied.append(rel)
    return copied
