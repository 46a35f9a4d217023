"""compressed-tensors exports, checked by the libraries that read them in the wild:
compressed-tensors' own compressor (golden: the same tensors, byte for byte, and
a config it accepts), its decompressor, transformers' AutoModel and
sentence-transformers, on the real all-MiniLM-L6-v2."""

import json
import os
import sys

import numpy as np
import pytest
import zarr
from safetensors import safe_open

from streamcompress.cli import main
from test_real_checkpoint import MODEL

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("CI") and sys.version_info[:2] == (3, 11):  # the test extra brings them there
    import compressed_tensors  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
torch = pytest.importorskip("torch", reason="torch comes with the test extra on Python 3.11")
pytest.importorskip("compressed_tensors")
pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(MODEL is None, reason="all-MiniLM-L6-v2 comes with the test extra on Python 3.11")

#: schemes with a compressed-tensors form (every int scheme), and whether transformers loads it
#: (5.x cannot load packed zero points of asymmetric channel/group weights: llm-compressor#1618,
#: its own exports included; compressed-tensors' decompressor reads them)
SCHEMES = {"int8:channel": True, "int4:group:32": True, "int8:tensor": True, "int4:channel": True,
           "q8_0": True, "int8:group:64": True, "int8_asym:tensor": True,
           "int8_asym:channel": False, "int4_asym:group:32": False, "fp8:channel": True, "fp8:tensor": True,
           "fp8:block": True}
