"""The conversion check (export.validate) gates the converter: artifacts broken on purpose on a tiny
model -- a cache wired to the wrong layer, a shifted scale block, a skipped layer, a weight rotated
differently from its inputs -- fail it, while the untouched artifact passes. The simulated recipe
itself (export.quantize.simulate) is held against the libraries whose rounding it restates:
onnxruntime's MatMulNBits quantizer and ai-edge-quantizer's min/max and OCTAV rules."""
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from export.converters.litert import export_litert
from export.converters.onnx import export_onnx
from export.models.checkpoints import load_model
from export.quantize import simulate as S
from export.quantize.recipes import QUANTIZED, QUANTIZED_UNROTATED, Bar, conversion_thresholds, recipe
from export.validate import _conversion_check, validate


@pytest.fixture(scope="module")
def tiny(tiny_hf):
    return load_model(tiny_hf("gemma3", tokenizer=True).path)


@pytest.fixture(scope="module")
def onnx_int4(tiny, tmp_path_factory):
    return export_onnx(tiny, tmp_path_factory.mktemp("onnx") / "int4", "int4", context_length=256)


@pytest.fixture(scope="module")
def litert_int8(tiny, tmp_path_factory):
    return export_litert(tiny, tmp_path_factory.mktemp("litert") / "int8", "int8", prefill_lengths=(8, 32),
                         cache_length=256)


def _broken_onnx(src, dst, edit):
    shutil.copytree(src, dst)
    model = onnx.load(str(dst / "model.onnx"))
    edit(model)
    onnx.save(model, str(dst / "model.onnx"))
    return dst


def _edit_init(model, name, fn):
    init = next(t for t in model.graph.initializer if t.name == name)
    init.CopyFrom(numpy_helper.from_array(fn(numpy_helper.to_array(init)), name))


def _swap_past(model):
    """Two attention layers of one kind (same cache shape): each reads the other's cache, writes its own."""
    shapes = {i.name: str(i.type.tensor_type.shape) for i in model.graph.input}
    nodes = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    a, b = next((a, b) for k, a in enumerate(nodes) for b in nodes[k + 1:] if shapes[a.input[3]] == shapes[b.input[3]])
    for k in (3, 4):
        a.input[k], b.input[k] = b.input[k], a.input[k]


def _shift_scales(model):
    _edit_init(model, "/model/layers.0/mlp/down_proj/MatMul.weight_scales",
               lambda s: np.roll(s.reshape(s.shape[0], -1), 1, axis=1).reshape(s.shape))


def _skip_layer(model):
    for w in ("attn/o_proj", "mlp/down_proj"):
        _edit_init(model, f"/model/layers.1/{w}/MatMul.weight_scales", np.zeros_like)


def test_untouched_onnx_int4_passes_the_conversion_check(onnx_int4, tiny):
    r = validate(onnx_int4, loaded=tiny)
    assert r["conversion"]["passed"], r["conversion"]["failures"]
    assert r["conversion"]["decode"]["positions"] > 8 and r["conversion"]["prefill"]["positions"] >= 256
    # the float comparison keeps its top-level keys; the quantization check passes the default floor
    assert r["quantization"]["passed"] and r["passed"]
    assert r["top1_agreement"] == r["quantization"]["top1_agreement"]


@pytest.mark.parametrize("edit,path", [(_swap_past, "decode"), (_shift_scales, "prefill"), (_skip_layer, "prefill")],
                         ids=["cache-of-another-layer", "shifted-scale-block", "skipped-layer"])
def test_broken_onnx_int4_fails_the_conversion_check(onnx_int4, tiny, tmp_path, edit, path):
    r = validate(_broken_onnx(onnx_int4, tmp_path / "bad", edit), loaded=tiny)
    assert not r["conversion"]["passed"] and not r["passed"]
    assert any(f.startswith(f"conversion: {path}") for f in r["failures"]), r["failures"]


def test_untouched_litert_int8_passes_and_a_wrong_rotation_fails(litert_int8, tiny, tmp_path):
    from ai_edge_litert import schema_py_generated as fb
    r = validate(litert_int8, loaded=tiny)
    assert r["conversion"]["passed"], r["conversion"]["failures"]
    bad = tmp_path / "bad"
    shutil.copytree(litert_int8, bad)
    data = bytearray((bad / "model.tflite").read_bytes())
    m = fb.Model.GetRootAs(data, 0)
    g = m.Subgraphs(0)
    # the first rotated linear's int8 weight: its input columns reversed, as if rotated by another matrix
    for i in range(g.OperatorsLength()):
        op = g.Operators(i)
        if m.OperatorCodes(op.OpcodeIndex()).BuiltinCode() != fb.BuiltinOperator.FULLY_CONNECTED:
            continue
        t = g.Tensors(op.Inputs(1))
        if t.Type() == fb.TensorType.INT8:
            w = m.Buffers(t.Buffer()).DataAsNumpy().reshape(t.ShapeAsNumpy())
            w[:] = w[:, ::-1].copy()
            break
    (bad / "model.tflite").write_bytes(bytes(data))
    r = validate(bad, loaded=tiny)
    assert not r["conversion"]["passed"], r["conversion"]
    # the looser bounds of unrotated LiteRT layouts (carried integers) still catch it
    figures = {k: v for k, v in r["conversion"].items() if k in ("prefill", "decode")}
    assert not _conversion_check(figures, QUANTIZED_UNROTATED)["passed"], figures


