"""Lossless import: a GGUF's Q4_0 / Q8_0 tensors (Google's QAT checkpoints' format) are carried into
the ONNX artifact's int4 / int8 weights exactly. The oracle is gguf-py's own dequantization of the
file, against what onnxruntime computes from the artifact's packed weights (MatMulNBits with float
activations on an identity matrix, GatherBlockQuantized over every row)."""
import json

import gguf
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from gguf import GGMLQuantizationType as Q
from onnx import helper, numpy_helper

from export.converters.onnx import export_onnx
from export.models.checkpoints import load_model
from export.models.checkpoints.gguf_loader import load_gguf

from oracle import gguf_tensors, hf_model, write_gguf

# every matrix Q4_0 (int4 blocks of 32), the tied embedding Q8_0 (int8 blocks of 32): the `mixed` layout
QTYPES = {k: Q.Q4_0 for k in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
QTYPES["token_embd"] = Q.Q8_0


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("lossless")
    src = hf_model("gemma3", intermediate_size=128)
    path = write_gguf(root / "m.gguf", src.config.to_dict(), "gemma3", gguf_tensors(src, "gemma3"),
                      quantize=True, qtypes=QTYPES)
    return path


def _dequantized_by_gguf(path) -> dict[str, np.ndarray]:
    ckpt = load_gguf(path)
    out = {}
    for name in ckpt.tensor_names:
        qtype, data, shape = ckpt.raw(name)
        if qtype in (Q.Q4_0, Q.Q8_0):
            out[name] = gguf.quants.dequantize(data, qtype).reshape(shape)
    return out


def _weights_by_onnxruntime(model: onnx.ModelProto, node: onnx.NodeProto) -> np.ndarray:
    """The [N, K] matrix a MatMulNBits node multiplies by, as onnxruntime dequantizes it (float
    activations: accuracy_level unset)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    K, N = attrs["K"], attrs["N"]
    inits = {t.name: t for t in model.graph.initializer}
    keep = {k: v for k, v in attrs.items() if k != "accuracy_level"}
    g = helper.make_graph(
        [helper.make_node("MatMulNBits", ["x", *node.input[1:]], ["y"], domain="com.microsoft", **keep)], "w",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [K, K])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [K, N])],
        [inits[i] for i in node.input[1:]])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": np.eye(K, dtype=np.float32)})[0].T


def _matrices(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """{MatMulNBits node name: its dequantized [N, K] weights}."""
    return {n.name: _weights_by_onnxruntime(model, n) for n in model.graph.node if n.op_type == "MatMulNBits"}


def _split(weights: dict[str, np.ndarray], layer: int) -> dict[str, np.ndarray]:
    """The checkpoint tensors of one layer, cut out of the packed qkv / gate-up projections."""
    n = f"/model/layers.{layer}"
    qkv, gu = weights[f"{n}/attn/qkv_proj/MatMul_Q4"], weights[f"{n}/mlp/gate_up_proj/MatMul_Q4"]
    return {"q_proj": qkv[:64], "k_proj": qkv[64:96], "v_proj": qkv[96:], "o_proj": weights[f"{n}/attn/o_proj/MatMul_Q4"],
            "gate_proj": gu[:128], "up_proj": gu[128:], "down_proj": weights[f"{n}/mlp/down_proj/MatMul_Q4"]}


@pytest.mark.parametrize("lossless", [True, False])
def test_q4_0_and_q8_0_are_carried_exactly(gguf_file, tmp_path, lossless):
    loaded = load_model(gguf_file)
    assert set(loaded.stored) == set(_dequantized_by_gguf(gguf_file))
    if not lossless:
        loaded.stored = {}                      # what a re-quantizing exporter would do
    out = export_onnx(loaded, tmp_path / "a", "mixed", context_length=64)
    model = onnx.load(str(out / "model.onnx"))
    want = _dequantized_by_gguf(gguf_file)
    got = _matrices(model)
    worst = 0.0
    for layer in range(loaded.config.num_layers):
        for proj, w in _split(got, layer).items():
            key = next(k for k in want if k.startswith(f"model.layers.{layer}.") and f".{proj}." in k)
            worst = max(worst, float(np.abs(w - want[key]).max()))
    head = got["/lm_head/MatMul_Q8"]
    worst = max(worst, float(np.abs(head - want["model.embed_tokens.weight"]).max()))
    manifest = json.loads((out / "manifest.json").read_text())
    if lossless:
        assert worst == 0.0
        assert len(manifest["lossless_import"]["carried"]) == len(want)
        assert manifest["lossless_import"]["requantized"] == []
    else:
        assert worst > 1e-4                     # re-quantizing the dequantized floats is not exact
        assert "lossless_import" not in manifest


def test_embedding_lookup_reads_the_carried_table(gguf_file, tmp_path):
    """GatherBlockQuantized shares the head's packed table: every row it returns equals gguf's."""
    loaded = load_model(gguf_file)
    out = export_onnx(loaded, tmp_path / "a", "mixed", context_length=64)
    model = onnx.load(str(out / "model.onnx"))
    node = next(n for n in model.graph.node if n.op_type == "GatherBlockQuantized")
    inits = {t.name: t for t in model.graph.initializer}
    reshape = next(n for n in model.graph.node if node.input[0] in n.output)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    table = gguf.quants.dequantize(load_gguf(gguf_file).raw("model.embed_tokens.weight")[1], Q.Q8_0)
    V = table.shape[0]
    g = helper.make_graph(
        [reshape, helper.make_node("GatherBlockQuantized", [reshape.output[0], "ids", node.input[2]], ["rows"],
                                   domain="com.microsoft", **attrs)], "e",
        [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [V])],
        [helper.make_tensor_value_info("rows", onnx.TensorProto.FLOAT, None)],
        [inits[i] for i in (*reshape.input, node.input[2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    rows = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"ids": np.arange(V, dtype=np.int64)})[0]
    assert np.array_equal(rows.reshape(table.shape), table)
