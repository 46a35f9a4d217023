"""The command line's parser: subcommands, stage flags, and the pipeline they make."""

from __future__ import annotations

import argparse
import logging

from .._version import __version__
from ..config import CompressionConfig, load_config
from ..errors import ConfigError
from ..stages import (
    SCHEME_NAMES,
    Clip,
    Granularity,
    Metric,
    Prune,
    PruneNM,
    PruningConfig,
    Quantize,
    QuantizeInt8,
    parse_scheme,
)

__all__ = ["build_parser", "pipeline_of"]

log = logging.getLogger("streamcompress")


class _StageAction(argparse.Action):
    """Appends ``(kind, value)`` to ``namespace.stages`` in command-line order."""

    def __call__(self, parser, namespace, values, option_string=None):
        stages = list(getattr(namespace, "stages", None) or [])
        stages.append((self.const, values))
        namespace.stages = stages


_IN_HELP = "a Zarr v3 group, a .safetensors file, or a directory of safetensors shards"


def _fraction(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: '{text}'") from None


def _add_stage_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("stages (applied in the order given)")
    g.add_argument("--prune", metavar="S", type=_fraction, action=_StageAction, const="prune",
                   dest="stages", help="prune to sparsity S in [0, 1)")
    g.add_argument("--quantize", metavar="SCHEME", type=_scheme, action=_StageAction, const="quantize",
                   dest="stages",
                   help="quantize with SCHEME = NAME[:tensor|channel|group[:SIZE]], NAME one of "
                        f"{', '.join(SCHEME_NAMES)} (e.g. int8, int8:channel, int4:group:64); real "
                        "int codes + scales are stored unless --simulate")
    g.add_argument("--simulate", action="store_true",
                   help="write dequantized float32 instead of codes (int8 per tensor: the seed's QuantizeInt8)")
    g.add_argument("--scale-dtype", choices=["float32", "float16"], default="float32",
                   help="dtype of stored scales, of --quantize and of --target-bpw's candidates (default "
                        "float32; the ggml kinds keep float16)")
    g.add_argument("--observer", choices=["minmax", "mse", "hqq"], default="minmax",
                   help="how --quantize picks each channel's or group's range: minmax (default, the range "
                        "itself), mse (the clipped range of least squared error; int8/int4 per channel or "
                        "group, q4_0, q4_1, q5_0, q5_1) or hqq (HQQ's optimized min; q4_1, q5_1). Schemes it "
                        "does not apply to keep minmax")
    g.add_argument("--target-bpw", metavar="B", type=_fraction, default=None,
                   help="mixed precision: choose a scheme per selected tensor (from --candidates) for the least "
                        "total squared error at no more than B stored bits per weight (one measuring pass, "
                        "then the run); instead of --quantize")
    g.add_argument("--candidates", metavar="SCHEME", nargs="+", default=None,
                   help="the schemes --target-bpw chooses from (default int4:group:32 int4:group:128 "
                        "int8:channel; into OUT.gguf, or estimate --format gguf: q4_0 q4_1 q5_0 q5_1 q8_0)")
    g.add_argument("--bpw-objective", choices=["relative", "sse"], default=None,
                   help="what --target-bpw minimizes: the sum of each tensor's squared error over its sum of "
                        "squares (relative, default) or the total squared error (sse)")
    g.add_argument("--tensor-type", metavar="PATTERN=SCHEME", action="append", default=[],
                   help="per-tensor scheme override (first match wins; SCHEME 'none' leaves it float); "
                        "PATTERN is a glob or re:REGEX")
    g.add_argument("--prune-nm", metavar="N:M", type=_nm, action=_StageAction, const="prune_nm", dest="stages",
                   help="N:M semi-structured pruning along the last axis, e.g. 2:4 (uses --metric l1|l2)")
    g.add_argument("--clip", metavar="P", type=_fraction, action=_StageAction, const="clip",
                   dest="stages", help="zero |w| at or below the P-th fraction of |w|, P in (0, 1]")
    g.add_argument("--metric", choices=[m.value for m in Metric], default="l1",
                   help="importance metric of --prune (default l1)")
    g.add_argument("--granularity", choices=[m.value for m in Granularity], default="unstructured",
                   help="granularity of --prune (default unstructured)")
    g.add_argument("--min-nonzero", type=int, default=1, help="elements --prune always keeps (default 1)")
    g.add_argument("--prune-scope", choices=["tensor", "global"], default="tensor",
                   help="--prune threshold per tensor (default, the seed) or one for all selected tensors")
    g.add_argument("--seed", type=int, default=0, help="seed of --metric random (default 0)")
    g.add_argument("--skip-embeddings", action="store_true",
                   help="leave tensors whose name starts with 'embed' or 'token' unchanged")
    g.add_argument("--ignore", metavar="PATTERN", action="append", default=[],
                   help="leave tensors matching PATTERN (glob, or re:REGEX) unchanged; repeatable")
    g.add_argument("--include", metavar="PATTERN", action="append", default=[],
                   help="process only tensors matching PATTERN; repeatable")
    g.add_argument("--skip-1d", action="store_true", help="leave 1-D tensors (norms, biases) unchanged")
    g.add_argument("--config", metavar="FILE", help="JSON or TOML pipeline (instead of stage flags)")


def _add_missing_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--missing-chunks", choices=["error", "fill"], default="error",
                   help="a Zarr chunk with no stored object: error (default; every chunk we write is stored), "
                        "or read it as the fill value (stores written with zarr's write_empty_chunks=False)")


