"""Mixed precision to a bit budget (``--target-bpw``): the exact choice, the
measuring pass, and the run that applies the plan."""

import itertools
import json

import numpy as np
import pytest

import streamcompress as sc
from conftest import heavy_tailed
from streamcompress.cli import main
from streamcompress.engine import plan_bit_budget
from streamcompress.layout import TensorMeta
from streamcompress.stages import Quantize, parse_scheme
from streamcompress.stages.probe import plan_bits
from test_data_safety import one_line_error


def _brute(sse, bits, budget):
    best = None
    for picks in itertools.product(*[range(len(b)) for b in bits]):
        tb = sum(b[k] for b, k in zip(bits, picks))
        if tb > budget:
            continue
        te = sum(e[k] for e, k in zip(sse, picks))
        if best is None or te < best[0]:
            best = (te, picks)
    return best


@pytest.mark.parametrize("seed", range(40))
def test_the_choice_is_the_brute_force_optimum(seed):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(1, 8)), int(rng.integers(1, 4))
    bits = [sorted(rng.integers(10, 200, k).tolist()) for _ in range(n)]
    sse = [sorted(rng.random(k).tolist(), reverse=True) for _ in range(n)]  # (more bits, less error: as real)
    if seed % 3 == 0:  # and unordered ones, with ties
        sse = [[float(round(v, 1)) for v in rng.random(k)] for _ in range(n)]
    lo, hi = sum(min(b) for b in bits), sum(max(b) for b in bits)
    budget = int(rng.integers(lo, hi + 1))
    picks, exact = plan_bits(sse, bits, budget)
    want = _brute(sse, bits, budget)
    assert exact and sum(b[p] for b, p in zip(bits, picks)) <= budget
    assert sum(e[p] for e, p in zip(sse, picks)) == pytest.approx(want[0], abs=1e-12)


def test_a_budget_below_the_cheapest_choice_is_refused():
    with pytest.raises(sc.ConfigError, match="cannot be met"):
        plan_bits([[1.0, 0.5]], [[100, 200]], 99)
    # thinned when the front is too large: still within the budget, said not exact
    rng = np.random.default_rng(0)
    sse = [rng.random(3).tolist() for _ in range(14)]
    bits = [rng.integers(10, 1000, 3).tolist() for _ in range(14)]
    budget = sum(int(np.median(b)) for b in bits)
    picks, exact = plan_bits(sse, bits, budget, max_states=8)
    assert not exact and sum(b[p] for b, p in zip(bits, picks)) <= budget


def _model(rng):
    return {"a.weight": heavy_tailed(rng, (64, 256)), "b.weight": heavy_tailed(rng, (128, 256)) * 0.1,
            "c.weight": heavy_tailed(rng, (32, 512)) * 3, "norm.weight": np.ones(256, np.float32)}


@pytest.mark.parametrize("objective", ["relative", "sse"])
def test_the_plan_is_measured_in_one_pass_and_the_run_stores_what_it_planned(rng, objective):
    tensors = _model(rng)
    cfg = sc.CompressionConfig((), skip_1d=True)
    plan = plan_bit_budget(tensors, cfg, 6.0, objective=objective, options=sc.EngineOptions(block_elems=1000))
    assert [r["name"] for r in plan.rows] == ["a.weight", "b.weight", "c.weight"]  # (1-D left float)
    assert plan.bits_per_weight() <= 6.0 and plan.exact
    assert len({r["scheme"] for r in plan.rows}) > 1  # a real mix at this budget
    run = sc.compress_model(tensors, sc.CompressionConfig((plan.quantize_stage(),), skip_1d=True))
    for r in plan.rows:
        st = run.tensor_stats[r["name"]]
        assert st["stages"][0]["scheme"] == r["scheme"]
        # the probe's error of each candidate is the error a run with it gives
        for spec, cand in r["candidates"].items():
            one = sc.compress_model({r["name"]: tensors[r["name"]]},
                                    sc.CompressionConfig((Quantize(parse_scheme(spec)),)))
            assert one.stage_stats[0].sum_sq_err == pytest.approx(cand["sse"], rel=1e-12)
            assert 8 * Quantize(parse_scheme(spec)).encoded_bytes(
                TensorMeta(r["name"], tensors[r["name"]].shape)) == cand["bits"]
    # and the choice is the optimum of the measured figures
    w = [1 / float(np.sum(tensors[r["name"]].astype(np.float64) ** 2)) if objective == "relative" else 1.0
         for r in plan.rows]
    specs = [c.spec() for c in plan.candidates]
    sse = [[r["candidates"][s]["sse"] * wi for s in specs] for r, wi in zip(plan.rows, w)]
    bits = [[r["candidates"][s]["bits"] for s in specs] for r in plan.rows]
    best = _brute(sse, bits, int(6.0 * plan.params))
    assert tuple(specs.index(r["scheme"]) for r in plan.rows) == best[1]


