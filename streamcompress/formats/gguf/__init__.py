"""GGUF (llama.cpp's format): ``reader`` (files in), ``writer`` (files out),
``blocks`` (ggml block bytes from stored codes and scales)."""

from .reader import GGUFFormat, metadata_files
from .writer import GGUFExporter

__all__ = ["GGUFFormat", "GGUFExporter", "metadata_files"]
