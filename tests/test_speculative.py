"""Exact speculative decoding (runtime_py.speculative, onnx_verify) on our ONNX folders: the tokens equal plain greedy
decoding through the same artifact and transformers' greedy picks on the tiny checkpoint, 120 tokens from a prompt
that repeats itself (so drafts are both kept and rejected), far past the sliding window of 8, where a rejected call
has shifted live rows out of the window caches."""
from __future__ import annotations

import json

import numpy as np
import pytest

import runtime_py
from runtime_py import Sampling
from runtime_py.speculative import NgramDrafter, speculative_tokens

from export.cli import main
from export.converters.onnx import export_onnx
from export.models.checkpoints import load_model

from conftest import run_cli
from oracle import hf_greedy

NEW = 120


@pytest.fixture(scope="module", params=["gemma3", "gemma2", "gemma"])   # sliding + global, softcaps, global only
def case(request, tiny_hf, tmp_path_factory):
    hf = tiny_hf(request.param, tokenizer=True)
    folder = export_onnx(load_model(hf.path), tmp_path_factory.mktemp(request.param) / "onnx", context_length=256)
    model = runtime_py.load(folder, threads=1)
    base = [int(t) for t in np.random.default_rng(0).integers(3, 300, 10)]
    prompt = [2] + base * 3 + base[:4]
    plain = model.generate(prompt, NEW, stop_ids=[]).token_ids
    return hf, folder, model, prompt, plain


def test_plain_greedy_is_transformers_greedy(case):
    hf, _, _, prompt, plain = case
    assert len(plain) == NEW and len(prompt) > 8                # the tiny sliding window is 8
    assert plain == hf_greedy(hf.ref, prompt, NEW)


@pytest.mark.parametrize("k", [1, 4, 7])
def test_speculative_tokens_equal_plain_greedy(case, k):
    _, _, model, prompt, plain = case
    g = model.generate(prompt, NEW, stop_ids=[], speculate=k)
    assert g.token_ids == plain
    assert g.speculation.accepted > 0


class WrongAt:
    """Drafts the known greedy continuation with one token made wrong at a place that moves from call to call
    (sometimes none): drafts kept whole, rejected at every offset, past the window on every call."""

    def __init__(self, plain: list[int]):
        self.plain, self.done, self.calls = plain, 0, 0

    def append(self, token: int) -> None:
        self.done += 1

    def draft(self, k: int) -> list[int]:
        out = list(self.plain[self.done:self.done + k])
        self.calls += 1
        wrong = (self.calls * 5) % (k + 2)
        if wrong < len(out):
            out[wrong] = (out[wrong] + 1) % 300
        return out


@pytest.mark.parametrize("k", [2, 7])
def test_rejected_drafts_are_rolled_back(case, k):
    _, _, model, prompt, plain = case
    step = model.backend.stepper(len(prompt) + NEW)
    out, s = speculative_tokens(step, step.verifier(), prompt, NEW, k, drafter=WrongAt(plain))
    assert out == plain
    assert 0 < s.accepted < s.drafted and s.calls > 10


def test_a_stop_id_inside_accepted_drafts_ends_where_plain_greedy_ends(case):
    _, _, model, prompt, plain = case
    stop = plain[60]
    want = plain[:plain.index(stop)]
    for k in (0, 4, 7):
        assert model.generate(prompt, NEW, stop_ids=[stop], speculate=k).token_ids == want


def test_budget_is_kept(case):
    _, _, model, prompt, plain = case
    for n in (1, 2, 5, 33):
        g = model.generate(prompt, n, stop_ids=[], speculate=7)
        assert g.token_ids == plain[:n] and g.finish_reason == "length"


def test_cli_speculate_prints_the_same_text_and_draft_counts(case):
    _, folder, _, _, _ = case
    argv = ["generate", "--model", str(folder), "--prompt", "a b c a b c a b c a b", "--max-new-tokens", "40",
            "--threads", "1"]
    code, plain = run_cli(argv)
    code_s, spec = run_cli(argv + ["--speculate", "4"])
    assert code == code_s == 0
    assert spec["token_ids"] == plain["token_ids"] and spec["text"] == plain["text"]
    assert spec["speculation"]["k"] == 4 and "speculation" not in plain


