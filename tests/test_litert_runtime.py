"""runtime_py on LiteRT artifacts, against independent references.

The suite's tiny random Gemma 3 LiteRT artifact (conftest.tiny_litert: 3 layers, sliding window 8, a SentencePiece
vocabulary trained here; prefill_8, prefill_16, decode; context 64) is bundled into a .litertlm. References:
transformers' repeated full forward passes (not .generate, whose tiny sliding caches are unreliable), and the
real LiteRT-LM engine (litert_lm) running the same bundle.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import runtime_py
from export.converters.litert.bundle import BUNDLE, build_litertlm, export_litertlm
from export.models.checkpoints import load_model

from oracle import LITERT_CONTEXT, LITERT_PREFILL, hf_greedy

PREFILL, CONTEXT = LITERT_PREFILL["gemma3"], LITERT_CONTEXT          # (8, 16), 64
TEXTS = ["The quick brown fox jumps over the lazy dog",                                # 18 tokens
         "Yes, no, maybe. Is this a question? Yes it is. No it is not. Hello world! The old cat"]  # 41


@pytest.fixture(scope="module")
def art(tiny_litert, tmp_path_factory):
    shared = tiny_litert("gemma3")
    bundle = build_litertlm(shared.folder, tmp_path_factory.mktemp("litert_runtime") / "bundle" / BUNDLE)
    return {"ref": shared.ref, "loaded": load_model(shared.hf), "folder": shared.folder, "bundle": bundle}


def _ids(n: int, seed: int = 1) -> list[int]:
    return np.random.default_rng(seed).integers(0, 384, n).tolist()


def test_greedy_and_logits_match_transformers(art):
    model = runtime_py.load(art["folder"], threads=2)
    assert type(model.backend).__name__ == "LiteRTBackend" and model.kind == "causal"
    assert model.backend.context_length == CONTEXT and model.backend.prefill_lengths == list(PREFILL)
    prompt = _ids(11, seed=3)
    got = model.generate(prompt, max_new_tokens=24, stop_ids=[])         # 35 tokens: far past the window
    assert got.token_ids == hf_greedy(art["ref"], prompt, 24)
    ids = _ids(40)
    with torch.no_grad():
        expected = art["ref"](torch.tensor([ids])).logits[0].numpy()
    logits = model.logits(ids)
    assert logits.shape == (40, 384) and logits.dtype == np.float32
    assert np.abs(logits - expected).max() < 1e-4


def test_prompt_chunking_over_mixed_prefill_lengths(art):
    model = runtime_py.load(art["folder"])
    b = model.backend
    b.hold_last = False                  # the whole prompt through prefill, its last logits read from there
    assert b.chunks(1) == [(8, 1)] and b.chunks(8) == [(8, 8)] and b.chunks(16) == [(16, 16)]
    assert b.chunks(13) == [(8, 8), (8, 5)] and b.chunks(29) == [(16, 16), (8, 8), (8, 5)]
    assert b.chunks(37) == [(16, 16), (16, 16), (8, 5)]
    calls = []
    run = b.run_chunk
    b.run_chunk = lambda sig, tokens, start, src, feeds=None: calls.append((sig.name, len(tokens), start)) or \
        run(sig, tokens, start, src, feeds)
    try:
        ids = _ids(60, seed=5)
        with torch.no_grad():
            expected = art["ref"](torch.tensor([ids])).logits[0].numpy()
        for lengths in [(13,), (5, 1, 1, 3), (29, 1, 7), (37, 1, 2, 17)]:     # padded chunks mixed with decode
            step, pos = b.stepper(60), 0
            for n in lengths:
                last = step(ids[pos:pos + n], pos)
                pos += n
                assert np.abs(last - expected[pos - 1]).max() < 1e-4, (lengths, pos)
    finally:
        b.run_chunk = run
    p8, p16, dec = "prefill_8", "prefill_16", "decode"
    assert calls == [(p8, 8, 0), (p8, 5, 8),
                     (p8, 5, 0), (dec, 1, 5), (dec, 1, 6), (p8, 3, 7),
                     (p16, 16, 0), (p8, 8, 16), (p8, 5, 24), (dec, 1, 29), (p8, 7, 30),
                     (p16, 16, 0), (p16, 16, 16), (p8, 5, 32), (dec, 1, 37), (p8, 2, 38), (p16, 16, 40), (p8, 1, 56)]
    with pytest.raises(ValueError, match="max_len"):
        b.stepper(CONTEXT + 1)
    step = b.stepper(20)
    step(ids[:15], 0)
    with pytest.raises(ValueError, match="continues"):
        step(ids[:1], 3)
    with pytest.raises(ValueError, match="exceed"):
        step(ids[:6], 15)


def test_a_prompt_holds_its_last_token_back_for_decode(art):
    """By default a prompt runs as LiteRT-LM runs it: all but its last token in prefill chunks, whose logits are
    never read (a [1, T, V] read per prompt), the last token through decode; the logits still transformers'."""
    b = runtime_py.load(art["folder"]).backend
    assert b.hold_last
    calls, reads = [], []
    run, logits_of = b.run_chunk, b.logits_of
    b.run_chunk = lambda sig, tokens, start, src, feeds=None: calls.append((sig.name, len(tokens), start)) or \
        run(sig, tokens, start, src, feeds)
    b.logits_of = lambda sig, n: reads.append((sig.name, n)) or logits_of(sig, n)
    ids = _ids(30, seed=11)
    with torch.no_grad():
        expected = art["ref"](torch.tensor([ids])).logits[0].numpy()
    step = b.stepper(30)
    assert np.abs(step(ids[:13], 0) - expected[12]).max() < 1e-4
    assert np.abs(step(ids[13:30], 13) - expected[29]).max() < 1e-4
    assert calls == [("prefill_8", 8, 0), ("prefill_8", 4, 8), ("decode", 1, 12),
                     ("prefill_16", 16, 13), ("decode", 1, 29)]
    assert reads == [("decode", 1), ("decode", 1)]


