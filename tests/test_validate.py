"""`gemma-export validate` on ONNX artifacts: fp32 exports pass the fp32 thresholds past the
window, a damaged artifact fails (exit status 1), and the real Gemma 3 270M goes through
export -> onnxruntime-genai (with its own tokenizer) -> validate."""
import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from export.cli import main
from export.converters.onnx import export_onnx
from export.models.checkpoints import load_model
from export.validate import validate


@pytest.fixture(scope="module", params=["gemma", "gemma2", "gemma3", "embeddinggemma"])
def tiny_artifact(request, tiny_hf, tmp_path_factory):
    hf = tiny_hf(request.param, tokenizer=True).path
    return export_onnx(load_model(hf), tmp_path_factory.mktemp(request.param) / "onnx", context_length=256)


def test_fp32_artifact_passes(tiny_artifact):
    r = validate(tiny_artifact)
    assert r["passed"], r["failures"]
    if "embedding_cosine" in r:
        assert r["embedding_cosine"] >= 0.9999
    else:
        assert r["max_abs_logit_diff"] <= 1e-3 and r["greedy_match_tokens"] == 64
        assert r["greedy_prompt_tokens"] > 8                     # the tiny window
        assert abs(r["perplexity"] - r["reference_perplexity"]) < 1e-3 * r["reference_perplexity"]


def test_damaged_artifact_fails_with_exit_status_1(tiny_artifact, tmp_path, capsys):
    """Add 10% noise to one MLP weight: validate must notice."""
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(tiny_artifact, bad)
    model = onnx.load(str(bad / "model.onnx"))
    for init in model.graph.initializer:
        if init.name == "/model/layers.0/mlp/down_proj/MatMul.weight":
            w = numpy_helper.to_array(init)
            noise = np.random.default_rng(0).normal(0, 0.1 * w.std(), w.shape).astype(w.dtype)
            init.CopyFrom(numpy_helper.from_array(w + noise, init.name))
    onnx.save(model, str(bad / "model.onnx"))
    assert main(["validate", str(bad), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is False and report["failures"] and report["conversion"]["passed"] is False


# --- the real Gemma 3 270M (slow) -------------------------------------------------------------

def test_real_model_onnx_validates(real_onnx, cli):
    status, report = cli(["validate", str(real_onnx)])
    print("\n" + json.dumps(report, indent=1))
    assert status == 0 and report["passed"]
    assert report["max_abs_logit_diff"] <= 1e-3
    assert report["greedy_match_tokens"] == 64 and report["greedy_prompt_tokens"] > 512


def test_real_model_runs_unchanged_in_onnxruntime_genai(real_onnx):
    import onnxruntime_genai as og

    import runtime_py
    prompt = "The capital of France is"
    ours = runtime_py.load(real_onnx).generate(prompt, max_new_tokens=32, stop_ids=())
    model = og.Model(str(real_onnx))
    tok = og.Tokenizer(model)
    tok.update_options(add_special_tokens="true")            # og 0.18 adds no BOS by default
    ids = tok.encode(prompt)
    assert list(ids) == [2, 818, 5279, 529, 7001, 563]
    params = og.GeneratorParams(model)
    # onnxruntime-genai sizes sliding caches min(window + slack, max_length), and GroupQueryAttention
    # needs at least the window (512): max_length must not be below it (as for its own builder's output).
    params.set_search_options(do_sample=False, max_length=512)
    gen = og.Generator(model, params)
    gen.append_tokens(np.asarray(ids, dtype=np.int32)[None])
    new = []
    while len(new) < 32:
        gen.generate_next_token()
        new.append(int(gen.get_next_tokens()[0]))
    assert new == ours.token_ids
    assert tok.decode(np.asarray(new, dtype=np.int32)) == ours.text


def test_nan_logits_fail_every_check():
    from export.quantize.recipes import RECIPES
    from export.validate import _conversion_check, agreement
    ref = np.random.default_rng(0).normal(size=(6, 10)).astype(np.float32)
    art = ref.copy()
    art[3, 4] = np.nan
    failures = _conversion_check({"prefill": agreement(ref, art)}, RECIPES["fp32"].thresholds)["failures"]
    assert any("logit diff" in f for f in failures) and any("KL" in f for f in failures)
    assert any("relative logit error" in f for f in failures)
