"""LiteRT quantization through ai-edge-quantizer: every recipe the LiteRT target accepts stores the model's
matrices at its bits, stays close to the float model's logits (LiteRT's own interpreter on both), and a recipe
the quantizer would silently skip is an error, not a float artifact."""
import collections
import dataclasses

import numpy as np
import pytest
import torch
from ai_edge_litert.interpreter import Interpreter

import runtime_py
from export.converters.litert import export_litert
from export.converters.litert.quantize import quantize_tflite
from export.models.checkpoints import load_model
from export.quantize.recipes import RECIPES, recipe

from oracle import matrix_parameters

# int4-b128 needs rows of whole 128-blocks: the tiny model is 64 wide (tested as an error below)
LITERT = [n for n, r in RECIPES.items() if "litert" in r.targets and r.quantized and r.block_size != 128]


@pytest.fixture(scope="module")
def fp32(tiny_litert):
    """The suite's tiny Gemma 3 fp32 .tflite (conftest.tiny_litert), its model and transformers' model."""
    art = tiny_litert("gemma3")
    return load_model(art.hf), art.folder, art.ref


def stored_bytes(path) -> collections.Counter:
    """Bytes of a .tflite's constant buffers by tensor type (FLOAT32, INT8, INT4, ...), each buffer once."""
    from ai_edge_litert import schema_py_generated as fb
    m = fb.Model.GetRootAs(bytearray(path.read_bytes()), 0)
    names = {v: k for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
    buffers = {}
    for sg in range(m.SubgraphsLength()):
        g = m.Subgraphs(sg)
        for i in range(g.TensorsLength()):
            t = g.Tensors(i)
            data = m.Buffers(t.Buffer())
            buffers[t.Buffer()] = (names[t.Type()], data.DataLength() or data.Size())
    out = collections.Counter()
    for kind, n in buffers.values():
        out[kind] += n
    return out


def matrices_at_their_bits(path, ref, r) -> None:
    """The model's matrices (transformers' count: linear weights, the table tied to the LM head) are stored
    once, at the recipe's bits: int8 one byte each, int4 half a byte."""
    body, table = matrix_parameters(ref)
    want = collections.Counter()
    want[f"INT{r.weight_bits}"] += body * r.weight_bits // 8
    want[f"INT{r.embedding_bits}"] += table * r.embedding_bits // 8
    stored = stored_bytes(path)
    assert {k: stored[k] for k in ("INT4", "INT8")} == {k: want[k] for k in ("INT4", "INT8")}, stored


def _decode_logits(path, steps=12):
    """Greedy-free logits of `steps` fixed tokens fed one by one through the decode signature."""
    it = Interpreter(model_path=str(path))
    run = it.get_signature_runner("decode")
    caches = {n: np.zeros(d["shape"], np.float32) for n, d in run.get_input_details().items() if n.startswith("kv")}
    out = []
    for p, t in enumerate(np.random.default_rng(0).integers(4, 384, steps)):
        res = run(tokens=np.array([[t]], np.int32), input_pos=np.array([p], np.int32), **caches)
        caches = {k: v for k, v in res.items() if k.startswith("kv")}
        out.append(res["logits"][0, 0])
    return np.stack(out)


@pytest.mark.parametrize("name", LITERT)
def test_recipe_stores_the_matrices_at_its_bits_and_stays_close(fp32, tmp_path, name):
    _, art, hf = fp32
    r = recipe(name, "litert")
    dst = tmp_path / "model.tflite"
    quantize_tflite(art / "model.tflite", dst, r)
    ref, got = _decode_logits(art / "model.tflite"), _decode_logits(dst)
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert 1e-6 < rel < (0.1 if r.weight_bits == 8 else 0.6), rel         # quantized, and not broken
    matrices_at_their_bits(dst, hf, r)
    assert dst.stat().st_size < (art / "model.tflite").stat().st_size


def test_int8_rotation_spreads_outliers(fp32, tmp_path):
    """Gemma's weight rows are heavy-tailed (Gemma 3 270M: max/rms up to 25) and a few residual channels are
    huge; per-channel int8 weights and per-token int8 activations are then set by the outliers. The int8
    recipe rotates them away (Hadamard): on the tiny model given such outliers, its logits land at least 2x
    closer to the float model's than the same quantization without the rotation (LiteRT's interpreter on
    all three). The weight-only recipe cannot rotate and says so."""
    loaded = load_model(fp32[0].source)                        # a copy of our own to change
    model = loaded.model
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in model.model.layers:                       # 21x gain on two channels of the FC inputs
            for norm in (layer.input_layernorm, layer.pre_feedforward_layernorm):
                norm.weight[[5, 40]] += 20
        for p in (p for p in model.parameters() if p.dim() == 2):  # one weight per row at 20x the row's rms
            rows = torch.arange(p.shape[0])
            p[rows, torch.randint(0, p.shape[1], (p.shape[0],), generator=g)] = 20 * p.pow(2).mean(1).sqrt()
    float_art = export_litert(loaded, tmp_path / "f", prefill_lengths=(8,), cache_length=32)
    ref = _decode_logits(float_art / "model.tflite")
    rotated = recipe("int8", "litert")
    assert rotated.hadamard
    err = {}
    for name, r in (("rotated", rotated), ("plain", dataclasses.replace(rotated, hadamard=False))):
        quantize_tflite(float_art / "model.tflite", tmp_path / f"{name}.tflite", r)
        got = _decode_logits(tmp_path / f"{name}.tflite")
        err[name] = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert err["rotated"] < err["plain"] / 2, err
    with pytest.raises(ValueError, match="int8-wo: Hadamard rotation needs int8 activations"):
        quantize_tflite(float_art / "model.tflite", tmp_path / "wo.tflite",
                        dataclasses.replace(recipe("int8-wo", "litert"), hadamard=True))


def test_a_recipe_the_quantizer_skips_is_an_error(fp32, tmp_path, monkeypatch):
    """ai-edge-quantizer's own int8-blockwise recipe (on all supported ops) returns the model unchanged,
    without a word: the check after quantizing turns that into an error. Configs it refuses outright
    (weight-only int4 blockwise; a block wider than the rows) are errors too."""
    from ai_edge_quantizer import recipe as aeq
    import export.converters.litert.quantize as lq
    art = fp32[1]
    blockwise_int8 = dataclasses.replace(RECIPES["int8"], overrides=())      # block 32, as on ONNX
    with monkeypatch.context() as m:
        m.setattr(lq, "aeq_recipe", lambda r, carried=(), planned=(), own=(), heads=(): aeq.dynamic_wi8b32_afp32())
        with pytest.raises(ValueError, match="did not apply --quant int8.*FULLY_CONNECTED"):
            quantize_tflite(art / "model.tflite", tmp_path / "a.tflite", blockwise_int8)
    weight_only_int4 = dataclasses.replace(RECIPES["int4"], name="int4-wo", activations="fp32")
    with pytest.raises(ValueError, match="not found in the policy"):
        quantize_tflite(art / "model.tflite", tmp_path / "b.tflite", weight_only_int4)
    with pytest.raises(ValueError, match="not divisible by block size 128"):
        quantize_tflite(art / "model.tflite", tmp_path / "c.tflite", recipe("int4-b128", "litert"))


def test_int4_export_end_to_end_generates(fp32, tmp_path, capfd):
    loaded, _, hf = fp32
    out = export_litert(loaded, tmp_path / "int4", "int4", prefill_lengths=(8,), cache_length=32)
    assert capfd.readouterr().out == ""         # conversion and quantization progress: stderr (--json stays JSON)
    assert not (out / "model.f32.tflite").exists()
    m = runtime_py.load(out)
    assert m.manifest["recipe"] == "int4"
    g = m.generate([2, 10, 11, 12], max_new_tokens=6, stop_ids=())
    assert len(g.token_ids) == 6
    matrices_at_their_bits(out / "model.tflite", hf, recipe("int4", "litert"))


def test_a_soft_capped_head_is_stored_as_the_table(tiny_hf, tiny_litert, tmp_path):
    """Gemma 2 soft-caps its logits: the head's output is an intermediate tensor and the converter folds 1/cap
    into its copy of the table. `mixed` (int4 body, int8 table) must still store that head as the table (int8 per
    channel, as the simulation rounds the tied table), not as a body matrix."""
    from export.converters.litert.graph import weight_types
    art = tiny_litert("gemma2")
    loaded = load_model(tiny_hf("gemma2", tokenizer=True).path)
    assert loaded.config.final_softcap
    signatures = len(runtime_py.load(art.folder).manifest["signatures"])
    quantize_tflite(art.folder / "model.tflite", tmp_path / "mixed.tflite", recipe("mixed", "litert"), loaded.model)
    got = {k: dict(v) for k, v in weight_types(tmp_path / "mixed.tflite").items()}
    assert got[("FULLY_CONNECTED", True)] == {"INT8": signatures}, got
    assert got[("EMBEDDING_LOOKUP", False)] == {"INT8": signatures}, got
    assert set(got[("FULLY_CONNECTED", False)]) == {"INT4"}, got
