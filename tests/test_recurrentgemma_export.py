"""RecurrentGemma (Griffin) artifacts against transformers' RecurrentGemmaForCausalLM on a tiny random
model (window 8, prompts of 40 tokens): ONNX through a plain onnxruntime session and through
runtime_py (fp32 and fp16), LiteRT signatures through runtime_py's LiteRT backend, `validate` on
both, and the point of the architecture, a state whose size does not grow."""
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

import runtime_py
from export.converters.onnx import export_onnx
from export.models.checkpoints import load_model
from export.validate import validate

from oracle import hf_greedy, litert_io, save_hf_folder, tokens

T = 40   # the tiny attention window is 8
VOCAB = 384


@pytest.fixture(scope="module")
def hf(tiny_hf, tmp_path_factory):
    """(transformers' model, a folder for the artifacts, the Hugging Face folder)."""
    tiny = tiny_hf("recurrentgemma", tokenizer=True)
    return tiny.ref, tmp_path_factory.mktemp("recurrentgemma"), tiny.path


@pytest.fixture(scope="module")
def onnx_artifact(hf):
    _, root, path = hf
    return export_onnx(load_model(path), root / "onnx", context_length=256)


def _tokens(n, seed=1):
    return tokens(n, VOCAB, seed)


@torch.no_grad()
def _reference_logits(ref, toks):
    return ref(toks).logits[0].numpy()                               # [T, V]


def test_onnx_whole_prompt_with_zero_state_matches_transformers(hf, onnx_artifact):
    """A plain onnxruntime session: zero recurrent states, zero KV caches of window length (the
    sliding-window contract: a past of at least W rows, as onnxruntime-genai's builder output)."""
    ref = hf[0]
    sess = ort.InferenceSession(str(onnx_artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    toks = _tokens(T)
    feed = {"input_ids": toks.numpy(), "attention_mask": np.ones((1, T), np.int64)}
    for arg in sess.get_inputs():
        if arg.name.startswith("past_key_values"):
            feed[arg.name] = np.zeros((1, 1, ref.config.attention_window_size, 32), np.float32)
        elif arg.name.endswith(tuple(f"_state_{i}" for i in range(6))):
            feed[arg.name] = np.zeros([1, *arg.shape[1:]], np.float32)
    names = sorted(feed)
    assert names == sorted(["input_ids", "attention_mask"]
                           + [f"past_key_values.{i}.{kv}" for i in (2, 5) for kv in ("key", "value")]
                           + [f"{s}_state_{i}" for i in (0, 1, 3, 4) for s in ("rg_lru", "conv1d")])
    logits = sess.run(["logits"], feed)[0][0]
    assert np.abs(logits - _reference_logits(ref, toks)).max() < 1e-4
    outputs = {o.name for o in sess.get_outputs()}
    assert {f"present_{s}_state_{i}" for i in (0, 1, 3, 4) for s in ("rg_lru", "conv1d")} <= outputs


def test_onnx_runtime_py_chunked_decoding_past_the_window(hf, onnx_artifact):
    """runtime_py's stepper, prefill chunks of 7 and single steps, against the full forward pass;
    the attention caches stay window-sized and every recurrent state keeps its shape."""
    ref = hf[0]
    toks = _tokens(T)
    expected = _reference_logits(ref, toks)
    model = runtime_py.load(onnx_artifact)
    step = model.backend.stepper(T, prefill_chunk=7)
    start, sizes = 0, set()
    for n in [5, 1, 1, 12, 3, 1, 17]:
        last = step(toks[0, start:start + n].tolist(), start)
        start += n
        assert np.abs(last - expected[start - 1]).max() < 1e-4
        shapes = step.cache_shapes()
        assert shapes["past_key_values.2.key"] == (1, 1, 8, 32)
        assert shapes["rg_lru_state_0"] == (1, 32) and shapes["conv1d_state_4"] == (1, 3, 32)
        sizes.add(step.cache_bytes())
    assert len(sizes) == 1


def test_onnx_artifact_says_onnxruntime_genai_cannot_run_it(onnx_artifact):
    manifest = json.loads((onnx_artifact / "manifest.json").read_text())
    assert not (onnx_artifact / "genai_config.json").exists()
    assert "not supported" in manifest["onnxruntime_genai"]
    decoder = manifest["runtime_config"]["model"]["decoder"]
    assert decoder["kv_layers"] == [2, 5] and ["rg_lru_state_0", "present_rg_lru_state_0"] in decoder["states"]


def test_onnx_generate_matches_transformers_greedy(hf, onnx_artifact):
    prompt = _tokens(12, seed=3)
    got = runtime_py.load(onnx_artifact).generate(prompt[0].tolist(), 30, stop_ids=()).token_ids
    assert got == hf_greedy(hf[0], prompt, 30)


def test_onnx_validate_passes_fp32_thresholds(onnx_artifact):
    r = validate(onnx_artifact)
    assert r["passed"], r["failures"]
    assert r["max_abs_logit_diff"] <= 1e-4 and r["greedy_match_tokens"] == 64
    assert r["greedy_prompt_tokens"] > 8                         # past the tiny window


def test_onnx_fp16_keeps_the_rg_lru_state_and_scan_in_fp32(hf):
    import onnx
    _, root, path = hf
    out = export_onnx(load_model(path), root / "onnx-fp16", recipe="fp16", context_length=256)
    graph = onnx.load(str(out / "model.onnx")).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output]}
    assert types["rg_lru_state_0"] == types["present_rg_lru_state_4"] == onnx.TensorProto.FLOAT
    assert types["conv1d_state_0"] == types["past_key_values.2.key"] == onnx.TensorProto.FLOAT16
    r = validate(out)
    assert r["passed"], r["failures"]


