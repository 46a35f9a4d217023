"""GGUF (llama.cpp's format): ``reader`` (files in), ``writer`` (files out, from a
store), ``sink`` (files out, straight from a run), ``blocks`` (ggml block bytes
from stored codes and scales)."""

from .reader import GGUFFormat, metadata_files
from .sink import GGUFSink
from .writer import GGUFExporter

__all__ = ["GGUFFormat", "GGUFExporter", "GGUFSink", "metadata_files"]
