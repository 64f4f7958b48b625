"""Gemma Scope SAEs on the reference model: both published layouts load, the JumpReLU activations at each site
match the published equations (numpy, sae_oracle) on transformers' own activations, steering moves the logits as
adding the vector in transformers does, and what does not fit the model is refused with one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import run_cli
from export.models.checkpoints import load_model
from export.models.sae import check_sae, features, load_sae
from oracle import tokens
from sae_oracle import hf_site, jumprelu, random_sae, topk_sets, write_gemma_scope_1, write_gemma_scope_2

LAYER, WIDTH = 1, 256


@pytest.fixture(scope="module")
def tiny(tiny_hf):
    hf = tiny_hf("gemma3", tokenizer=True)
    return hf, load_model(hf.path)


def _params(hf, site, seed=0):
    x, _ = hf_site(hf.ref, site, LAYER, tokens(9, vocab=384))
    return random_sae(x.shape[1], WIDTH, seed, scale=float(np.sqrt((x ** 2).mean())))


@pytest.mark.parametrize("site", ["resid_post", "attn_out", "mlp_out"])
def test_activations_and_steering_match_transformers(tiny, tmp_path, site):
    hf, loaded = tiny
    toks = tokens(9, vocab=384)
    p = _params(hf, site)
    sae = load_sae(write_gemma_scope_2(tmp_path, site, LAYER, p))
    check_sae(sae, loaded.config)
    assert (sae.site, sae.layer, sae.width) == (site, LAYER, WIDTH)
    x, logits_hf = hf_site(hf.ref, site, LAYER, toks)
    logits, (acts,) = features(loaded.model, [sae], toks[0].tolist())
    want = jumprelu(p, x)
    assert (want > 0).sum(1).min() >= 1            # features fire, the test can fail
    assert np.abs(acts.numpy() - want).max() < 1e-4
    assert topk_sets(acts.numpy(), 8) == topk_sets(want, 8)
    assert np.abs(logits.numpy() - logits_hf).max() < 1e-4
    steer = {3: 2.0, 7: -1.5}
    vec = 2.0 * p["w_dec"][3] - 1.5 * p["w_dec"][7]
    x2, logits_hf2 = hf_site(hf.ref, site, LAYER, toks, add=vec)
    logits2, (acts2,) = features(loaded.model, [sae], toks[0].tolist(), [steer])
    assert np.abs(logits_hf2 - logits_hf).max() > 1e-2          # the steering moves the logits
    assert np.abs(logits2.numpy() - logits_hf2).max() < 1e-4
    assert np.abs(acts2.numpy() - jumprelu(p, x2)).max() < 1e-4


def test_gemma_scope_1_npz_loads_as_the_same_sae(tiny, tmp_path):
    hf, loaded = tiny
    p = _params(hf, "resid_post")
    one = load_sae(write_gemma_scope_1(tmp_path, "res", LAYER, p))
    two = load_sae(write_gemma_scope_2(tmp_path, "resid_post", LAYER, p))
    assert (one.site, one.layer) == (two.site, two.layer) == ("resid_post", LAYER)
    for k in ("w_enc", "w_dec", "b_enc", "b_dec", "threshold"):
        assert np.array_equal(getattr(one, k), p[k])
    assert load_sae(write_gemma_scope_1(tmp_path, "att", 0, _params(hf, "attn_out"))).site == "attn_out"


def test_features_cli_on_a_checkpoint_lists_the_top_k(tiny, tmp_path):
    hf, loaded = tiny
    p = _params(hf, "resid_post")
    path = write_gemma_scope_2(tmp_path, "resid_post", LAYER, p)
    text = "hello world"
    status, out = run_cli(["features", "--model", str(hf.path), "--sae", str(path), "--k", "4", text])
    assert status == 0
    ids = loaded.tokenizer.encode(text)
    x, _ = hf_site(hf.ref, "resid_post", LAYER, torch.tensor([ids]))
    want = jumprelu(p, x)
    (sae,) = out["saes"]
    assert sae["hook"] == f"model.layers.{LAYER}.output"
    assert [set(pos["indices"]) for pos in sae["positions"]] == topk_sets(want, 4)
    assert [pos["token_id"] for pos in sae["positions"]] == ids
    for pos, row in zip(sae["positions"], want):
        assert np.allclose(pos["values"], row[pos["indices"]], atol=1e-4)


def _bad(tmp_path, hf, **change):
    p = _params(hf, "resid_post")
    site, layer, cfg = change.pop("site", "resid_post"), change.pop("layer", LAYER), change.pop("config", {})
    p.update(change)
    return write_gemma_scope_2(tmp_path, site, layer, p, **cfg)


@pytest.mark.parametrize("case, message", [
    ("d_model", "SAE d_in 32 != the model's hidden_size 64 at model.layers.1.output"),
    ("layer", "SAE for layer 7, the model has"),
    ("transcoder", "a transcoder"),
    ("shape", "threshold has shape [255], expected [256]"),
])
def test_an_sae_that_does_not_fit_is_refused_in_one_line(tiny, tmp_path, capsys, case, message):
    hf, _ = tiny
    rng = np.random.default_rng(0)
    change = {"d_model": dict(w_enc=rng.standard_normal((32, WIDTH)).astype(np.float32),
                              w_dec=np.zeros((WIDTH, 32), np.float32), b_dec=np.zeros(32, np.float32)),
              "layer": dict(layer=7),
              "transcoder": dict(config={"hf_hook_point_in": f"model.layers.{LAYER}.pre_feedforward_layernorm.output",
                                         "hf_hook_point_out": f"model.layers.{LAYER}.post_feedforward_layernorm.output"}),
              "shape": dict(threshold=np.ones(WIDTH - 1, np.float32))}[case]
    path = _bad(tmp_path, hf, **change)
    from export.cli import main
    assert main(["features", "--model", str(hf.path), "--sae", str(path), "hi"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