def test_interleaved_steppers_keep_their_caches(art):
    """Caches live in the interpreter's buffers; a stepper interrupted by another one (or by logits()) has
    its caches copied out first and continues correctly."""
    b = runtime_py.load(art["folder"]).backend
    ids = _ids(40, seed=9)
    with torch.no_grad():
        expected = art["ref"](torch.tensor([ids])).logits[0].numpy()
    a, other = b.stepper(), b.stepper()
    a(ids[:13], 0)
    other(ids[:5], 0)
    other(ids[5:6], 5)
    b.logits(ids[:3])
    assert np.abs(a(ids[13:14], 13) - expected[13]).max() < 1e-4
    assert np.abs(other(ids[6:9], 6) - expected[8]).max() < 1e-4
    assert np.abs(a(ids[14:30], 14) - expected[29]).max() < 1e-4


def test_prefill_without_logits_goes_through_decode(art):
    """Artifacts whose prefill signatures output no logits (LiteRT-LM's default): the last prompt token runs
    through decode; logits() decodes token by token."""
    model = runtime_py.load(art["folder"])
    model.backend.prefill_logits = False
    prompt = _ids(21, seed=7)
    assert model.generate(prompt, max_new_tokens=6, stop_ids=[]).token_ids == hf_greedy(art["ref"], prompt, 6)
    with torch.no_grad():
        expected = art["ref"](torch.tensor([prompt])).logits[0].numpy()
    assert np.abs(model.logits(prompt) - expected).max() < 1e-4


