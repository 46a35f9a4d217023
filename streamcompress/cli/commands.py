"""The command line's commands: one function per subcommand, each returning its exit code."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

from ..config import CompressionConfig
from ..errors import ConfigError
from ..stages import Quantize
from .parser import pipeline_of

__all__ = ["_COMMANDS", "_CONSOLE", "_freeze_gc"]


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n} B"


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


def _warm_kernels() -> None:
    """Load Numba and its CPU target on a thread while the main thread imports zarr
    and opens the input (measured 0.15 s off a compress: the loading spends
    much of its time in LLVM, outside the GIL). Errors are left to the engine's
    own check."""
    try:
        from ..kernels import check_threading_layer

        check_threading_layer()
        _freeze_gc()  # (Numba's objects too)
    except Exception:  # noqa: BLE001 - the engine runs the same check and reports
        pass


def _cmd_compress(args: argparse.Namespace) -> int:
    import threading

    threading.Thread(target=_warm_kernels, name="sc-warm", daemon=True).start()
    from ..engine import EngineOptions, compress_model

    _freeze_gc()

    cfg = pipeline_of(args)
    progress = not args.quiet and sys.stderr.isatty()
    opts = EngineOptions(memory_budget=args.memory_budget, nonfinite=args.nonfinite, save_masks=args.save_masks,
                         codec=args.codec, progress=progress, missing_chunks=args.missing_chunks)
    plan = None
    if args.target_bpw is not None:
        plan = _bit_plan(args, cfg, opts)
        print(plan.table())
        cfg = dataclasses.replace(cfg, stages=(plan.quantize_stage(),))
    cfg.validate()
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    executor = None
    if args.scheduler or args.workers is not None:
        from ..distributed import DaskExecutor

        executor = DaskExecutor(scheduler=args.scheduler, workers=args.workers, split_bytes=args.task_size)
    result = compress_model(args.input, cfg, output=args.output, overwrite=args.overwrite, resume=args.resume,
                            options=opts, executor=executor)
    print(result.summary())
    print("Error statistics (each stage against its input):")
    print(result.error_summary())
    if result.stored_bytes is not None:
        print(_stored_line(result))
    if args.report:
        extra = {"bit_budget": plan.to_dict()} if plan is not None else {}
        Path(args.report).write_text(json.dumps(
            {"input": args.input, "output": args.output, "pipeline": cfg.to_dict(), **result.to_dict(), **extra},
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


def _bit_plan(args: argparse.Namespace, cfg, opts):
    """The plan of ``--target-bpw`` (its measuring pass over the input)."""
    from ..engine.budget import plan_bit_budget
    from ..formats import format_of_suffix
    from ..stages.probe import default_candidates
    from ..stages.schemes import parse_scheme

    if cfg.stages:
        raise ConfigError("--target-bpw chooses each tensor's quantization: give it without --quantize, "
                          "--prune, --clip or a --config pipeline")
    fixed = [f for f, v in (("--tensor-type", getattr(args, "tensor_type", None)),
                            ("--simulate", getattr(args, "simulate", False))) if v]
    if fixed:  # (they would be ignored: the plan's stage sets every selected tensor's scheme)
        raise ConfigError(f"--target-bpw chooses each tensor's scheme and stores real codes: give it without "
                          f"{' or '.join(fixed)} (--ignore leaves a tensor float)")
    out = getattr(args, "output", None)  # (the bits counted are the output's: a GGUF's blocks for OUT.gguf)
    if out is None:  # (estimate: --format)
        form = getattr(args, "plan_form", None) or "zarr"
    else:
        form = "gguf" if format_of_suffix(out) == "gguf" else "zarr"
    specs = args.candidates or default_candidates(form)
    candidates = tuple(parse_scheme(c, args.scale_dtype) for c in specs)  # (--scale-dtype: theirs)
    return plan_bit_budget(args.input, cfg, args.target_bpw, candidates, args.observer,
                           dataclasses.replace(opts, progress=False), args.bpw_objective or "relative", form)


def _cmd_estimate(args: argparse.Namespace) -> int:
    from ..engine import EngineOptions, estimate_compressed_size, load_sources

    if args.target_bpw is not None:  # (a measuring pass: the plan, nothing written)
        plan = _bit_plan(args, pipeline_of(args), EngineOptions())
        print(json.dumps(plan.to_dict(), indent=2) if args.json else plan.table())
        return 0
    cfg = pipeline_of(args)  # (refuses --format, --candidates, --bpw-objective without --target-bpw)
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
    from ..formats import open_checkpoint

    ckpt = open_checkpoint(args.store, unfinished_ok=True)
    sources, group = ckpt.sources, ckpt.group
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
    from ..engine.convert import import_checkpoint
    from ..engine import EngineOptions

    opts = EngineOptions(progress=not args.quiet and sys.stderr.isatty())
    names = import_checkpoint(args.input, args.output, overwrite=args.overwrite, options=opts)
    if not args.quiet:
        print(f"imported {len(names)} tensors into {args.output}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ..engine.convert import export_checkpoint
    from ..engine import EngineOptions, parse_size

    from ..formats import format_of_suffix

    opts = EngineOptions(progress=not args.quiet and sys.stderr.isatty(), missing_chunks=args.missing_chunks)
    fmt = args.fmt or format_of_suffix(args.output) or "dense"
    paths = export_checkpoint(args.input, args.output, dtype=args.dtype, fmt=fmt,
                              max_shard_size=parse_size(args.max_shard_size) if args.max_shard_size else None,
                              overwrite=args.overwrite,
                              options=opts)
    if not args.quiet:
        what = "1 file" if len(paths) == 1 and str(args.output).endswith(".gguf") else f"{len(paths)} shard(s)"
        print(f"exported {what} to {args.output} ({fmt})")
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    from ..engine import EngineOptions, restore

    opts = EngineOptions(memory_budget=args.memory_budget, progress=not args.quiet and sys.stderr.isatty(),
                         missing_chunks=args.missing_chunks)
    names = restore(args.input, args.output, dtype=args.dtype, overwrite=args.overwrite, options=opts)
    if not args.quiet:
        print(f"restored {len(names)} tensors to {args.output} as {args.dtype}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from ..engine import VERIFY_EXACT, EngineOptions, verify

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
    from ..demo import GENERATOR, demo_config, write_checkpoint
    from ..engine import EngineOptions, compress_model, parse_size, verify
    from ..errors import OutputExists

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
