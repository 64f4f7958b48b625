"""The `.litertlm` bundle's prefill signatures output no logits -- LiteRT-LM runs all but a prompt's last token
through them and that token through `decode`, never reading prefill logits -- and still run and validate right.

A real `export_litertlm` of the suite's tiny random Gemma 3 (prefill_8, prefill_16, decode; context 64). References:
transformers' forward passes and the LiteRT-LM engine itself running the bundle; the expected signature shapes from
transformers' config (oracle.litert_io)."""
from __future__ import annotations

import collections
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import runtime_py
from export.converters.litert.bundle import BUNDLE, export_litertlm
from export.converters.litert.graph import read_model, weight_ops
from export.models.checkpoints import load_model
from export.validate import DECODE_TOKENS, validate, validation_ids

from oracle import LITERT_CONTEXT, LITERT_PREFILL, hf_greedy, litert_io

PREFILL, CONTEXT = LITERT_PREFILL["gemma3"], LITERT_CONTEXT          # (8, 16), 64
TEXTS = ["The quick brown fox jumps over the lazy dog",
         "Yes, no, maybe. Is this a question? Yes it is. No it is not. Hello world! The old cat"]


@pytest.fixture(scope="module")
def bundle(tiny_hf, tmp_path_factory):
    hf = tiny_hf("gemma3", tokenizer=True)
    out = export_litertlm(load_model(hf.path), tmp_path_factory.mktemp("litertlm_prefill") / "android", "fp32",
                          PREFILL, CONTEXT)
    return SimpleNamespace(out=out, file=out / BUNDLE, hf=hf.path, ref=hf.ref)


def _tflite(bundle, tmp_path):
    from runtime_py.litert_backend import read_litertlm
    path = tmp_path / "model.tflite"
    path.write_bytes(read_litertlm(bundle.file)["tflite"])
    return path


def test_prefill_signatures_output_the_caches_only(bundle, tmp_path):
    """Every input and output LiteRT-LM's contract names, with transformers' shapes, but no `logits` out of
    prefill_T, and no LM head (a FULLY_CONNECTED with a row per vocabulary entry) among its ops."""
    from ai_edge_litert.interpreter import Interpreter
    path = _tflite(bundle, tmp_path)
    it = Interpreter(model_path=str(path))
    want = litert_io(bundle.ref.config, PREFILL, CONTEXT)
    for t in PREFILL:
        del want[f"prefill_{t}"]["outputs"]["logits"]
    assert set(it.get_signature_list()) == set(want)
    for name, io in want.items():
        runner = it.get_signature_runner(name)
        assert {k: tuple(v["shape"]) for k, v in runner.get_input_details().items()} == io["inputs"]
        assert {k: tuple(v["shape"]) for k, v in runner.get_output_details().items()} == io["outputs"]
    heads = read_model(path, lambda model, buf: collections.Counter(
        graph.Name().decode() for graph, op, name, weight in weight_ops(model)
        if name == "FULLY_CONNECTED" and weight.Shape(0) == bundle.ref.config.vocab_size))
    assert heads == {"decode": 1}
    manifest = json.loads((bundle.out / "manifest.json").read_text())
    assert manifest["prefill_logits"] is False and manifest["prefill_lengths"] == list(PREFILL)
    backend = runtime_py.load(bundle.file).backend
    assert not backend.prefill_logits


