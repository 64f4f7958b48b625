"""`export --sae` on ONNX: the artifact's top-k SAE features per position match the published JumpReLU equations
(numpy, sae_oracle) on transformers' activations; a zero steering input leaves the logits as they are; a
steering vector moves them as adding it in transformers does; onnxruntime-genai runs the folder unchanged."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import runtime_py
from conftest import check_features_cli, run_cli
from oracle import genai_greedy, hf_greedy
from sae_oracle import check_features, hf_site, site_saes

K, WIDTH = 8, 256
SITES = (("resid_post", 1), ("attn_out", 2), ("mlp_out", 0))


@pytest.fixture(scope="module")
def exported(tiny_hf, tmp_path_factory):
    """The tiny Gemma 3 exported fp32 with three SAEs (resid_post of layer 1, attn_out of 2, mlp_out of 0), with one SAE
    and an int8 encoder, and without SAEs."""
    hf = tiny_hf("gemma3", tokenizer=True)
    root = tmp_path_factory.mktemp("sae")
    params, paths = site_saes(hf.ref, root, SITES, WIDTH)
    outs = {}
    for name, flags in {"sae": [f for p in paths for f in ("--sae", str(p))],
                        "int8": ["--sae", str(paths[0]), "--sae-encoder", "int8"], "plain": []}.items():
        outs[name] = root / name
        status, _ = run_cli(["--target", "onnx", "--model", str(hf.path), "--out", str(outs[name]),
                             "--no-validate", "--sae-k", str(K), *flags])
        assert status == 0
    return hf, params, outs


def _ids(hf):
    return [2] + [int(i) for i in np.random.default_rng(4).integers(5, 384, 20)]


def test_features_match_the_numpy_jumprelu_on_transformers(exported):
    hf, params, outs = exported
    m = runtime_py.load(outs["sae"])
    ids = _ids(hf)
    check_features(hf.ref, m.features(ids), params, SITES, ids, K)
    manifest = json.loads((outs["sae"] / "manifest.json").read_text())
    assert [e["hook"] for e in manifest["sae"]] == ["model.layers.1.output", "model.layers.2.self_attn.o_proj.input",
                                                   "model.layers.0.post_feedforward_layernorm.output"]


def test_zero_steering_leaves_the_logits_and_steering_moves_them_as_transformers(exported):
    hf, params, outs = exported
    m, plain = runtime_py.load(outs["sae"]), runtime_py.load(outs["plain"])
    ids = _ids(hf)
    base = m.logits(ids)
    _, hf_logits = hf_site(hf.ref, "resid_post", 1, torch.tensor([ids]))
    assert np.abs(base - plain.logits(ids)).max() < 1e-5
    assert np.abs(base - hf_logits).max() < 1e-4
    assert np.array_equal(base, m.logits(ids, steer=[{5: 0.0}, None, None]))       # a zero vector fed explicitly
    for n, (site, layer) in enumerate(SITES):
        steer = {3: 4.0, 11: -2.0}
        vec = 4.0 * params[n]["w_dec"][3] - 2.0 * params[n]["w_dec"][11]
        _, want = hf_site(hf.ref, site, layer, torch.tensor([ids]), add=vec)
        got = m.logits(ids, steer=[steer if i == n else None for i in range(len(SITES))])
        assert np.abs(want - hf_logits).max() > 1e-2          # it does move them
        assert np.abs(got - want).max() < 1e-4


def test_steered_generation_follows_the_steered_reference(exported):
    hf, params, outs = exported
    m = runtime_py.load(outs["int8"])
    ids = _ids(hf)[:8]
    vec = 6.0 * params[0]["w_dec"][9]
    seq = list(ids)
    for _ in range(8):                 # transformers, greedy, the vector added at layer 1 at every position
        _, logits = hf_site(hf.ref, "resid_post", 1, torch.tensor([seq]), add=vec)
        seq.append(int(np.argmax(logits[-1])))
    g = m.generate(ids, max_new_tokens=8, stop_ids=[], steer={9: 6.0})
    assert g.token_ids == seq[len(ids):]


def test_onnxruntime_genai_runs_the_folder_unchanged(exported):
    hf, _, outs = exported
    prompt = torch.tensor([_ids(hf)[:12]])
    assert genai_greedy(outs["sae"], prompt, 30) == hf_greedy(hf.ref, prompt, 18)


def test_int8_encoder_top_k_agreement(exported):
    hf, params, outs = exported
    ids = _ids(hf)
    fp32 = runtime_py.load(outs["sae"]).features(ids)[0]["positions"]
    int8 = runtime_py.load(outs["int8"]).features(ids)[0]["positions"]
    overlap = [len(set(a["indices"]) & set(b["indices"])) / max(len(a["indices"]), 1) for a, b in zip(fp32, int8)]
    assert np.mean(overlap) > 0.8


def test_features_cli_on_the_artifact_and_refusals(exported, capsys):
    hf, _, outs = exported
    check_features_cli(outs["sae"])
    m = runtime_py.load(outs["sae"])
    from export.cli import main
    sae = json.loads((outs["sae"] / "manifest.json").read_text())["sae"][0]["path"]
    for argv, message in [(["features", "--model", str(outs["sae"]), "--sae", sae, "hi"], "carries the SAEs"),
                          (["--target", "onnx", "--model", str(hf.path), "--sae", sae, "--sae-k", str(WIDTH + 1),
                            "--out", str(outs["sae"].parent / "never")], f"--sae-k {WIDTH + 1}: expected 1..{WIDTH}")]:
        capsys.readouterr()
        assert main([*argv, "--json"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not (outs["sae"].parent / "never").exists()
    with pytest.raises(ValueError, match="out of range"):
        m.generate([2, 5], max_new_tokens=2, steer=[{WIDTH: 1.0}, None, None])


def test_a_float16_artifact_takes_steering_in_its_own_type(exported, tmp_path):
    hf, params, outs = exported
    sae = json.loads((outs["sae"] / "manifest.json").read_text())["sae"][0]["path"]
    status, _ = run_cli(["--target", "onnx", "--quant", "fp16", "--model", str(hf.path), "--out", str(tmp_path / "o"),
                         "--no-validate", "--sae", sae, "--sae-k", str(K)])
    assert status == 0
    m, ids = runtime_py.load(tmp_path / "o"), _ids(hf)
    steered = m.logits(ids, steer={3: 4.0})
    vec = 4.0 * params[0]["w_dec"][3]
    _, want = hf_site(hf.ref, "resid_post", 1, torch.tensor([ids]), add=vec)
    assert np.abs(steered - want).max() < 0.05 * np.abs(want).max()
    assert len(m.features(ids)[0]["positions"]) == len(ids)