def _nm(text: str) -> tuple[int, int]:
    try:
        n, m = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N:M such as 2:4, got '{text}'") from None
    return n, m


def _scheme(text: str) -> str:
    try:
        parse_scheme(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _overrides(items: list[str], scale_dtype: str) -> tuple:
    out = []
    for item in items:
        pat, sep, sch = item.rpartition("=")
        if not sep or not pat:
            raise ConfigError(f"--tensor-type needs PATTERN=SCHEME, got '{item}'")
        out.append((pat, None if sch.lower() in ("none", "f32", "float32") else parse_scheme(sch, scale_dtype)))
    return tuple(out)


def pipeline_of(args: argparse.Namespace) -> CompressionConfig:
    plan_flags = [f for f, k in (("--candidates", "candidates"), ("--bpw-objective", "bpw_objective"),
                                 ("--format", "plan_form")) if getattr(args, k, None) is not None]
    if plan_flags and getattr(args, "target_bpw", None) is None:  # (they would be ignored)
        raise ConfigError(f"{' and '.join(plan_flags)} {'say' if len(plan_flags) > 1 else 'says'} how "
                          "--target-bpw plans: give --target-bpw B too")
    flags = getattr(args, "stages", None) or []
    if args.config:
        if flags:
            raise ConfigError("give stages either as flags or with --config, not both")
        cfg = load_config(args.config)
        return cfg._replace(
            skip_embedding_layers=cfg.skip_embedding_layers or args.skip_embeddings,
            ignore=cfg.ignore + tuple(args.ignore), include=cfg.include + tuple(args.include),
            skip_1d=cfg.skip_1d or args.skip_1d)
    stages = []
    for kind, value in flags:
        if kind == "prune":
            stages.append(Prune(PruningConfig(value, args.metric, args.granularity,
                                              args.min_nonzero, args.seed, args.prune_scope)))
        elif kind == "prune_nm":
            stages.append(PruneNM(value[0], value[1], args.metric))
        elif kind == "quantize":
            scheme = parse_scheme(value, args.scale_dtype)
            if args.simulate and scheme == parse_scheme("int8") and not args.tensor_type and args.observer == "minmax":
                stages.append(QuantizeInt8())  # exactly the seed's stage
            else:
                if not args.simulate and scheme.granularity.value == "tensor" and ":" not in value:
                    log.warning("--quantize %s keeps one scale for a whole tensor, which is coarse for real "
                                "weights; %s:channel (one scale per output row) keeps a model much closer "
                                "(README, Quality)", value, scheme.name)
                stages.append(Quantize(scheme, args.simulate, _overrides(args.tensor_type, args.scale_dtype),
                                       args.observer))
        else:
            stages.append(Clip(value))
    return CompressionConfig(tuple(stages), args.skip_embeddings, tuple(args.ignore), tuple(args.include),
                             args.skip_1d)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="streamcompress",
        description="Out-of-core compression of model checkpoints (Zarr v3 groups, safetensors files or "
                    "sharded directories). New here? Run 'streamcompress demo'.",
    )
    p.add_argument("--version", action="version", version=f"streamcompress {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("compress", help="compress a checkpoint (Zarr or safetensors) into a new Zarr group",
                       description="Stream IN through the stages and write OUT.")
    c.add_argument("input", metavar="IN", help=_IN_HELP)
    c.add_argument("output", metavar="OUT", help="output Zarr v3 group (must not exist, unless --overwrite or "
                                                 "--resume)")
    _add_stage_flags(c)
    c.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    c.add_argument("--resume", action="store_true",
                   help="continue an interrupted run into OUT: keep tensors marked complete, redo the rest "
                        "(refused if the input or the pipeline changed)")
    c.add_argument("--memory-budget", default="256MiB", metavar="SIZE",
                   help="working memory to aim for, e.g. 256MiB, 2GiB (default 256MiB)")
    c.add_argument("--nonfinite", choices=["error", "zero", "keep"], default="error",
                   help="NaN/inf in a processed tensor: error (default), read as 0, or keep (the seed's "
                        "behaviour: NaN quantizes to 0, inf makes the tensor NaN)")
    c.add_argument("--codec", choices=["zstd", "none"], default="zstd", help="output codec (default zstd)")
    _add_missing_flag(c)
    c.add_argument("--save-masks", action="store_true", help="also write prune masks (__masks__/NAME)")
    c.add_argument("--report", metavar="FILE", help="write the JSON report to FILE")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    d = c.add_mutually_exclusive_group()
    d.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on a running Dask cluster, e.g. tcp://host:8786 (workers must see IN and OUT)")
    d.add_argument("--workers", type=int, metavar="N",
                   help="run on a local Dask cluster of N worker processes")
    c.add_argument("--task-size", default="1GiB", metavar="SIZE",
                   help="with --workers/--scheduler: tensors stored in more than SIZE are split into tasks of "
                        "about SIZE (default 1GiB)")

    e = sub.add_parser("estimate", help="estimate the compressed size from metadata only")
    e.add_argument("input", metavar="IN", help=_IN_HELP)
    _add_stage_flags(e)
    e.add_argument("--format", choices=["zarr", "gguf"], default=None, dest="plan_form",
                   help="with --target-bpw: count the bits as this output stores them (gguf: the ggml kinds "
                        "as their blocks, as compress IN OUT.gguf plans; default zarr: a store's)")
    e.add_argument("--json", action="store_true", help="print JSON")

    im = sub.add_parser("import", help="copy a safetensors checkpoint (file, sharded dir) or .npz into Zarr")
    im.add_argument("input", metavar="SRC", help=".safetensors file, directory with model.safetensors.index.json, "
                                                  "or .npz")
    im.add_argument("output", metavar="STORE", help="new Zarr v3 group")
    im.add_argument("--overwrite", action="store_true", help="replace STORE if it exists")
    im.add_argument("-q", "--quiet", action="store_true", help="no progress bar, nothing printed on success")

    ex = sub.add_parser("export", help="write a store as safetensors shards (dense or compressed-tensors) "
                                       "or as one GGUF file")
    ex.add_argument("input", metavar="STORE", help="a Zarr v3 group (compressed or not)")
    ex.add_argument("output", metavar="DEST", help="new directory (a file for GGUF: OUT.gguf)")
    ex.add_argument("--dtype", choices=["keep", "float32", "float16", "bfloat16"], default="keep",
                    help="dtype of dense tensors (keep: as stored; quantized ones become float32)")
    ex.add_argument("--format", choices=["dense", "compressed-tensors", "gguf"], default=None, dest="fmt",
                    help="compressed-tensors: int weights pack-quantized (weight_packed, weight_scale, "
                         "weight_shape) with a quantization_config in config.json, as llm-compressor writes "
                         "them (loads in transformers and vLLM); gguf: one GGUF v3 file, ggml block schemes "
                         "as their blocks (llama.cpp); dense: plain safetensors (default; gguf when DEST ends "
                         "in .gguf)")
    ex.add_argument("--max-shard-size", default=None, metavar="SIZE",
                    help="largest shard (default 5GB; GGUF: one file unless given, then a split model in "
                         "directory DEST, named as gguf-split names parts)")
    ex.add_argument("--overwrite", action="store_true", help="replace DEST if it exists")
    _add_missing_flag(ex)
    ex.add_argument("-q", "--quiet", action="store_true", help="no progress bar, nothing printed on success")

    r = sub.add_parser("restore", help="write a compressed store's tensors back as dense floats, into a new Zarr "
                                       "group (to load in other tools, use export)",
                       description="Dequantize every tensor of STORE into a new Zarr v3 group DEST of dense "
                                   "float tensors. DEST is a Zarr store, not a checkpoint other tools load: "
                                   "'export' writes safetensors.")
    r.add_argument("input", metavar="STORE", help="a (compressed) Zarr v3 group")
    r.add_argument("output", metavar="DEST", help="new Zarr v3 group")
    r.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    r.add_argument("--overwrite", action="store_true", help="replace DEST if it exists")
    r.add_argument("--memory-budget", default="256MiB", metavar="SIZE")
    _add_missing_flag(r)
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar, nothing printed on success")

    v = sub.add_parser("verify", help="error statistics of a compressed store against its input")
    v.add_argument("input", metavar="IN", help="the original checkpoint (" + _IN_HELP + ")")
    v.add_argument("output", metavar="OUT", help="the compressed (or restored) store, or a safetensors export")
    v.add_argument("--memory-budget", default="256MiB", metavar="SIZE")
    _add_missing_flag(v)
    v.add_argument("--json", action="store_true", help="print JSON")

    dm = sub.add_parser("demo", help="make a small Llama-shaped checkpoint and compress it (int8 per channel)",
                        description="Write a synthetic Llama-shaped checkpoint to DIR/model.zarr, compress it "
                                    "with int8 per channel (1-D tensors left float) into DIR/model-int8.zarr, "
                                    "and print the summary and the error against the input.")
    dm.add_argument("directory", metavar="DIR", nargs="?", default="streamcompress-demo",
                    help="where the demo's files go (default ./streamcompress-demo)")
    dm.add_argument("--size", default="64MB", metavar="SIZE", help="size of the checkpoint (default 64MB)")
    dm.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    i = sub.add_parser("info", help="list the tensors of a store")
    i.add_argument("store", metavar="STORE", help=_IN_HELP)
    i.add_argument("--json", action="store_true", help="print JSON")
    return p
