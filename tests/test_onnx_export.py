"""ONNX artifacts of every architecture against transformers: a plain onnxruntime session on a whole
prompt with empty caches, chunked decoding past the sliding window with window-sized caches, and
onnxruntime-genai's own generator; EmbeddingGemma's embeddings against sentence-transformers' model of the same
weights (conftest.st_reference)."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.converters.onnx import export_onnx
from export.models.checkpoints import load_model

from oracle import TINY, genai_greedy, hf_greedy, save_hf_folder, tokens

# onnxruntime-genai's contract (genai_config.json, its generator); RecurrentGemma, which it cannot
# run, is tested through runtime_py in test_recurrentgemma_export.py.
CAUSAL = [a for a in TINY if a not in ("embeddinggemma", "recurrentgemma")]
T = 40   # the tiny sliding window is 8


@pytest.fixture(scope="module", params=CAUSAL)
def artifact(request, tiny_hf, tmp_path_factory):
    hf = tiny_hf(request.param)
    return hf.ref, export_onnx(load_model(hf.path), tmp_path_factory.mktemp(request.param) / "onnx", context_length=64)


def _tokens(n, seed=1):
    return tokens(n, 160, seed)


def _session(folder):
    return ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])


def _empty_past(cfg):
    """The first call's past: empty on global layers, window-sized zeros on sliding ones (genai's contract)."""
    dec = cfg["model"]["decoder"]
    window = dec.get("sliding_window") or {}
    return {f"past_key_values.{i}.{k}": np.zeros((1, dec["num_key_value_heads"],
                                                 window["window_size"] if i in window.get("layers", []) else 0,
                                                 dec["head_size"]), np.float32)
            for i in range(dec["num_hidden_layers"]) for k in ("key", "value")}


def test_graph_passes_checker_and_uses_fused_ops(artifact):
    _, out = artifact
    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert {"GroupQueryAttention", "SkipSimplifiedLayerNormalization", "RMSNormalization"} <= ops
    assert "Softmax" not in ops
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"]["model.onnx"]["bytes"] == (out / "model.onnx").stat().st_size


def _whole_prompt(artifact):
    """(transformers' logits [T, V] of a T-token prompt, the ONNX feed of that prompt with an empty past)."""
    ref, out = artifact
    cfg = json.loads((out / "genai_config.json").read_text())
    toks = _tokens(T)
    feed = {"input_ids": toks.numpy(), "attention_mask": np.ones((1, T), np.int64), **_empty_past(cfg)}
    return ref(toks).logits[0].numpy(), feed


@torch.no_grad()
def test_whole_prompt_with_empty_past_matches_transformers(artifact):
    expected, feed = _whole_prompt(artifact)
    logits = _session(artifact[1]).run(["logits"], feed)[0][0]
    assert logits.shape == expected.shape
    assert np.abs(logits - expected).max() < 1e-4


@torch.no_grad()
def test_logits_to_keep_returns_the_last_positions(artifact):
    """The optional logits_to_keep input (default 0: every position) against transformers' full forward."""
    expected, feed = _whole_prompt(artifact)
    sess = _session(artifact[1])
    assert "logits_to_keep" not in {i.name for i in sess.get_inputs()}      # optional: genai never feeds it
    for keep in (1, 3, T + 5):
        logits = sess.run(["logits"], {**feed, "logits_to_keep": np.array([keep], np.int64)})[0][0]
        assert logits.shape == (min(keep, T), expected.shape[1])
        assert np.abs(logits - expected[-min(keep, T):]).max() < 1e-4


@torch.no_grad()
def test_chunked_decoding_past_the_window_keeps_window_sized_caches(artifact):
    ref, out = artifact
    cfg = json.loads((out / "genai_config.json").read_text())
    sliding = set(cfg["model"]["decoder"].get("sliding_window", {}).get("layers", []))
    window = cfg["model"]["decoder"].get("sliding_window", {}).get("window_size")
    toks = _tokens(T)
    expected = ref(toks).logits[0].numpy()
    sess = _session(out)
    names = [o.name for o in sess.get_outputs()]
    past, start, outs = _empty_past(cfg), 0, []
    for n in [5, 1, 1, 12, 3, 1, 17]:
        feed = {"input_ids": toks[:, start:start + n].numpy(),
                "attention_mask": np.ones((1, start + n), np.int64), **past}
        res = dict(zip(names, sess.run(None, feed)))
        outs.append(res["logits"][0])
        start += n
        past = {k.replace("present", "past_key_values"): v for k, v in res.items() if k.startswith("present")}
        for name, v in past.items():
            layer = int(name.split(".")[1])
            assert v.shape[2] == (window if layer in sliding else start)
    assert np.abs(np.concatenate(outs) - expected).max() < 1e-4


@torch.no_grad()
def test_runtime_py_decode_steps_match_transformers(artifact):
    """runtime_py's one-token steps on our graphs (the optional logits_to_keep input left unbound, buffers bound
    by address) give transformers' logits at every position past the window."""
    from runtime_py.onnx_backend import OnnxBackend
    ref, out = artifact
    toks = _tokens(T)
    expected = ref(toks).logits[0].numpy()
    ids = toks[0].tolist()
    step = OnnxBackend(out, threads=1).stepper(T)
    got = [step(ids[:5], 0)] + [step([ids[pos]], pos) for pos in range(5, T)]
    assert np.abs(np.stack(got) - expected[4:]).max() < 1e-4


def test_onnxruntime_genai_greedy_matches_transformers(artifact):
    ref, out = artifact
    prompt = _tokens(12, seed=3)
    assert genai_greedy(out, prompt, 42) == hf_greedy(ref, prompt, 30)


@torch.no_grad()
def test_embeddinggemma_embeddings_match_the_reference_head(tiny_hf, st_reference, tmp_path):
    hf = tiny_hf("embeddinggemma", tokenizer=True)
    out = export_onnx(load_model(hf.path), tmp_path / "onnx")
    toks = torch.cat([_tokens(T), _tokens(T, seed=2)])
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, 29:] = 0
    expected = st_reference(hf.path)({"input_ids": toks, "attention_mask": mask})["sentence_embedding"].numpy()
    got = _session(out).run(["sentence_embedding"], {"input_ids": toks.numpy(), "attention_mask": mask.numpy()})[0]
    assert np.abs(got - expected).max() < 1e-5
    assert (got * expected).sum(-1).min() > 0.9999
    assert not (out / "genai_config.json").exists()


def test_failed_export_leaves_nothing_behind(tmp_path):
    save_hf_folder("gemma3", tmp_path / "hf")
    with pytest.raises(ValueError, match="--context"):
        export_onnx(load_model(tmp_path / "hf"), tmp_path / "onnx", context_length=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_export_failing_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    import export.converters.onnx as onnx_target
    save_hf_folder("gemma3", tmp_path / "hf")
    loaded = load_model(tmp_path / "hf")
    export_onnx(loaded, tmp_path / "onnx", context_length=64)
    before = (tmp_path / "onnx" / "model.onnx").read_bytes()

    def broken(proto, path):
        path.write_bytes(b"half a model")
        raise OSError("disk full")
    monkeypatch.setattr(onnx_target, "save_model", broken)
    with pytest.raises(OSError, match="disk full"):
        export_onnx(loaded, tmp_path / "onnx", context_length=64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "onnx"]      # no partial folder left
    assert (tmp_path / "onnx" / "model.onnx").read_bytes() == before         # the old artifact intact
