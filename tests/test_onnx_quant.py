"""Quantization recipes on the ONNX target: every recipe exports a tiny model to a graph that passes
the checker, uses the operators the recipe promises (MatMulNBits / GatherBlockQuantized sharing the
tied table's packed blob, float16 with a float32 residual stream), is the size its format says and
computes what transformers' model with the recipe's rounding computes; validate() reports on each; an
unsupported recipe fails before any work. The real Gemma 3 270M int4: the size its format says, and it
passes the conversion check and the default floor."""
import copy
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import runtime_py
from export.cli import main
from export.converters.onnx import export_onnx
from export.models.checkpoints import load_model
from export.quantize import recipes
from export.quantize.recipes import RECIPES, Recipe, Thresholds, recipe
from export.validate import validate

from oracle import hf_model, hf_rounded, matrix_parameters, rtn, save_hf_folder, tiny_tokenizer

QUANTIZED = [n for n, r in RECIPES.items() if n != "fp32" and "onnx" in r.targets]
IDS = [2] + list(range(10, 74))
CONTEXT = 256
LINEARS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


def expected_bytes(r: Recipe, fp32_bytes: int, body: int, table: int, rope: int = 0) -> float:
    """The float32 artifact's size with each quantized weight's 4 bytes replaced by what the format stores:
    float16 (the `rope` floats of GroupQueryAttention's cos/sin tables too: they take the queries' type), or
    MatMulNBits / GatherBlockQuantized's `bits` per weight plus one float32 scale per block (symmetric: no
    zero points); everything else (norms, the graph) unchanged."""
    if r.weight_bits == 16:
        return fp32_bytes - 2 * (body + table + rope)
    return (fp32_bytes - 4 * (body + table) + body * (r.weight_bits / 8 + 4 / r.block_size)
            + table * (r.embedding_bits / 8 + 4 / r.embedding_block))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Gemma 3 whose widths are multiples of 128 (no block padding), exported in fp32."""
    root = tmp_path_factory.mktemp("quant")
    model = hf_model("gemma3", vocab_size=384, hidden_size=128, intermediate_size=256, head_dim=32)
    model.save_pretrained(root / "hf")
    (root / "hf" / "tokenizer.model").write_bytes(tiny_tokenizer())
    loaded = load_model(root / "hf")
    return root, loaded, export_onnx(loaded, root / "fp32", context_length=CONTEXT), model


@pytest.fixture(scope="module")
def fp32_logits(tiny):
    return runtime_py.load(tiny[2]).logits(IDS)


@pytest.fixture(scope="module", params=QUANTIZED)
def artifact(request, tiny):
    root, loaded, _, _ = tiny
    out = export_onnx(loaded, root / request.param, recipe=request.param, context_length=CONTEXT)
    return RECIPES[request.param], out


def _graph(folder):
    model = onnx.load(str(folder / "model.onnx"))
    onnx.checker.check_model(model)
    return model, {t.name: t for t in model.graph.initializer}


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def test_graph_checks_and_uses_the_recipes_operators(artifact, tiny):
    r, out = artifact
    model, inits = _graph(out)
    nodes = list(model.graph.node)
    by_type = lambda t: [n for n in nodes if n.op_type == t]  # noqa: E731
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"] == r.name and manifest["target"] == "onnx"
    if r.name == "fp16":
        for n in by_type("MatMul") + by_type("Gemm"):
            assert inits[n.input[1]].data_type == TensorProto.FLOAT16, n.name
        for n in by_type("SkipSimplifiedLayerNormalization") + by_type("RMSNormalization"):   # float32 residual
            assert inits[n.input[-1]].data_type == TensorProto.FLOAT, n.name
        io = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
        assert io["logits"] == TensorProto.FLOAT and io["past_key_values.0.key"] == TensorProto.FLOAT16
        return

    # The tied table is stored once: the LM head's MatMulNBits blob and scales feed the lookup.
    assert "model.embed_tokens.weight" not in inits and not by_type("Gemm")
    (lookup,) = by_type("GatherBlockQuantized")
    (head,) = [n for n in by_type("MatMulNBits") if n.name.startswith("/lm_head/")]
    (reshape,) = [n for n in nodes if n.output[0] == lookup.input[0]]
    assert reshape.op_type == "Reshape" and reshape.input[0] == head.input[1] and lookup.input[2] == head.input[2]
    assert _attrs(lookup) == dict(bits=r.embedding_bits, block_size=r.embedding_block, gather_axis=0, quantize_axis=1)
    level = 4 if r.activations == "int8" else None
    assert _attrs(head)["bits"] == r.embedding_bits and _attrs(head)["block_size"] == r.embedding_block
    assert _attrs(head).get("accuracy_level") == level

    body = [n for n in nodes if n.op_type == "MatMulNBits" and any(f"/{p}/" in n.name for p in LINEARS)]
    assert len(body) == 4 * tiny[3].config.num_hidden_layers and not by_type("MatMul")
    for n in body:
        a = _attrs(n)
        assert (a["bits"], a["block_size"], a.get("accuracy_level")) == (r.weight_bits, r.block_size, level)
        assert len(n.input) == 3                      # symmetric: no zero points
    big_floats = [t.name for t in inits.values() if t.data_type == TensorProto.FLOAT and np.prod(t.dims) > 128 * 64
                  and "scale" not in t.name and "cache" not in t.name]
    assert not big_floats


def test_lookup_and_head_decode_the_same_table(artifact, tiny):
    """GatherBlockQuantized over the head's blob gives, row for row, the weights MatMulNBits multiplies
    by (same zero-point convention), and both are the float32 table up to the recipe's rounding."""
    import onnxruntime as ort
    r, out = artifact
    if r.embedding_bits >= 16:                   # a float table: no quantized blob to share
        assert not [n for n in _graph(out)[0].graph.node if n.op_type == "GatherBlockQuantized"]
        return
    model, inits = _graph(out)
    (lookup,) = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    (head,) = [n for n in model.graph.node if n.op_type == "MatMulNBits" and n.name.startswith("/lm_head/")]
    (reshape,) = [n for n in model.graph.node if n.output[0] == lookup.input[0]]
    table = numpy_helper.to_array(next(t for t in onnx.load(str(tiny[2] / "model.onnx")).graph.initializer
                                       if t.name == "model.embed_tokens.weight"))
    V, d = table.shape
    a = {k: v for k, v in _attrs(head).items() if k != "accuracy_level"}
    nodes = [reshape, helper.make_node("GatherBlockQuantized", [reshape.output[0], "ids", lookup.input[2]], ["rows"],
                                       domain="com.microsoft", **_attrs(lookup)),
             helper.make_node("MatMulNBits", ["eye", head.input[1], head.input[2]], ["cols"], domain="com.microsoft", **a)]
    graph = helper.make_graph(nodes, "decode", [helper.make_tensor_value_info("ids", TensorProto.INT64, [V]),
                                                helper.make_tensor_value_info("eye", TensorProto.FLOAT, [d, d])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("rows", "cols")],
                              [inits[n] for n in (reshape.input[0], reshape.input[1], head.input[2])])
    mini = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23), helper.make_opsetid("com.microsoft", 1)],
                             ir_version=10)
    rows, cols = ort.InferenceSession(mini.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"ids": np.arange(V), "eye": np.eye(d, dtype=np.float32)})
    np.testing.assert_allclose(rows, cols.T, rtol=0, atol=1e-6)
    # the recipe's rounding of the float32 table (round-to-nearest, MLAS's scale convention)
    expected = rtn(torch.from_numpy(table), r.embedding_bits, r.embedding_block).numpy()
    off = np.abs(rows - expected) > 1e-6 * np.abs(table).max()
    assert off.mean() < 1e-3, off.mean()                   # exact but for the odd tie rounded the other way


