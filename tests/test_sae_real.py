"""The real Gemma 3 270M with a random SAE of Gemma Scope 2's 270M shape (width 16k on the residual stream after
a middle layer), exported to fp32 ONNX and fp32 LiteRT with --sae: its top-k features match the published JumpReLU
equations (numpy) on transformers' hidden states, a zero steering input leaves the logits as the artifact without
SAEs (LiteRT: the plain signatures) has them, and a steering vector moves them as adding it in transformers does."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import runtime_py
from conftest import run_cli
from sae_oracle import hf_site, jumprelu, random_sae, topk_sets, write_gemma_scope_2

WIDTH, K = 16384, 16
TEXT = "The quick brown fox jumps over the lazy dog, and the capital of France is Paris."


@pytest.fixture(scope="module")
def real_sae(real_model, hf_real, tmp_path_factory):
    c = real_model.config
    layer = c.num_layers // 2
    ids = real_model.tokenizer.encode(TEXT)
    x, logits = hf_site(hf_real, "resid_post", layer, torch.tensor([ids]))
    # the typical position's norm (<bos>'s, an attention sink, is far larger)
    params = random_sae(c.hidden_size, WIDTH, seed=1, scale=float(np.median(np.sqrt((x ** 2).mean(1)))))
    root = tmp_path_factory.mktemp("real-sae")
    path = write_gemma_scope_2(root, "resid_post", layer, params)
    return layer, ids, x, logits, params, path


@pytest.fixture(scope="module")
def real_sae_onnx(real_sae, tmp_path_factory):
    out = tmp_path_factory.mktemp("real-sae-onnx") / "onnx"
    status, _ = run_cli(["--target", "onnx", "--quant", "fp32", "--sae", str(real_sae[-1]), "--sae-k", str(K),
                         "--out", str(out), "--no-validate"])
    assert status == 0
    return runtime_py.load(out)


@pytest.fixture(scope="module")
def real_sae_litert(real_sae, tmp_path_factory):
    """fp32 .tflite, one prefill length and a short context (the sae_* signatures double the conversion)."""
    out = tmp_path_factory.mktemp("real-sae-litert") / "litert"
    status, _ = run_cli(["--target", "litert", "--quant", "fp32", "--sae", str(real_sae[-1]), "--sae-k", str(K),
                         "--prefill", "32", "--context", "256", "--out", str(out), "--no-validate"])
    assert status == 0
    return runtime_py.load(out)


def pytest_generate_tests(metafunc):
    """The LiteRT half (`real_sae_litert`) converts the real model with twice the signatures (~140 s of CI's 12
    minutes): it ran once (README, Gemma Scope on LiteRT) and runs with `pytest --real-litert-sae`; the tiny LiteRT
    SAE tests (test_sae_litert.py) hold the same checks against the same numpy reference in every run."""
    if "artifact" in metafunc.fixturenames:
        formats = ["onnx", "litert"] if metafunc.config.getoption("real_litert_sae") else ["onnx"]
        metafunc.parametrize("artifact", formats, indirect=True)


@pytest.fixture
def artifact(request):
    return request.param, request.getfixturevalue(f"real_sae_{request.param}")


def test_real_top_k_features_match_numpy_on_transformers(real_sae, artifact):
    layer, ids, x, _, params, _ = real_sae
    fmt, m = artifact
    want = jumprelu(params, x)
    (got,) = m.features(ids)
    assert got["hook"] == f"model.layers.{layer}.output"
    assert (want > 0).sum(1).min() >= K            # every position has k features firing: the sets are full
    assert [set(p["indices"]) for p in got["positions"]] == topk_sets(want, K)
    err = max(np.abs(np.array(p["values"]) - row[p["indices"]]).max() for p, row in zip(got["positions"], want))
    print(f"\n{fmt}: SAE top-{K} activations vs numpy on transformers: max |diff| {err:.2e}")
    assert err < 1e-4, err


def test_real_zero_steering_keeps_the_logits_and_steering_moves_them_as_transformers(real_sae, artifact, hf_real,
                                                                                    request):
    layer, ids, _, hf_logits, params, _ = real_sae
    fmt, m = artifact
    base = m.logits(ids)
    if fmt == "onnx":          # against the artifact without SAEs; explicit zeros are the default's
        unchanged = np.abs(base - runtime_py.load(request.getfixturevalue("real_onnx")).logits(ids)).max()
        assert np.array_equal(base, m.logits(ids, steer={0: 0.0}))
    else:                      # the plain signatures against the SAE ones with a zero vector
        unchanged = np.abs(base - m.logits(ids, steer={0: 0.0})).max()
    assert unchanged < 1e-4
    steer = {11: 3.0, 4097: -2.0}
    vec = 3.0 * params["w_dec"][11] - 2.0 * params["w_dec"][4097]
    _, want = hf_site(hf_real, "resid_post", layer, torch.tensor([ids]), add=vec)
    got = m.logits(ids, steer=steer)
    moved = np.abs(want - hf_logits).max()
    print(f"\n{fmt}: zero steering vs the artifact without SAEs: {unchanged:.2e}; unsteered vs transformers "
          f"{np.abs(base - hf_logits).max():.2e}; steering moves transformers' logits by up to {moved:.2f}, the "
          f"steered artifact is {np.abs(got - want).max():.2e} from them")
    assert moved > 1.0
    # the steered artifact is as far from steered transformers as the unsteered one is from transformers
    assert np.abs(got - want).max() < max(2 * np.abs(base - hf_logits).max(), 1e-3)