def test_bundle_loads_in_runtime_with_the_same_greedy_ids(art, tmp_path, monkeypatch):
    folder_model = runtime_py.load(art["folder"])
    bundled = runtime_py.load(art["bundle"])                # no manifest / tokenizer beside it: all from the file
    assert bundled.manifest is None and bundled.backend.context_length == CONTEXT
    assert bundled.tokenizer.model_proto() == (art["folder"] / "tokenizer.model").read_bytes()
    assert bundled.config == json.loads((art["folder"] / "manifest.json").read_text())["config"]
    for text in TEXTS:
        a = folder_model.generate(text, max_new_tokens=64)
        b = bundled.generate(text, max_new_tokens=64)
        assert (a.token_ids, a.text, a.finish_reason) == (b.token_ids, b.text, b.finish_reason)
    prompt = _ids(11, seed=3)
    assert bundled.generate(prompt, 24, stop_ids=[]).token_ids == hf_greedy(art["ref"], prompt, 24)

    # export_litertlm (what --target android / ios ship), with the conversion replaced by a copy of the artifact
    import export.converters.litert as litert_target

    def fake_export(loaded, out, recipe, prefill_lengths, cache_length, prefill_logits, consume):
        assert (recipe, tuple(prefill_lengths), cache_length, consume) == ("fp32", PREFILL, CONTEXT, False)
        assert prefill_logits is False               # what LiteRT-LM needs (test_litertlm_prefill.py)
        return shutil.copytree(art["folder"], out)
    monkeypatch.setattr(litert_target, "export_litert", fake_export)
    out = export_litertlm(art["loaded"], tmp_path / "android", "fp32", PREFILL, CONTEXT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["android"]          # no temporary folders left
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == {BUNDLE, "tokenizer.model"} and manifest["bundle"] == BUNDLE
    assert (manifest["target"], manifest["context_length"], manifest["prefill_lengths"]) == ("litertlm", 64, [8, 16])
    for model in (runtime_py.load(out), runtime_py.load(out / BUNDLE)):
        assert model.manifest == manifest
        assert model.generate(TEXTS[0], max_new_tokens=64).token_ids == folder_model.generate(TEXTS[0], 64).token_ids


def test_bundle_metadata_and_errors(art, tmp_path):
    import io

    from litert_lm_builder import peek_litertlm_file
    listing = io.StringIO()
    peek_litertlm_file(str(art["bundle"]), None, listing)
    text = listing.getvalue()
    for needle in ("tf_lite_prefill_decode", "SP_Tokenizer", "LlmMetadataProto", "ExecutorMetadataProto",
                   "<start_of_turn>user", "gemma3", "max_num_tokens: 64", "TYPE_GLOBAL_KEY_CACHE"):
        assert needle in text, needle
    with pytest.raises(ValueError, match="context length"):
        build_litertlm(art["folder"], tmp_path / "x.litertlm", max_tokens=CONTEXT + 1)
    with pytest.raises(FileNotFoundError, match="model.tflite"):
        build_litertlm(tmp_path, tmp_path / "x.litertlm")
    assert not list(tmp_path.iterdir())
    bad = tmp_path / "bad.litertlm"
    bad.write_bytes(b"NOTLITERTLM" + bytes(64))
    with pytest.raises(ValueError, match="magic"):
        runtime_py.load(bad)
    bad.write_bytes(art["bundle"].read_bytes()[:24] + (10**6).to_bytes(8, "little") + bytes(100))
    with pytest.raises(ValueError, match="damaged"):
        runtime_py.load(bad)
    # a section whose end lies far past the file (its uint64 `end_offset`, field 2 of the section table)
    from runtime_py import litert_backend as lb
    data = bytearray(art["bundle"].read_bytes())
    buf = memoryview(data)[lb._HEADER_BEGIN:]
    root = lb._deref(buf, 0)
    section = lb._vector(buf, lb._field(buf, lb._deref(buf, lb._field(buf, root, 1)), 0))[0]
    at = lb._HEADER_BEGIN + lb._field(buf, section, 2)
    del buf, root
    data[at:at + 8] = (1 << 62).to_bytes(8, "little")
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"bad\.litertlm: damaged .litertlm header \(a section spans"):
        runtime_py.load(bad)


def test_litert_lm_engine_runs_the_bundle_like_runtime_py(art, tmp_path):
    """THE reference: Google's LiteRT-LM engine runs the bundle (greedy, CPU) and its text equals ours -- for a
    prompt longer than the sliding window that it chunks over both prefill lengths, and through the bundle's
    Gemma prompt templates (chat)."""
    import litert_lm
    ours = runtime_py.load(art["bundle"])
    engine = litert_lm.Engine(str(art["bundle"]), backend=litert_lm.Backend.CPU(), max_num_tokens=CONTEXT,
                              cache_dir=str(tmp_path), activation_data_type=litert_lm.ActivationDataType.FLOAT32)
    greedy = litert_lm.SamplerConfig(top_k=1, temperature=0.0)
    try:
        assert engine.bos_token_id == ours.tokenizer.bos_id
        assert sorted(engine.eos_token_ids) == sorted([i] for i in ours.tokenizer.stop_ids)
        for text in TEXTS:
            session = engine.create_session(apply_prompt_template=False, sampler_config=greedy)
            session.run_prefill([text])
            theirs = session.run_decode().texts
            mine = ours.generate(text, max_new_tokens=CONTEXT)
            assert theirs == [mine.text] and mine.finish_reason == "context", text
        session = engine.create_session(apply_prompt_template=True, sampler_config=greedy)
        session.run_prefill(["Hello world"])
        assert session.run_decode().texts == [ours.chat([{"role": "user", "content": "Hello world"}], CONTEXT).text]
    finally:
        engine.close()
    assert not (art["bundle"].parent / f"{BUNDLE}.xnnpack_cache").exists()
    assert not [p for p in art["bundle"].parent.iterdir() if "xnnpack" in p.name]