def test_file_is_the_size_its_format_says(artifact, tiny):
    r, out = artifact
    cfg = tiny[3].config
    rope = 2 * 2 * CONTEXT * cfg.head_dim // 2             # cos and sin [context, head_dim / 2], local and global
    expected = expected_bytes(r, (tiny[2] / "model.onnx").stat().st_size, *matrix_parameters(tiny[3]), rope)
    size = (out / "model.onnx").stat().st_size
    print(f"{r.name}: {size} bytes, {size / expected:.4f} of the format's {expected:.0f}")
    assert abs(size / expected - 1) < 0.02                 # protobuf framing


@torch.no_grad()
def test_logits_err_from_fp32_as_the_recipes_rounding_does(artifact, tiny, fp32_logits):
    """The artifact's relative logit error against float32 is that of transformers' model with the recipe's
    weight rounding (oracle.hf_rounded; for fp16, transformers' model run in float16): at least a quarter of
    it (it did quantize), and at most the same with a margin: 1.25x for float activations (rounding
    conventions), 2x for int8 activations (rounded at the weights' precision, they can add as much error
    again), 1x for fp16 (its residual stream stays float32, so it rounds less than an all-float16 model)."""
    r, out = artifact
    model = tiny[3]
    q = runtime_py.load(out).logits(IDS)
    assert np.isfinite(q).all() and q.dtype == np.float32
    ids = torch.tensor([IDS])
    if r.weight_bits == 16:
        reference = copy.deepcopy(model).half()(ids).logits[0].float().numpy()
    else:
        reference = hf_rounded(model, r.weight_bits, r.block_size, r.embedding_bits, r.embedding_block)(ids)
        reference = reference.logits[0].numpy()
    float_logits = model(ids).logits[0].numpy()
    rel, expected = (float(np.linalg.norm(x - float_logits) / np.linalg.norm(float_logits)) for x in (q, reference))
    margin = 1.0 if r.weight_bits == 16 else 2.0 if r.activations == "int8" else 1.25
    print(f"{r.name}: relative logit error {rel:.4f}, the rounding's {expected:.4f}")
    assert expected / 4 < rel < margin * expected
    assert np.abs(fp32_logits - float_logits).max() < 1e-4     # the float32 artifact is transformers' model
    if r.name == "fp16":
        assert (q.argmax(-1) == fp32_logits.argmax(-1)).all()


