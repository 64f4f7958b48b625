"""RecurrentGemma (Griffin) artifacts against transformers' RecurrentGemmaForCausalLM on a tiny random
model (window 8, prompts of 40 tokens): ONNX through a plain onnxruntime session and through
runtime_py, `validate`, and the point of the architecture, a state whose size does not grow."""
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

import runtime_py
from export.converters.onnx import export_onnx
from export.models.checkpoints import load_model
from export.validate import validate

from oracle import save_hf_folder

T = 40   # the tiny attention window is 8
VOCAB = 384


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    root = tmp_path_factory.mktemp("recurrentgemma")
    ref, _ = save_hf_folder("recurrentgemma", root / "hf", tokenizer=True)
    return ref, root


@pytest.fixture(scope="module")
def onnx_artifact(hf):
    ref, root = hf
    return export_onnx(load_model(root / "hf"), root / "onnx", context_length=256)


def _tokens(n, seed=1):
    return torch.randint(0, VOCAB, (1, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _reference_logits(ref, toks):
    return ref(toks).logits[0].numpy()                               # [T, V]


def test_onnx_whole_prompt_with_zero_state_matches_transformers(hf, onnx_artifact):
    """A plain onnxruntime session: zero recurrent states, empty (window-padded) KV caches."""
    ref, _ = hf
    sess = ort.InferenceSession(str(onnx_artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    toks = _tokens(T)
    feed = {"input_ids": toks.numpy(), "attention_mask": np.ones((1, T), np.int64)}
    for arg in sess.get_inputs():
        if arg.name.startswith("past_key_values"):
            feed[arg.name] = np.zeros((1, 1, 0, 32), np.float32)
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
    ref, _ = hf
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


@torch.no_grad()
def test_onnx_generate_matches_transformers_greedy(hf, onnx_artifact):
    ref, _ = hf
    prompt = _tokens(12, seed=3)
    seq = prompt
    for _ in range(30):       # oracle: transformers' full forward re-run per token
        seq = torch.cat([seq, ref(seq).logits[:, -1:].argmax(-1)], 1)
    got = runtime_py.load(onnx_artifact).generate(prompt[0].tolist(), 30, stop_ids=()).token_ids
    assert got == seq[0, 12:].tolist()


def test_onnx_validate_passes_fp32_thresholds(onnx_artifact):
    r = validate(onnx_artifact)
    assert r["passed"], r["failures"]
    assert r["max_abs_logit_diff"] <= 1e-4 and r["greedy_match_tokens"] == 64
    assert r["greedy_prompt_tokens"] > 8                         # past the tiny window