def test_target_bpw_on_the_command_line_plans_reports_and_estimates(tmp_path, rng, capsys):
    from test_streaming import write_store

    src = write_store(tmp_path / "in.zarr", list(_model(rng).items()))
    out, rep = tmp_path / "o.zarr", tmp_path / "r.json"
    assert main(["estimate", str(src), "--target-bpw", "5.5", "--skip-1d", "--json"]) == 0
    est = json.loads(capsys.readouterr().out)
    assert not out.exists() and est["bits_per_weight"] <= 5.5
    assert main(["compress", str(src), str(out), "--target-bpw", "5.5", "--skip-1d", "-q", "--report", str(rep)]) == 0
    r = json.loads(rep.read_text())
    assert [t["scheme"] for t in r["bit_budget"]["tensors"]] == [t["scheme"] for t in est["tensors"]]
    assert r["bit_budget"]["bits_per_weight"] <= 5.5
    capsys.readouterr()
    for bad, needle in ([["--target-bpw", "5", "--quantize", "int8"], "without --quantize"],
                        [["--target-bpw", "1"], "cannot be met"],
                        [["--target-bpw", "-2"], "positive"],
                        [["--target-bpw", "5", "--candidates", "fp8:block"], "per-channel or per-group"],
                        [["--target-bpw", "5", "--candidates", "int3"], "unknown quantization scheme"]):
        assert main(["compress", str(src), str(tmp_path / "x.zarr"), *bad]) == 1, bad
        one_line_error(capsys, needle)
        assert not (tmp_path / "x.zarr").exists()
    for flags in (["--tensor-type", "a.weight=int8:channel"], ["--simulate"]):  # (the plan would ignore them)
        assert main(["compress", str(src), str(tmp_path / "x.zarr"), "--target-bpw", "6", *flags, "-q"]) == 1
        one_line_error(capsys, f"give it without {flags[0]}")
        assert main(["estimate", str(src), "--target-bpw", "6", *flags]) == 1
        one_line_error(capsys, f"give it without {flags[0]}")
    assert not (tmp_path / "x.zarr").exists()


def test_an_observer_measures_and_applies_the_candidates_it_fits_and_leaves_the_rest_minmax(rng):
    """``--observer hqq`` with q4_1 and int8:channel among the candidates: q4_1's error
    is measured (and stored) with HQQ, int8:channel's with minmax, as runs of each give."""
    tensors = _model(rng)
    cfg = sc.CompressionConfig((), skip_1d=True)
    cands = ("q4_1", "q5_1", "int8:channel")
    plan = plan_bit_budget(tensors, cfg, 6.0, candidates=cands, observer="hqq")
    assert len({r["scheme"] for r in plan.rows}) > 1
    for r in plan.rows:
        for spec, cand in r["candidates"].items():
            obs = "hqq" if spec.startswith("q") else "minmax"
            one = sc.compress_model({r["name"]: tensors[r["name"]]},
                                    sc.CompressionConfig((Quantize(parse_scheme(spec), observer=obs),)))
            assert one.stage_stats[0].sum_sq_err == pytest.approx(cand["sse"], rel=1e-12), spec
    run = sc.compress_model(tensors, sc.CompressionConfig((plan.quantize_stage(),), skip_1d=True))
    for r in plan.rows:
        st = run.tensor_stats[r["name"]]["stages"][0]
        assert st["scheme"] == r["scheme"] and st.get("observer", "minmax") == (
            "hqq" if r["scheme"].startswith("q") else "minmax")
        assert run.tensor_stats[r["name"]]["stages"][0]["sum_sq_err"] == pytest.approx(
            r["candidates"][r["scheme"]]["sse"], rel=1e-12)
    with pytest.raises(sc.ConfigError, match="hqq observer does not apply"):
        plan_bit_budget(tensors, cfg, 6.0, candidates=("int4:group:32", "int8:channel"), observer="hqq")


