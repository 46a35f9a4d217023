"""Command line: ``streamcompress compress | estimate | info``."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .config import CompressionConfig, load_config
from .errors import ConfigError, StreamCompressError
from .stages import (
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

__all__ = ["main", "build_parser"]

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
                   help="dtype of stored scales (default float32; q8_0 is always float16)")
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


def _pipeline(args: argparse.Namespace) -> CompressionConfig:
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
            if args.simulate and scheme == parse_scheme("int8") and not args.tensor_type:
                stages.append(QuantizeInt8())  # exactly the seed's stage
            else:
                if not args.simulate and scheme.granularity.value == "tensor" and ":" not in value:
                    log.warning("--quantize %s keeps one scale for a whole tensor, which is coarse for real "
                                "weights; %s:channel (one scale per output row) keeps a model much closer "
                                "(README, Quality)", value, scheme.name)
                stages.append(Quantize(scheme, args.simulate, _overrides(args.tensor_type, args.scale_dtype)))
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
    e.add_argument("--json", action="store_true", help="print JSON")

    im = sub.add_parser("import", help="copy a safetensors checkpoint (file, sharded dir) or .npz into Zarr")
    im.add_argument("input", metavar="SRC", help=".safetensors file, directory with model.safetensors.index.json, "
                                                  "or .npz")
    im.add_argument("output", metavar="STORE", help="new Zarr v3 group")
    im.add_argument("--overwrite", action="store_true", help="replace STORE if it exists")
    im.add_argument("-q", "--quiet", action="store_true", help="no progress bar, nothing printed on success")

    ex = sub.add_parser("export", help="write a store as safetensors shards (dense or compressed-tensors)")
    ex.add_argument("input", metavar="STORE", help="a Zarr v3 group (compressed or not)")
    ex.add_argument("output", metavar="DEST", help="new directory")
    ex.add_argument("--dtype", choices=["keep", "float32", "float16", "bfloat16"], default="keep",
                    help="dtype of dense tensors (keep: as stored; quantized ones become float32)")
    ex.add_argument("--format", choices=["dense", "compressed-tensors"], default="dense", dest="fmt",
                    help="compressed-tensors: int8 codes + weight_scale (+ weight_zero_point) and a "
                         "quantization_config in config.json")
    ex.add_argument("--max-shard-size", default="5GB", metavar="SIZE", help="largest shard (default 5GB)")
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


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n} B"


def _warm_kernels() -> None:
    """Load Numba and its CPU target on a thread while the main thread imports zarr
    and opens the input (measured 0.15 s off a compress: the loading spends
    much of its time in LLVM, outside the GIL). Errors are left to the engine's
    own check."""
    try:
        from .kernels import check_threading_layer

        check_threading_layer()
        _freeze_gc()  # (Numba's objects too)
    except Exception:  # noqa: BLE001 - the engine runs the same check and reports
        pass


#: set by :func:`run`: this process is the CLI's own (process-wide tweaks allowed)
_CONSOLE = {"own_process": False}


def _freeze_gc() -> None:
    """Move what the imports made (half a million objects, mostly Numba's) out of the
    collector's reach: the run itself allocates many short-lived objects (zarr's
    asyncio machinery), and each full collection walked them all (4-5% of the
    CPU time of a compress, measured with perf). Only in the CLI's own process."""
    if _CONSOLE["own_process"]:
        import gc

        gc.freeze()