def test_refused_settings(case, capsys):
    _, folder, model, prompt, _ = case
    with pytest.raises(ValueError, match="greedy"):
        model.generate(prompt, 4, sampling=Sampling(temperature=0.7, seed=1), speculate=4)
    with pytest.raises(ValueError, match="0..32"):
        model.generate(prompt, 4, speculate=33)
    if model.backend.window:
        with pytest.raises(ValueError, match="sliding window"):
            model.generate(prompt, 4, speculate=model.backend.window)
    for argv in (["--speculate", "4"],                                  # the reference model: refused
                 ["--model", str(folder), "--speculate", "-1"],
                 ["--model", str(folder), "--speculate", "4", "--temperature", "0.5"]):
        try:
            code = main(["generate", "--prompt", "hi", *argv])
        except SystemExit as e:                                          # argparse's refusals
            code = e.code
        assert code == 2
    assert "--speculate" in capsys.readouterr().err


def test_drafts_continue_the_latest_earlier_occurrence():
    assert NgramDrafter([1, 2, 3, 9, 1, 2, 3]).draft(5) == [9, 1, 2, 3, 9]     # 3-gram, then its period
    assert NgramDrafter([4, 1, 2, 8, 3, 2]).draft(3) == []                    # only the 1-gram "2" recurs ...
    assert NgramDrafter([4, 1, 2, 8, 3, 2], min_ngram=1).draft(3) == [8, 3, 2]     # ... used when allowed
    assert NgramDrafter([5, 7, 7, 7]).draft(4) == [7, 7, 7, 7]
    assert NgramDrafter([1, 2, 3, 4]).draft(4) == []
    assert NgramDrafter([1, 2, 1, 2]).draft(0) == []


# --- LiteRT (`--target litert`: every prefill row has logits; a verify call is one padded prefill chunk) ----------

@pytest.fixture(scope="module")
def litert_case(tiny_litert):
    art = tiny_litert("gemma3")                       # window 8, prefill 8 and 16, context 64
    model = runtime_py.load(art.folder, threads=1)
    base = [int(t) for t in np.random.default_rng(0).integers(3, 300, 6)]
    prompt = [2] + base * 3
    n = art.context - len(prompt)
    plain = model.generate(prompt, n, stop_ids=[]).token_ids
    assert plain == hf_greedy(art.ref, prompt, n)
    return model, prompt, plain


@pytest.mark.parametrize("k", [1, 4, 7])
def test_litert_speculative_tokens_equal_plain_greedy(litert_case, k):
    model, prompt, plain = litert_case
    g = model.generate(prompt, len(plain), stop_ids=[], speculate=k)
    assert g.token_ids == plain and g.speculation.accepted > 0
    step = model.backend.stepper(len(prompt) + len(plain))
    out, s = speculative_tokens(step, step.verifier(), prompt, len(plain), k, drafter=WrongAt(plain))
    assert out == plain and 0 < s.accepted < s.drafted


# --- the real 270M (slow) ------------------------------------------------------------------------------------

def check_real_fp32(folder) -> None:
    """On float32 a multi-row call's rows are one-row steps' bit for bit: the speculative text is plain greedy's on
    an input-grounded task (the bench's code edit), with most drafts kept."""
    from bench.speculative import messages
    model = runtime_py.load(folder, threads=2)
    plain = model.chat(messages("edit-code"), max_new_tokens=64)
    spec = model.chat(messages("edit-code"), max_new_tokens=64, speculate=8)
    assert spec.token_ids == plain.token_ids and len(plain.token_ids) == 64
    assert spec.speculation.acceptance > 0.3


def test_real_fp32_speculative_text_is_plain_greedy(real_onnx):
    check_real_fp32(real_onnx)


def test_genai_builder_folder(tiny_hf, tmp_path):
    """onnxruntime-genai's own builder output (its GroupQueryAttention window caches): the same tokens as plain
    greedy through that folder (the reference here: on this tiny config the builder's graph does not follow
    transformers' greedy path, which test_runtime_onnx checks on a config of its own)."""
    import shutil

    import transformers

    from bench.genai_builder import run_genai_builder
    hf = tiny_hf("gemma3", tokenizer=True)
    src = tmp_path / "hf"
    shutil.copytree(hf.path, src)
    transformers.GemmaTokenizer.from_pretrained(src).save_pretrained(src)       # the builder wants one
    run_genai_builder(src, tmp_path / "onnx", tmp_path / "cache")
    model = runtime_py.load(tmp_path / "onnx", threads=1)
    assert model.backend.share_buffer and model.backend.window == 8
    prompt = [2] + [int(t) for t in np.random.default_rng(0).integers(3, 300, 10)] * 3
    plain = model.generate(prompt, NEW, stop_ids=[]).token_ids
    step = model.backend.stepper(len(prompt) + NEW)
    out, s = speculative_tokens(step, step.verifier(), prompt, NEW, 7, drafter=WrongAt(plain))
    assert out == plain and 0 < s.accepted < s.drafted
