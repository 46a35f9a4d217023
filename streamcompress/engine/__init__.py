"""The streaming engine: tensors through the pipeline with bounded memory.

Orchestration only, in five parts: ``options`` (sizes, options, the stop
flag), ``plan`` (a run decided before any work, and its fingerprints), ``io``
(read-ahead, write-behind, reused buffers, progress), ``local`` (one tensor's
work and the in-process executor; ``streamcompress.distributed`` holds the Dask
one), ``compress`` (``compress_model``); beside them the stream tools
``tools`` (``restore``, ``verify``, ``estimate_compressed_size``) and
``convert`` (``import``, ``export``). Formats are reached only through
``streamcompress.formats``' protocols.
"""

from .budget import BitPlan, plan_bit_budget
from .compress import compress_model
from .convert import EXPORT_FORMATS, export_checkpoint, import_checkpoint
from .io import _IO, _Progress
from .local import LocalExecutor
from .options import EngineOptions, Interrupted, check_stop, clear_stop, parse_size, request_stop
from .plan import Run, load_sources
from .tools import VERIFY_EXACT, estimate_compressed_size, restore, verify

__all__ = ["BitPlan", "plan_bit_budget", "EngineOptions", "compress_model", "estimate_compressed_size", "load_sources", "restore", "verify",
           "import_checkpoint", "export_checkpoint", "EXPORT_FORMATS", "LocalExecutor", "Run", "parse_size",
           "Interrupted", "request_stop", "clear_stop", "check_stop", "VERIFY_EXACT", "_IO", "_Progress"]