def test_validate_reports_on_the_recipes_thresholds(artifact):
    r, out = artifact
    report = validate(out)
    assert report["recipe"] == r.name and isinstance(report["passed"], bool)
    assert 0.0 <= report["top1_agreement"] <= 1.0 and np.isfinite(report["kl_divergence"])
    assert np.isfinite(report["perplexity"]) and 0 <= report["greedy_match_tokens"] <= 64
    assert report["passed"] == (not report["failures"])
    assert report["conversion"]["passed"], report["conversion"]["failures"]     # the converter did what r says


def test_fp16_keeps_a_residual_past_float16s_range(tmp_path):
    """Like Gemma 3 270M's (1.0e5), this tiny model's residual stream outgrows float16 (65504) through
    large post-norm weights; fp16 still matches fp32, the residual never passing through float16."""
    import torch
    model = hf_model("gemma3", vocab_size=384)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.post_feedforward_layernorm.weight.fill_(3e4)
    model.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.model").write_bytes(tiny_tokenizer())
    loaded = load_model(tmp_path / "hf")
    peak = []
    hook = loaded.model.model.layers[-1].register_forward_hook(lambda m, i, o: peak.append(float(o[0].abs().max())))
    with torch.no_grad():
        loaded.model(torch.tensor([IDS]), torch.arange(len(IDS)))
    hook.remove()
    assert peak[0] > 2 * 65504
    ref = runtime_py.load(export_onnx(loaded, tmp_path / "fp32", context_length=128)).logits(IDS)
    out = export_onnx(loaded, tmp_path / "fp16", recipe="fp16", context_length=128)
    q = runtime_py.load(out).logits(IDS)
    assert np.isfinite(q).all() and np.linalg.norm(q - ref) / np.linalg.norm(ref) < 0.01
    nodes = onnx.load(str(out / "model.onnx")).graph.node
    skips = [n for n in nodes if n.op_type == "SkipSimplifiedLayerNormalization"]
    residuals = {n.output[3] for n in skips}
    assert all(n.input[0] in residuals for n in skips[1:])           # norm to norm, no Cast between
    assert not any(n.op_type == "Cast" and n.input[0] in residuals for n in nodes)


@pytest.mark.parametrize("name", ["fp16", "int4"])
def test_onnxruntime_genai_runs_quantized_artifacts(tiny, name):
    import onnxruntime_genai as og
    root, loaded, _, _ = tiny
    out = root / name
    if not out.exists():
        export_onnx(loaded, out, recipe=name, context_length=CONTEXT)
    ours = runtime_py.load(out).generate(IDS[:20], 16, stop_ids=()).token_ids
    model = og.Model(str(out))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=CONTEXT)
    gen = og.Generator(model, params)
    gen.append_tokens(np.asarray(IDS[:20], dtype=np.int32)[None])
    new = []
    while len(new) < 16:
        gen.generate_next_token()
        new.append(int(gen.get_next_tokens()[0]))
    assert new == ours


@pytest.mark.parametrize("arch, name", [("gemma2", "int4-b128"), ("embeddinggemma", "fp16"),
                                        ("embeddinggemma", "mixed"), ("embeddinggemma", "int8")])