# --- LiteRT -----------------------------------------------------------------------------------------

PREFILL = 16                 # longer than the window; shorter chunks run padded
LITERT_CONTEXT = 320         # what validate's 256-token comparison needs; no cache is this long


@pytest.fixture(scope="module")
def litert_artifact(tmp_path_factory):
    """One Griffin period (recurrent, recurrent, attention): litert-torch unrolls the scan per
    signature, and conversion time grows with the layers."""
    from export.converters.litert import export_litert
    root = tmp_path_factory.mktemp("recurrentgemma-litert")
    ref, _ = save_hf_folder("recurrentgemma", root / "hf", tokenizer=True, num_hidden_layers=3)
    out = export_litert(load_model(root / "hf"), root / "litert", prefill_lengths=(PREFILL,),
                        cache_length=LITERT_CONTEXT)
    return ref, out


def test_litert_signatures_carry_the_state_beside_the_caches(litert_artifact):
    """Names and shapes from LiteRT-LM's contract and transformers' config (oracle.litert_io)."""
    from ai_edge_litert.interpreter import Interpreter
    ref, out = litert_artifact
    it = Interpreter(model_path=str(out / "model.tflite"))
    want = litert_io(ref.config, (PREFILL,), LITERT_CONTEXT)
    assert set(it.get_signature_list()) == set(want) == {f"prefill_{PREFILL}", "decode"}
    for name, io in want.items():
        runner = it.get_signature_runner(name)
        inputs, outputs = runner.get_input_details(), runner.get_output_details()
        assert {k: tuple(v["shape"]) for k, v in inputs.items()} == io["inputs"]
        assert {k: tuple(v["shape"]) for k, v in outputs.items()} == io["outputs"]
    inputs = it.get_signature_runner("decode").get_input_details()
    assert tuple(inputs["rg_lru_state_0"]["shape"]) == (1, 32) and inputs["rg_lru_state_0"]["dtype"] == np.float32
    assert tuple(inputs["conv1d_state_1"]["shape"]) == (1, 3, 32)
    assert tuple(inputs["kv_cache_k_2"]["shape"]) == (1, 1, 8, 32)          # the window, not the context
    assert not any(k.startswith("kv_cache") and k.endswith(("_0", "_1")) for k in inputs)
    with pytest.raises(ValueError, match="LiteRT-LM"):
        from export.converters.litert.bundle import build_litertlm
        build_litertlm(out, out.parent / "rg.litertlm")