def test_scale_dtype_reaches_the_candidates_and_the_run_stores_what_was_measured(tmp_path, rng, capsys):
    """``--target-bpw --scale-dtype float16``: each candidate is measured and counted
    with float16 scales, and the run stores float16 scales in exactly the planned bits."""
    import zarr

    from test_streaming import write_store

    src = write_store(tmp_path / "in.zarr", list(_model(rng).items()))
    out, rep = tmp_path / "o.zarr", tmp_path / "r.json"
    args = ["--target-bpw", "5.0", "--candidates", "int4_asym:group:32", "int8:channel", "--skip-1d"]
    assert main(["compress", str(src), str(out), *args, "--scale-dtype", "float16", "-q", "--codec", "none",
                 "--report", str(rep)]) == 0
    plan = json.loads(rep.read_text())["bit_budget"]
    assert plan["scale_dtypes"] == ["float16", "float16"]
    g, shapes = zarr.open_group(str(out), mode="r"), zarr.open_group(str(src), mode="r")
    stored = 0
    for t in plan["tensors"]:
        assert g[t["name"] + "_scale"].dtype == np.float16, t
        stored += sum(8 * g[t["name"] + s].nbytes for s in ("", "_scale", "_zero_point") if t["name"] + s in g)
        meta = TensorMeta(t["name"], shapes[t["name"]].shape)
        assert t["bits"] == 8 * Quantize(parse_scheme(t["scheme"], "float16")).encoded_bytes(meta)
    assert stored == plan["bits_per_weight"] * sum(t["params"] for t in plan["tensors"])
    capsys.readouterr()  # (float32 scales: int4_asym:group:32 alone is 5.25 bits per weight)
    assert main(["estimate", str(src), *args]) == 1
    one_line_error(capsys, "the bit budget cannot be met")
    with pytest.raises(sc.ConfigError, match="must differ"):
        plan_bit_budget(_model(rng), sc.CompressionConfig(()), 6.0, candidates=(
            parse_scheme("int8:channel"), parse_scheme("int8:channel", "float16")))