def test_engine_and_runtime_py_give_transformers_greedy_tokens(bundle, tmp_path):
    """runtime_py's greedy tokens on the bundle are transformers' (prompts over both prefill lengths, padded chunks,
    past the window of 8), and the LiteRT-LM engine's greedy text is runtime_py's."""
    import litert_lm
    ours = runtime_py.load(bundle.file)
    rng = np.random.default_rng(4)
    for n in (5, 13, 29):
        prompt = rng.integers(0, 384, n).tolist()
        assert ours.generate(prompt, 16, stop_ids=[]).token_ids == hf_greedy(bundle.ref, prompt, 16), n
    engine = litert_lm.Engine(str(bundle.file), backend=litert_lm.Backend.CPU(), max_num_tokens=CONTEXT,
                              cache_dir=str(tmp_path), activation_data_type=litert_lm.ActivationDataType.FLOAT32)
    greedy = litert_lm.SamplerConfig(top_k=1, temperature=0.0)
    try:
        for text in TEXTS:
            session = engine.create_session(apply_prompt_template=False, sampler_config=greedy)
            session.run_prefill([text])
            mine = ours.generate(text, max_new_tokens=CONTEXT)
            assert session.run_decode().texts == [mine.text], text
    finally:
        engine.close()


def test_logits_at_every_position_are_transformers(bundle):
    """runtime_py's logits() on the bundle (decode steps, as its prefill has none) at every position of a sequence
    past the window equal transformers' forward."""
    ids = np.random.default_rng(2).integers(0, 384, 50).tolist()
    with torch.no_grad():
        expected = bundle.ref(torch.tensor([ids])).logits[0].numpy()
    got = runtime_py.load(bundle.file).logits(ids)
    assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-4


def test_validate_compares_every_position_and_each_prefill_signature(bundle):
    report = validate(bundle.out, str(bundle.hf))
    model = runtime_py.load(bundle.out)
    ids = validation_ids(model.tokenizer, bundle.ref.config.sliding_window, CONTEXT)
    conv = report["conversion"]
    assert report["passed"] and report["tokens"] == len(ids) == conv["sequence"]["positions"]
    assert conv["prefill"]["positions"] == sum(min(DECODE_TOKENS, len(ids) - t) for t in PREFILL)
    assert report["max_abs_logit_diff"] < 1e-4 and conv["prefill"]["max_abs_logit_diff"] < 1e-4
    assert "decode steps" in report["logits_checked"]


def test_validate_catches_a_broken_prefill(bundle, monkeypatch):
    """The prefill check can fail: with the prefill signatures fed the wrong tokens (every decode step still
    right), the `prefill` figures fail and the whole-sequence ones pass."""
    from runtime_py.litert_backend import LiteRTBackend
    run_chunk = LiteRTBackend.run_chunk

    def wrong_tokens(self, sig, tokens, start, state, feeds=None):
        return run_chunk(self, sig, [(t + 1) % 384 for t in tokens] if sig is not self.decode else tokens, start,
                         state, feeds)
    monkeypatch.setattr(LiteRTBackend, "run_chunk", wrong_tokens)
    report = validate(bundle.out, str(bundle.hf))
    assert not report["conversion"]["passed"]
    assert any(f.startswith("prefill ") for f in report["conversion"]["failures"])
    assert not any(f.startswith("sequence ") for f in report["conversion"]["failures"])


@pytest.mark.parametrize("cached", [True, False])
def test_a_bundle_runs_from_a_mapped_temporary_file(bundle, cached, tmp_path, monkeypatch):
    """runtime_py compiles the bundle's model from a temporary file that LiteRT maps (so only the pages it reads
    are resident), removed as soon as the model is compiled: in the packed-weight cache folder (on disk, not a
    tmpfs /tmp), or the system's temporary folder when there is none; the logits are still transformers'."""
    import tempfile
    from runtime_py.litert_cache import CACHE_ENV
    cache, temp = tmp_path / "cache", tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setenv(CACHE_ENV, str(cache) if cached else "")
    model = runtime_py.load(bundle.file)
    where = cache if cached else temp
    assert list(temp.iterdir()) == [] and sorted(p.suffix for p in where.iterdir()) == (
        [".source", ".xnnpack_cache"] if cached else [])
    with open("/proc/self/maps") as f:
        assert any(f"{where}/tmp" in line and ".tflite (deleted)" in line for line in f)
    ids = np.random.default_rng(6).integers(0, 384, 20).tolist()
    with torch.no_grad():
        expected = bundle.ref(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(model.logits(ids) - expected).max() < 1e-4