QUANTIZED = ["--ignore", "*embeddings*", "--skip-1d"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """scheme -> (compressed store, its compressed-tensors export, its dense export, restore)."""
    cache = {}

    def make(scheme):
        if scheme not in cache:
            d = tmp_path_factory.mktemp(scheme.replace(":", "-"))
            c, ct, dense, r = d / "c.zarr", d / "ct", d / "dense", d / "r.zarr"
            assert main(["compress", str(MODEL), str(c), "--quantize", scheme, *QUANTIZED, "-q"]) == 0
            assert main(["export", str(c), str(ct), "--format", "compressed-tensors", "-q"]) == 0
            assert main(["export", str(c), str(dense), "-q"]) == 0
            assert main(["restore", str(c), str(r), "-q"]) == 0
            cache[scheme] = c, ct, dense, r
        return cache[scheme]

    return make


def _tensors(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, "pt") as st:
            out.update({k: st.get_tensor(k) for k in st.keys()})
    return out


def _reference(store, ct, restored):
    """What compressed-tensors itself writes for the same weights and quantization
    parameters: MiniLM with our config applied by compressed-tensors (so the config
    must parse), each quantized module given our restored weight, scale and zero
    point, then compressed by its ModelCompressor."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config
    from transformers import AutoModel

    qcfg = json.loads((ct / "config.json").read_text())["quantization_config"]
    qc = QuantizationConfig.model_validate(qcfg)
    model = AutoModel.from_pretrained(str(MODEL))
    apply_quantization_config(model, qc)
    g, r = zarr.open_group(str(store), mode="r"), zarr.open_group(str(restored), mode="r")
    done = 0
    for name, m in model.named_modules():
        if not hasattr(m, "weight_scale"):
            continue
        q = g[name + ".weight"].attrs["quantization"]
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(r[name + ".weight"][...]))
            m.weight_scale.copy_(torch.from_numpy(g[name + ".weight_scale"][...].astype(np.float32))
                                 .reshape(m.weight_scale.shape))
            if hasattr(m, "weight_zero_point"):  # ours in CT's signed range (int4 asym: 0..15 -> -8..7)
                zp = g[name + ".weight_zero_point"][...].astype(np.int16) - (8 if q["bits"] == 4 else 0)
                m.weight_zero_point.copy_(torch.from_numpy(zp.astype(np.int8)).reshape(m.weight_zero_point.shape))
        done += 1
    assert done == 37  # every Linear of the encoder and the pooler
    ModelCompressor.from_pretrained_model(model).compress_model(model)
    return model.state_dict(), qc


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_export_is_what_compressed_tensors_itself_writes(made, scheme):
    store, ct, _, restored = made(scheme)
    ref, qc = _reference(store, ct, restored)
    ours = _tensors(ct)
    extra, lacking = sorted(set(ours) - set(ref)), sorted(set(ref) - set(ours))
    assert extra == ["embeddings.position_ids"] and lacking == [], (extra, lacking)  # (a buffer, kept)
    for k, t in ours.items():
        if k in extra:
            continue
        want = ref[k]
        assert t.dtype == want.dtype and tuple(t.shape) == tuple(want.shape), k
        assert torch.equal(t, want.to(t.dtype)), k
    # the config: one group, pack-quantized, every float Linear ignored, as llm-compressor writes it
    (group,) = qc.config_groups.values()
    fmt = "float-quantized" if scheme.startswith("fp8") else "pack-quantized"
    assert qc.format == group.format == fmt and qc.quantization_status == "compressed"
    assert group.targets == ["Linear"] and "embeddings.word_embeddings" in qc.ignore


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_compressed_tensors_decompresses_to_restore(made, scheme):
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig

    store, ct, _, restored = made(scheme)
    qc = QuantizationConfig.model_validate(json.loads((ct / "config.json").read_text())["quantization_config"])
    (scheme_ct,) = qc.config_groups.values()
    compressor = BaseCompressor.get_value_from_registry(scheme_ct.format)  # its own, by the format we wrote
    ours = _tensors(ct)
    r = zarr.open_group(str(restored), mode="r")
    mods = [k[: -len(".weight_scale")] for k in ours if k.endswith(".weight_scale")]
    assert len(mods) == 37
    for mod in mods:
        local = {n[len(mod) + 1:]: v for n, v in ours.items() if n.startswith(mod + ".weight")}
        w = compressor.decompress(local, scheme_ct)["weight"]
        assert torch.equal(w.to(torch.float32), torch.from_numpy(r[mod + ".weight"][...])), mod


def _embed(model, texts):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(MODEL))
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
    e = (h * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(e, dim=1)


TEXTS = ["The committee approved the budget for next year.", "A small dog ran towards the children.",
         "Numbers are sorted faster with a better algorithm.", "The river flooded the fields near the village."]


@pytest.mark.parametrize("scheme", [s for s, ok in SCHEMES.items() if ok])
def test_transformers_loads_the_export_with_every_weight(made, scheme):
    from transformers import AutoModel

    store, ct, dense, restored = made(scheme)
    model, info = AutoModel.from_pretrained(str(ct), output_loading_info=True)  # plain: no flags
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ref = _embed(AutoModel.from_pretrained(str(dense)), TEXTS)
    cos = (_embed(model, TEXTS) * ref).sum(1)
    if scheme.startswith("fp8"):
        # float8 weights are FP8_DYNAMIC: the inputs of each Linear are quantized to float8 per
        # token at run time too, as vLLM runs them; with the weights dequantized at load, the
        # model is the dense export's
        from transformers import CompressedTensorsConfig

        assert float(cos.min()) >= 0.998
        deq = AutoModel.from_pretrained(str(ct), quantization_config=CompressedTensorsConfig(dequantize=True))
        assert float((_embed(deq, TEXTS) * ref).sum(1).min()) >= 0.99999
    else:
        assert float(cos.min()) >= 0.99999
    # the first forward decompressed every quantized Linear: exactly restore's weights
    r = zarr.open_group(str(restored), mode="r")
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 37
    for n, m in linears:
        assert torch.equal(m.weight.detach().to(torch.float32), torch.from_numpy(r[n + ".weight"][...])), n


@pytest.mark.parametrize("scheme", [s for s, ok in SCHEMES.items() if not ok])
def test_transformers_refusal_of_asymmetric_packed_zero_points_is_the_peers_own(made, scheme):
    """transformers refuses compressed-tensors' own export of these too (the same files:
    test_export_is_what_compressed_tensors_itself_writes); if it starts loading them,
    move the scheme to the loading test."""
    from transformers import AutoModel

    _, ct, _, _ = made(scheme)
    with pytest.raises(RuntimeError, match="mismatch"):
        AutoModel.from_pretrained(str(ct))


def test_sentence_transformers_loads_the_export_dequantized(made):
    """sentence-transformers runs the model's submodules without the decompression
    hook that compressed-tensors puts on the whole model, so it needs transformers'
    own dequantize=True (README, Load the result)."""
    st = pytest.importorskip("sentence_transformers")
    from transformers import CompressedTensorsConfig

    _, ct, dense, _ = made("int8:channel")
    kw = {"quantization_config": CompressedTensorsConfig(dequantize=True)}
    a = st.SentenceTransformer(str(ct), device="cpu", model_kwargs=kw).encode(TEXTS, normalize_embeddings=True)
    b = st.SentenceTransformer(str(dense), device="cpu").encode(TEXTS, normalize_embeddings=True)
    assert float((a * b).sum(1).min()) >= 0.99999


def test_a_scheme_without_a_compressed_tensors_form_is_one_line(tmp_path, capsys):
    """A quantized tensor that is not a Linear weight (here: a 1-D norm) has no
    compressed-tensors form: one line, nothing written."""
    c = tmp_path / "c.zarr"
    assert main(["compress", str(MODEL), str(c), "--quantize", "int8", "--include", "*LayerNorm.weight", "-q"]) == 0
    capsys.readouterr()
    assert main(["export", str(c), str(tmp_path / "o"), "--format", "compressed-tensors"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Linear weights" in err
    assert not (tmp_path / "o").exists()


def test_a_sharded_export_loads_like_one_file(made, tmp_path):
    from transformers import AutoModel

    store, ct, _, _ = made("int4:group:32")
    sharded = tmp_path / "sharded"
    assert main(["export", str(store), str(sharded), "--format", "compressed-tensors", "--max-shard-size", "8MB",
                 "-q"]) == 0
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) > 2 and (sharded / "model.safetensors.index.json").exists()
    assert {k: v.dtype for k, v in _tensors(sharded).items()} == {k: v.dtype for k, v in _tensors(ct).items()}
    model, info = AutoModel.from_pretrained(str(sharded), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    one = AutoModel.from_pretrained(str(ct))
    assert torch.equal(_embed(model, TEXTS), _embed(one, TEXTS))