def _cmd_compress(args: argparse.Namespace) -> int:
    import threading

    threading.Thread(target=_warm_kernels, name="sc-warm", daemon=True).start()
    from .engine import EngineOptions, compress_model

    _freeze_gc()

    cfg = _pipeline(args)
    cfg.validate()
    progress = not args.quiet and sys.stderr.isatty()
    opts = EngineOptions(memory_budget=args.memory_budget, nonfinite=args.nonfinite, save_masks=args.save_masks,
                         codec=args.codec, progress=progress, missing_chunks=args.missing_chunks)
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    executor = None
    if args.scheduler or args.workers is not None:
        from .distributed import DaskExecutor

        executor = DaskExecutor(scheduler=args.scheduler, workers=args.workers, split_bytes=args.task_size)
    result = compress_model(args.input, cfg, output=args.output, overwrite=args.overwrite, resume=args.resume,
                            options=opts, executor=executor)
    print(result.summary())
    print("Error statistics (each stage against its input):")
    print(result.error_summary())
    if result.stored_bytes is not None:
        print(_stored_line(result))
    if args.report:
        Path(args.report).write_text(json.dumps(
            {"input": args.input, "output": args.output, "pipeline": cfg.to_dict(), **result.to_dict()},
            indent=2, default=_json_default))
        print(f"report written to {args.report}")
    return 0


def _stored_line(result) -> str:
    """Bytes on disk and bits per weight: over the whole model, and over the
    processed tensors alone when some were left unchanged."""
    bpw = result.bits_per_weight()
    per = f"{bpw:.3f} bits per weight (whole model)" if bpw is not None else "no parameters"
    line = f"Stored: {result.stored_bytes} bytes on disk ({_fmt_bytes(result.stored_bytes)}), {per}"
    p = result.processed_summary()
    if p["tensors"] < len(result.tensor_names) and p["params"]:
        sp = ", ".join(f"stage {i + 1} [{n}] sparsity={v:.4f}" for i, (n, v) in enumerate(p["stage_sparsity"]))
        line += (f"\nProcessed tensors only ({p['tensors']} of {len(result.tensor_names)}, {p['params']} params): "
                 f"{p['bits_per_weight']:.3f} bits per weight; {sp}")
    return line


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(f"not JSON serialisable: {o!r}")