def test_a_budget_into_a_gguf_counts_the_gguf_blocks_bits(tmp_path, rng, capsys):
    """Into OUT.gguf the plan counts ggml's blocks (q5_1: 6 bits per weight; in a
    store its int8 codes make it 9), and the file's tensors hold exactly the planned bits."""
    from gguf import GGUFReader

    from test_streaming import write_store

    src = write_store(tmp_path / "in.zarr", list(_model(rng).items()))
    out, rep = tmp_path / "o.gguf", tmp_path / "r.json"
    args = ["--target-bpw", "5.5", "--candidates", "q4_1", "q5_1", "--skip-1d", "-q"]
    assert main(["compress", str(src), str(out), *args, "--report", str(rep)]) == 0
    plan = json.loads(rep.read_text())["bit_budget"]
    assert plan["form"] == "gguf" and {t["scheme"] for t in plan["tensors"]} == {"q4_1", "q5_1"}
    for t in plan["tensors"]:
        assert t["bits"] == t["params"] * (5 if t["scheme"] == "q4_1" else 6)
    got = {t.name: 8 * int(t.n_bytes) for t in GGUFReader(str(out)).tensors}
    assert sum(got[t["name"]] for t in plan["tensors"]) == sum(t["bits"] for t in plan["tensors"])
    capsys.readouterr()
    assert main(["estimate", str(src), *args[:-1], "--json"]) == 0  # (a store: q5_1 is 9 bits per weight)
    assert {t["scheme"] for t in json.loads(capsys.readouterr().out)["tensors"]} == {"q4_1"}
    assert main(["estimate", str(src), *args[:-1], "--format", "gguf", "--json"]) == 0  # (as compress plans it)
    est = json.loads(capsys.readouterr().out)
    assert est["form"] == "gguf"
    assert [(t["name"], t["scheme"], t["bits"]) for t in est["tensors"]] == [
        (t["name"], t["scheme"], t["bits"]) for t in plan["tensors"]]
    for cmd in (["estimate", str(src), "--quantize", "q8_0"], ["compress", str(src), str(tmp_path / "x.zarr"),
                                                                 "--quantize", "int8:channel", "-q"]):
        for flags, needle in ((["--format", "gguf"], "--format says how --target-bpw plans"),
                              (["--candidates", "q4_0"], "--candidates says how --target-bpw plans"),
                              (["--candidates", "q4_0", "--bpw-objective", "sse"], "--candidates and --bpw-objective say"),
                              (["--bpw-objective", "relative"], "--bpw-objective says")):
            if cmd[0] == "compress" and flags[0] == "--format":
                continue  # (compress has no --format: OUT's suffix says it)
            assert main([*cmd, *flags]) == 1, flags  # (each would be ignored)
            one_line_error(capsys, needle)
    assert not (tmp_path / "x.zarr").exists()


def test_a_budget_into_a_gguf_chooses_among_the_ggml_kinds_and_leaves_1d_float(tmp_path, rng, capsys):
    """Into OUT.gguf the default candidates are ggml's kinds and 1-D tensors stay
    out of the plan (the run keeps them float there: a plan that counted a norm
    as 6-bit q5_1 held 32-bit floats in the file); anything a GGUF cannot hold
    is refused in one line before the measuring pass, with nothing written."""
    from gguf import GGUFReader

    from test_streaming import write_store

    src = write_store(tmp_path / "in.zarr", list(_model(rng).items()))
    out, rep = tmp_path / "o.gguf", tmp_path / "r.json"
    assert main(["compress", str(src), str(out), "--target-bpw", "5.5", "-q", "--report", str(rep)]) == 0
    plan = json.loads(rep.read_text())["bit_budget"]
    assert plan["candidates"] == ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"]
    assert [t["name"] for t in plan["tensors"]] == ["a.weight", "b.weight", "c.weight"]  # (norm.weight: float)
    got = {t.name: 8 * int(t.n_bytes) for t in GGUFReader(str(out)).tensors}
    assert sum(got[t["name"]] for t in plan["tensors"]) == sum(t["bits"] for t in plan["tensors"])
    assert plan["bits_per_weight"] <= 5.5
    capsys.readouterr()
    assert main(["estimate", str(src), "--target-bpw", "5.5", "--format", "gguf", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tensors"] == plan["tensors"]

    bad_out = tmp_path / "bad.gguf"
    for extra, needle in ((["--candidates", "q4_0", "int8:channel"], "chooses among ggml's block types"),
                          ([], "cannot be a ggml block type")):
        src2 = src
        if not extra:  # (a 2-D tensor whose rows are not whole blocks of 32)
            src2 = write_store(tmp_path / "odd.zarr", [*_model(rng).items(), ("odd.weight", rng.standard_normal(
                (8, 48)).astype(np.float32))])
        assert main(["compress", str(src2), str(bad_out), "--target-bpw", "5.5", *extra, "-q"]) == 1
        one_line_error(capsys, needle)
        assert not bad_out.exists() and not list(tmp_path.glob(".bad.gguf*"))