def test_conversion_thresholds_loosen_only_for_unrotated_litert_int8_activations():
    assert conversion_thresholds(recipe("int8", "litert"), "litert") == QUANTIZED
    assert conversion_thresholds(recipe("int4", "litert"), "litert", ["model.layers.0.mlp.up_proj.weight"]) \
        == QUANTIZED_UNROTATED
    assert conversion_thresholds(recipe("int4-b128", "litert"), "litert") == QUANTIZED_UNROTATED
    assert conversion_thresholds(recipe("int4", "onnx"), "onnx", ["model.embed_tokens.weight"]) == QUANTIZED
    assert conversion_thresholds(recipe("int8-wo", "litert"), "litert") == QUANTIZED     # float activations
    assert conversion_thresholds(recipe("fp32", "litert"), "litert") == recipe("fp32", "litert").thresholds


def test_user_bar_fails_the_quantization_check_only(onnx_int4, tiny):
    r = validate(onnx_int4, loaded=tiny, bar=Bar(min_top1_agreement=1.0, max_kl_divergence=0.0))
    assert r["conversion"]["passed"] and not r["quantization"]["passed"] and not r["passed"]
    assert any("top-1" in f for f in r["quantization"]["failures"]) and any("KL" in f for f in r["quantization"]["failures"])


# --- the simulation against the libraries it restates -------------------------------------------------

def _weights(rows=48, cols=96, seed=0):
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    w[3, :32] *= 40                                    # an outlier block
    w[5, 32:64] = np.round(w[5, 32:64] * 4) / 4        # values on rounding ties of a coarser grid
    return w


@pytest.mark.parametrize("bits", [4, 8])
def test_mlas_values_equal_onnxruntimes_quantizer(bits):
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits
    w = _weights()                                     # torch layout [out N, in K]
    N, K = w.shape
    block, kb = 32, K // 32
    packed = np.zeros((N, kb, block * bits // 8), np.uint8)
    scales = np.zeros((N, kb), np.float32)
    zp = np.zeros((N, kb), np.uint8)
    (quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits)(
        packed, np.ascontiguousarray(w.T), scales, zp, block, N, K, True)
    codes = np.stack([packed & 15, packed >> 4], -1).reshape(N, kb, block) if bits == 4 else packed
    ort = (codes.astype(np.float32) - (1 << (bits - 1))) * scales[..., None]
    np.testing.assert_array_equal(S.mlas_values(torch.from_numpy(w), bits, block).numpy(), ort.reshape(N, K))


@pytest.mark.parametrize("bits,block,octav", [(4, 32, False), (4, 128, False), (8, None, False), (8, None, True),
                                              (4, 32, True)])
def test_aeq_values_equal_ai_edge_quantizers_rule(bits, block, octav):
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithms.uniform_quantize import octav as aeq_octav
    from ai_edge_quantizer.algorithms.uniform_quantize import uniform_quantize_tensor as uq
    w = _weights(cols=128)
    g = qtyping.QuantGranularity.CHANNELWISE if block is None else qtyping.QuantGranularity[f"BLOCKWISE_{block}"]
    b = w.reshape(w.shape[0], -1, block or w.shape[1])
    lo, hi = b.min(-1, keepdims=True), b.max(-1, keepdims=True)
    clip = None
    if octav:
        clip = aeq_octav._guess_clipping_with_octav(b, bits, -1, max_iterations=10, exponent_divisor=3.0)
    zp, scale = uq.tensor_zp_scale_from_min_max(lo, hi, bits, True, g, clip)
    q = np.clip(np.rint(b / scale), -(1 << (bits - 1)) + (bits >= 8), (1 << (bits - 1)) - 1)
    ref = (q * scale).reshape(w.shape)
    got = S.aeq_values(torch.from_numpy(w), bits, block, octav=octav).numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6 * np.abs(w).max())


def test_hadamard_is_orthonormal_and_matches_ai_edge_quantizers():
    from ai_edge_quantizer.algorithms.uniform_quantize import hadamard_rotation as hr
    for n in (2, 16, 128):
        h = S.hadamard(n).numpy()
        np.testing.assert_allclose(h @ h.T, np.eye(n), atol=1e-6)
        np.testing.assert_allclose(h, hr._make_hadamard_matrix(n), atol=1e-7)
    assert S.hadamard_size(640) == 128 and S.hadamard_size(2048) == 2048 and S.hadamard_size(48) == 16