def test_litert_runtime_py_padded_chunks_and_decode_match_transformers(litert_artifact):
    """runtime_py's LiteRT backend: padded prefill chunks (the state advances over real tokens only)
    and decode steps past the window, against transformers' full forward."""
    ref, out = litert_artifact
    toks = _tokens(T)
    expected = _reference_logits(ref, toks)
    model = runtime_py.load(out)
    assert model.backend.context_length == LITERT_CONTEXT
    np.testing.assert_allclose(model.logits(toks[0].tolist()), expected, atol=1e-4, rtol=0)
    step, start = model.backend.stepper(T), 0
    for n in [5, 1, 1, 12, 3, 1, 17]:
        last = step(toks[0, start:start + n].tolist(), start)
        start += n
        assert np.abs(last - expected[start - 1]).max() < 1e-4


def test_litert_validate_passes_fp32_thresholds(litert_artifact):
    r = validate(litert_artifact[1])
    assert r["passed"], r["failures"]
    assert r["max_abs_logit_diff"] <= 1e-4 and r["greedy_match_tokens"] == 64


# --- the fixed-size state ---------------------------------------------------------------------------

LONG = 8192


def _long_artifact(arch, root, **overrides):
    save_hf_folder(arch, root / arch, max_position_embeddings=LONG, **overrides)
    return runtime_py.load(export_onnx(load_model(root / arch), root / f"{arch}-onnx", context_length=LONG))


def test_runtime_state_memory_is_constant_while_gemma2_cache_grows(tmp_path):
    """What runtime_py holds between steps for a sequence of 1k and of 8k tokens (prefilled in chunks of
    1024, the last 8 decoded one by one): RecurrentGemma's states and window-sized caches do not grow; a
    Gemma 2 of the same width (hidden 48) holds its global layers' caches for every token (runtime_py
    allocates them once, for the whole sequence, and GroupQueryAttention writes in place)."""
    rg = _long_artifact("recurrentgemma", tmp_path)
    g2 = _long_artifact("gemma2", tmp_path, hidden_size=48)
    ids = torch.randint(0, 160, (LONG,), generator=torch.Generator().manual_seed(5)).tolist()
    held = {}
    for name, model in (("recurrentgemma", rg), ("gemma2", g2)):
        sizes = []
        for n in (1024, LONG):
            step = model.backend.stepper(n, prefill_chunk=1024)
            step(ids[:n - 8], 0)
            for i in range(n - 8, n):               # generated tokens
                assert np.isfinite(step(ids[i:i + 1], i)).all()
            sizes.append(step.cache_bytes())
        held[name] = tuple(sizes)
    # RecurrentGemma: 4 recurrent layers x (RG-LRU [32] + Conv1D [3, 32]) + 2 attention layers x K/V [1, 8, 32], fp32
    fixed = 4 * (32 + 3 * 32) * 4 + 2 * 2 * (8 * 32) * 4
    assert held["recurrentgemma"] == (fixed, fixed)
    # Gemma 2: 2 global layers grow by K/V [2 heads, 16] per token; 2 sliding layers hold 8 slots
    g2_bytes = lambda n: 2 * 2 * (n * 2 * 16) * 4 + 2 * 2 * (8 * 2 * 16) * 4      # noqa: E731
    assert held["gemma2"] == (g2_bytes(1024), g2_bytes(LONG))
    print(f"\nbytes held after 1k / 8k tokens: {held}")