def _cmd_estimate(args: argparse.Namespace) -> int:
    from .engine import estimate_compressed_size, load_sources

    cfg = _pipeline(args)
    sources = load_sources(args.input)
    before = sum(4 * s.meta.size for s in sources)
    after = estimate_compressed_size(sources, cfg)
    if args.json:
        print(json.dumps({"tensors": len(sources), "bytes_before": before, "bytes_after": after}))
    else:
        ratio = before / after if after else 1.0
        print(f"tensors={len(sources)} float32 bytes={before} ({_fmt_bytes(before)}) "
              f"estimated after={after} ({_fmt_bytes(after)}) ratio={ratio:.3f}x")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .safetensors_io import is_safetensors_input, scan_checkpoint
    from .store import open_input

    if is_safetensors_input(args.store):
        sources, facts = scan_checkpoint(args.store)
        group = None
    else:
        group, sources = open_input(args.store, unfinished_ok=True)
    rows = []
    for s in sources:
        try:
            stored = s.stored_bytes()
        except Exception:  # noqa: BLE001 - size is informative only
            stored = -1
        rows.append({"name": s.meta.name, "shape": list(s.meta.shape), "dtype": s.display_dtype,
                     "chunks": list(s.chunks or ()), "params": s.meta.size, "stored_bytes": stored,
                     "complete": bool(s.attrs.get("streamcompress", {}).get("complete", False))})
    meta = group.attrs.get("streamcompress") if group is not None else None
    run = group.attrs.get("streamcompress_run") if group is not None else None
    if args.json:
        print(json.dumps({"tensors": rows, "streamcompress": meta, "run": run}, indent=2))
        return 0
    width = max([len(r["name"]) for r in rows] + [4])
    print(f"{'name':<{width}}  {'shape':<18} {'dtype':<16} {'chunks':<16} {'stored':>11}")
    for r in rows:
        print(f"{r['name']:<{width}}  {str(tuple(r['shape'])):<18} {r['dtype']:<16} "
              f"{str(tuple(r['chunks'])):<16} {_fmt_bytes(r['stored_bytes']):>11}")
    total = sum(r["params"] for r in rows)
    stored = sum(max(r["stored_bytes"], 0) for r in rows)
    print(f"{len(rows)} tensors, {total} parameters, {_fmt_bytes(stored)} stored")
    if isinstance(run, dict) and run.get("status") != "complete":
        print(f"unfinished: a {run.get('command', 'compress')} run into this store did not complete "
              f"(status {run.get('status')}); other commands refuse it")
    if meta and "result" in meta:
        res = meta["result"]
        print(f"compressed by streamcompress: sparsity={res['overall_sparsity']:.4f} "
              f"ratio={res['total_compression_ratio']:.3f}x")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from .convert import import_checkpoint
    from .engine import EngineOptions

    opts = EngineOptions(progress=not args.quiet and sys.stderr.isatty())
    names = import_checkpoint(args.input, args.output, overwrite=args.overwrite, options=opts)
    if not args.quiet:
        print(f"imported {len(names)} tensors into {args.output}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .convert import export_checkpoint
    from .engine import EngineOptions, parse_size

    opts = EngineOptions(progress=not args.quiet and sys.stderr.isatty(), missing_chunks=args.missing_chunks)
    paths = export_checkpoint(args.input, args.output, dtype=args.dtype, fmt=args.fmt,
                              max_shard_size=parse_size(args.max_shard_size), overwrite=args.overwrite,
                              options=opts)
    if not args.quiet:
        print(f"exported {len(paths)} shard(s) to {args.output} ({args.fmt})")
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    from .engine import EngineOptions, restore

    opts = EngineOptions(memory_budget=args.memory_budget, progress=not args.quiet and sys.stderr.isatty(),
                         missing_chunks=args.missing_chunks)
    names = restore(args.input, args.output, dtype=args.dtype, overwrite=args.overwrite, options=opts)
    if not args.quiet:
        print(f"restored {len(names)} tensors to {args.output} as {args.dtype}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from .engine import VERIFY_EXACT, EngineOptions, verify

    res = verify(args.input, args.output, EngineOptions(memory_budget=args.memory_budget,
                                                        missing_chunks=args.missing_chunks))

    def row(s):
        sq = s.sqnr_db()
        r = {"params": s.n_compared, "nonzero": s.nonzero_params_after, "mse": s.mse(),
             "max_abs_err": s.max_abs_err, "sqnr_db": sq if math.isfinite(sq) else None}
        if s.stage_name == VERIFY_EXACT:
            r["copied"] = True
            r["identical"] = s.sum_sq_err == 0 and s.max_abs_err == 0
        return r

    if args.json:
        print(json.dumps({"tensors": {n: row(s) for n, s in res.items() if n}, "total": row(res[""])},
                         indent=2))
        return 0
    width = max([len(n) for n in res] + [5])
    copied = 0
    for n, s in list(res.items())[:-1] + [("total", res[""])]:
        if n == "":
            continue
        r = row(s)
        if r.get("copied"):
            copied += 1
            what = "identical" if r["identical"] else f"DIFFERS: max_abs_err={r['max_abs_err']:.6g}"
            print(f"{n:<{width}}  copied (not a float tensor): {what}")
            continue
        sq = "inf" if r["sqnr_db"] is None else f"{r['sqnr_db']:.2f}"
        note = f"  (the {len(res) - 1 - copied} float tensors; copied ones compared exactly)" if n == "total" else ""
        print(f"{n:<{width}}  mse={r['mse']:.6g} max_abs_err={r['max_abs_err']:.6g} sqnr={sq}dB{note}")
    differ = [n for n, s in res.items() if not row(s).get("identical", True)]
    if differ:
        print(f"streamcompress: error: copied tensor(s) differ from the input: {', '.join(differ[:5])}",
              file=sys.stderr)
        return 1
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import GENERATOR, demo_config, write_checkpoint
    from .engine import EngineOptions, compress_model, parse_size, verify
    from .errors import OutputExists

    root = Path(args.directory)
    src, out = root / "model.zarr", root / "model-int8.zarr"
    size = parse_size(args.size)
    made = {}
    if (src / "zarr.json").exists():
        made = json.loads((src / "zarr.json").read_text()).get("attributes", {})
        if made.get("generator") != GENERATOR:
            raise OutputExists(str(src), ours=False)
    elif src.exists():
        raise OutputExists(str(src), ours=False)
    if made.get("size") != size:
        root.mkdir(parents=True, exist_ok=True)
        write_checkpoint(src, size, overwrite=True)
        import zarr

        zarr.open_group(str(src), mode="r+").attrs["size"] = size
        print(f"wrote a synthetic Llama-shaped checkpoint ({_fmt_bytes(size)}) to {src}")
    cfg = demo_config()
    opts = EngineOptions(progress=not args.quiet and sys.stderr.isatty())
    result = compress_model(str(src), cfg, output=str(out), overwrite=True, options=opts)
    print(f"compressed it with {' '.join(_flags(cfg))} into {out}")
    print(result.summary())
    print(_stored_line(result))
    total = verify(str(src), str(out))[""]
    print(f"Error against the input: sqnr={total.sqnr_db():.2f}dB mse={total.mse():.3g} "
          f"max_abs_err={total.max_abs_err:.3g}")
    print(f"Next: streamcompress info {out}; streamcompress export {out} {root / 'model-int8-ct'} "
          "--format compressed-tensors")
    return 0


def _flags(cfg: CompressionConfig) -> list[str]:
    flags = [f"--quantize {s.scheme.spec()}" if isinstance(s, Quantize) else s.name for s in cfg.stages]
    return flags + (["--skip-1d"] if cfg.skip_1d else [])


_COMMANDS = {"demo": _cmd_demo, "compress": _cmd_compress, "estimate": _cmd_estimate, "info": _cmd_info,
             "restore": _cmd_restore, "verify": _cmd_verify, "import": _cmd_import, "export": _cmd_export}


def _on_signal(signum, frame):  # noqa: ARG001 - signal handler signature
    """First SIGINT/SIGTERM: stop after the block in hand; a second one stops at once."""
    import signal

    from .engine import request_stop

    request_stop(signum)
    signal.signal(signum, signal.SIG_DFL if signum == signal.SIGTERM else signal.default_int_handler)


def _skip_blas_probe() -> None:
    """Numba's CPU target, when it first loads, probes for BLAS by importing
    ``scipy.linalg`` if scipy is installed (0.18 s measured, a tenth of a small
    compress). No kernel here uses BLAS, so in the CLI's own process (see
    :func:`run`) the probe finds none; callers of ``main`` keep theirs."""
    if "numba.np.arraymath" not in sys.modules:
        sys.modules.setdefault("scipy.linalg.cython_blas", None)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 error, 2 usage, 130 SIGINT, 143 SIGTERM)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    import signal
    import threading

    from .engine import clear_stop

    clear_stop()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
    try:
        return _COMMANDS[args.command](args)
    except StreamCompressError as e:
        print(f"streamcompress: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        term = getattr(e, "signum", None) == signal.SIGTERM
        hint = ""
        if args.command == "compress":
            hint = ("; tensors finished so far are kept: rerun the same command with --resume "
                    "(without --overwrite) to continue")
        print(f"streamcompress: {'terminated' if term else 'interrupted'}{hint}", file=sys.stderr)
        return 143 if term else 130
    except OSError as e:
        print(f"streamcompress: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return 1


def run() -> None:
    """The console entry point: :func:`main`, then exit without the interpreter's
    teardown. Everything is written, fsynced and closed by then (the Dask
    cluster too); the teardown only freed Numba's and LLVM's objects one by one
    (0.45 s measured, a sixth of a 1 GB compress). ``main`` itself returns, for
    callers in a process that goes on, and leaves their process as it was."""
    _CONSOLE["own_process"] = True
    _skip_blas_probe()
    rc = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing more to say
            rc = rc or 1
    os._exit(rc)


if __name__ == "__main__":
    run()