def test_other_architectures_and_padded_blocks(tmp_path, arch, name):
    """Gemma 2 (softcaps); hidden size 64 < block 128 (rows padded, the lookup sliced back); and
    EmbeddingGemma, whose untied table is packed for GatherBlockQuantized alone."""
    save_hf_folder(arch, tmp_path / "hf", tokenizer=True)
    loaded = load_model(tmp_path / "hf")
    ref = runtime_py.load(export_onnx(loaded, tmp_path / "fp32", context_length=128))
    out = export_onnx(loaded, tmp_path / name, recipe=name, context_length=128)
    model, _ = _graph(out)
    ops = {n.op_type for n in model.graph.node}
    q = runtime_py.load(out)
    if arch == "embeddinggemma":
        texts = ["The quick brown fox", "Yes it is. No it is not."]
        cos = (ref.embed(texts) * q.embed(texts)).sum(-1)
        assert cos.min() > {"fp16": 0.999, "mixed": 0.8, "int8": 0.95}[name], cos
        if name != "fp16":                           # the stand-in head that packed the table is gone
            assert "GatherBlockQuantized" in ops and not any(n.name.startswith("/lm_head") for n in model.graph.node)
    else:
        assert {"GatherBlockQuantized", "Slice", "MatMulNBits"} <= ops
        a, b = ref.logits(IDS), q.logits(IDS)
        assert np.linalg.norm(a - b) / np.linalg.norm(a) < 0.35


# --- recipes that a target cannot build fail before any work --------------------------------

def test_unknown_recipe_fails_before_loading_the_model(tmp_path, monkeypatch, capsys):
    import export.models.checkpoints as checkpoints
    monkeypatch.setattr(checkpoints, "load_model", lambda *a, **k: pytest.fail("loaded the model"))
    assert main(["--target", "onnx", "--quant", "int3", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "int3" in err and all(n in err for n in RECIPES)
    assert not (tmp_path / "x").exists()


def test_recipe_a_target_cannot_build_lists_what_it_can(tiny, tmp_path, monkeypatch):
    fake = Recipe("int2", "q2", ("litert",), Thresholds(), "litert only", weight_bits=2, block_size=32)
    monkeypatch.setitem(recipes.RECIPES, "int2", fake)
    import export.converters.onnx as onnx_target
    monkeypatch.setattr(onnx_target, "build_decoder", lambda *a, **k: pytest.fail("built the graph"))
    with pytest.raises(ValueError) as e:
        export_onnx(tiny[1], tmp_path / "x", recipe="int2")
    msg = str(e.value)
    assert "not supported for --target onnx" in msg and all(n in msg for n, r in RECIPES.items()
                                                            if n != "int2" and "onnx" in r.targets)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="supported: none"):
        recipe("fp32", "no-such-target")


def test_every_recipe_has_its_numbers():
    for r in RECIPES.values():
        assert r.suffix and r.targets and r.description
        assert r.weight_bits in (4, 8, 16, 32) and r.embedding_bits in (4, 8, 16, 32)
        assert r.activations in ("fp32", "fp16", "int8")
        assert 0 < r.thresholds.min_top1_agreement <= 1 and r.thresholds.max_kl_divergence is not None
    assert len({r.suffix for r in RECIPES.values()}) == len(RECIPES)


# --- the real Gemma 3 270M (slow) ------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_int4(real_onnx_int4, cli):
    status, report = cli(["validate", str(real_onnx_int4)])
    print("\n" + json.dumps(report, indent=1))
    return real_onnx_int4, report, status


def _model_bytes(folder) -> int:
    return sum(p.stat().st_size for p in folder.glob("model.onnx*"))


def test_real_model_int4_is_its_formats_size(real_int4, real_onnx, real_gguf_reader):
    """Size: the fp32 artifact with every matrix of the checkpoint (gguf-py's count of its 2-D tensors, the
    tied table once) at 4 bits plus a float32 scale per 32, validated over a prompt past the window."""
    out, report, _ = real_int4
    matrices = sum(int(t.n_elements) for t in real_gguf_reader.tensors if len(t.shape) == 2)
    expected = expected_bytes(recipe("int4", "onnx"), _model_bytes(real_onnx), matrices, 0)
    print(f"\nint4: {_model_bytes(out)} bytes, {_model_bytes(out) / expected:.4f} of the format's {expected:.0f}")
    assert abs(_model_bytes(out) / expected - 1) < 0.02
    assert report["recipe"] == "int4" and report["greedy_prompt_tokens"] > 512


def test_real_model_int4_passes_the_conversion_check(real_int4):
    """The converter did what int4 says on the real model (artifact vs the simulated recipe, prefill and
    decode); what int4 costs against the float model is reported and passes the default floor."""
    _, report, status = real_int4
    assert status == 0 and report["passed"] and report["conversion"]["passed"]
    assert report["conversion"]["decode"]["positions"] >= 16
