"""`export --sae` on LiteRT (`--target litert`, `--target android`): the sae_prefill_{T} / sae_decode signatures'
top-k SAE features match the published JumpReLU equations (numpy, sae_oracle) on transformers' activations; a zero
steering vector leaves the logits as the plain signatures have them; a steering vector moves them as adding it in
transformers does; LiteRT-LM runs the .litertlm unchanged."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch

import runtime_py
from conftest import check_features_cli, run_cli
from oracle import LITERT_CONTEXT, LITERT_PREFILL
from sae_oracle import check_features, hf_site, jumprelu, site_saes, topk_sets

K, WIDTH = 8, 384      # as wide as the tiny vocabulary: each encoder has the table's shape, as the LM head does
SITES = (("resid_post", 1), ("attn_out", 2), ("mlp_out", 0))
SHAPE = ["--prefill", ",".join(map(str, LITERT_PREFILL["gemma3"])), "--context", str(LITERT_CONTEXT), "--no-validate",
         "--sae-k", str(K)]


@pytest.fixture(scope="module")
def exported(tiny_hf, tmp_path_factory):
    """The tiny Gemma 3 as fp32 `--target litert` with three SAEs (resid_post of layer 1, attn_out of 2, mlp_out of 0),
    and as an fp32 `--target android` bundle with the first SAE's encoder int8."""
    hf = tiny_hf("gemma3", tokenizer=True)
    root = tmp_path_factory.mktemp("sae-litert")
    params, paths = site_saes(hf.ref, root, SITES, WIDTH)
    outs = {"litert": root / "litert", "android": root / "android"}
    status, _ = run_cli(["--target", "litert", "--model", str(hf.path), "--out", str(outs["litert"]), *SHAPE,
                         *[f for p in paths for f in ("--sae", str(p))]])
    assert status == 0
    status, _ = run_cli(["--target", "android", "--quant", "fp32", "--model", str(hf.path), "--out",
                         str(outs["android"]), *SHAPE, "--sae", str(paths[0]), "--sae-encoder", "int8"])
    assert status == 0
    return hf, params, paths, outs


def _ids():
    return [2] + [int(i) for i in np.random.default_rng(4).integers(5, 384, 20)]


def test_features_match_the_numpy_jumprelu_on_transformers(exported):
    hf, params, _, outs = exported
    manifest = json.loads((outs["litert"] / "manifest.json").read_text())
    assert manifest["signatures"] == ["prefill_8", "prefill_16", "decode", "sae_prefill_8", "sae_prefill_16",
                                      "sae_decode"]
    m = runtime_py.load(outs["litert"])
    ids = _ids()
    check_features(hf.ref, m.features(ids), params, SITES, ids, K)


def test_zero_steering_leaves_the_logits_and_steering_moves_them_as_transformers(exported):
    hf, params, _, outs = exported
    m = runtime_py.load(outs["litert"])
    ids = _ids()
    base = m.logits(ids)                                   # the plain signatures
    _, hf_logits = hf_site(hf.ref, "resid_post", 1, torch.tensor([ids]))
    assert np.abs(base - hf_logits).max() < 1e-4
    zero = m.logits(ids, steer=[{5: 0.0}, None, None])     # the SAE signatures, a zero vector fed
    assert np.abs(zero - base).max() < 1e-6
    for n, (site, layer) in enumerate(SITES):
        vec = 4.0 * params[n]["w_dec"][3] - 2.0 * params[n]["w_dec"][11]
        _, want = hf_site(hf.ref, site, layer, torch.tensor([ids]), add=vec)
        got = m.logits(ids, steer=[{3: 4.0, 11: -2.0} if i == n else None for i in range(len(SITES))])
        assert np.abs(want - hf_logits).max() > 1e-2          # it does move them
        assert np.abs(got - want).max() < 1e-4


@pytest.mark.parametrize("n", range(len(SITES)))
def test_steered_decode_steps_follow_the_steered_reference(exported, n):
    """Through sae_prefill_{T} then sae_decode (each site's tap in the one-slot decode graph too: decode_write),
    teacher-forced: every step's logits within 1e-4 of transformers with the vector added at the site."""
    hf, params, _, outs = exported
    m = runtime_py.load(outs["litert"])
    site, layer = SITES[n]
    seq, prompt = _ids(), 11                    # a prompt over both prefill lengths, then 10 decode steps
    vec = 6.0 * params[n]["w_dec"][9]
    _, want = hf_site(hf.ref, site, layer, torch.tensor([seq]), add=vec)
    _, plain = hf_site(hf.ref, site, layer, torch.tensor([seq]))
    step = m.backend.stepper(len(seq), extra=m.sae.steer_inputs([{9: 6.0} if i == n else None
                                                                 for i in range(len(SITES))]))
    got = [step(seq[:prompt], 0)] + [step([t], pos) for pos, t in enumerate(seq[prompt:], prompt)]
    assert np.abs(want[prompt - 1:] - plain[prompt - 1:]).max() > 1e-2        # it does move them
    assert np.abs(np.array(got) - want[prompt - 1:]).max() < 1e-4


def test_steered_generation_follows_the_steered_reference(exported):
    hf, params, _, outs = exported
    m = runtime_py.load(outs["litert"])
    ids = _ids()[:11]
    vec = 6.0 * params[0]["w_dec"][9]
    seq = list(ids)
    for _ in range(10):                 # transformers, greedy, the vector added at layer 1 at every position
        _, logits = hf_site(hf.ref, "resid_post", 1, torch.tensor([seq]), add=vec)
        seq.append(int(np.argmax(logits[-1])))
    assert m.generate(ids, max_new_tokens=10, stop_ids=[], steer=[{9: 6.0}, None, None]).token_ids == seq[len(ids):]
    assert seq[len(ids):] != m.generate(ids, max_new_tokens=10, stop_ids=[]).token_ids   # steering changed them


def test_litert_lm_runs_the_bundle_unchanged(exported, tmp_path):
    """Google's LiteRT-LM engine runs the SAE-carrying .litertlm (greedy, CPU) as runtime_py runs its plain
    signatures, for a prompt past the sliding window over both prefill lengths."""
    import litert_lm
    _, _, _, outs = exported
    bundle = outs["android"] / "model.litertlm"
    ours = runtime_py.load(outs["android"])
    engine = litert_lm.Engine(str(bundle), backend=litert_lm.Backend.CPU(), max_num_tokens=LITERT_CONTEXT,
                              cache_dir=str(tmp_path), activation_data_type=litert_lm.ActivationDataType.FLOAT32)
    try:
        for text in ["The quick brown fox jumps over the lazy dog",
                     "Yes, no, maybe. Is this a question? Yes it is. No it is not. Hello world! The old cat"]:
            session = engine.create_session(apply_prompt_template=False,
                                            sampler_config=litert_lm.SamplerConfig(top_k=1, temperature=0.0))
            session.run_prefill([text])
            assert session.run_decode().texts == [ours.generate(text, max_new_tokens=LITERT_CONTEXT).text], text
    finally:
        engine.close()


def test_int8_encoder_in_the_bundle(exported, tmp_path):
    """The bundle's encoder is int8 (its FULLY_CONNECTED weight), the model fp32; its top-k agree with the numpy
    JumpReLU on transformers' activations at least as --sae-encoder int8 promises on ONNX (README); the .litertlm
    alone (its decoder rows copied beside it) gives the same features."""
    from export.converters.litert.graph import weight_records
    from runtime_py.litert_backend import read_litertlm
    hf, params, _, outs = exported
    tflite = tmp_path / "model.tflite"
    tflite.write_bytes(read_litertlm(outs["android"] / "model.litertlm")["tflite"])
    dtypes = {dtype for *_, dtype in weight_records(tflite)}
    assert dtypes == {"FLOAT32", "INT8"}, dtypes
    m = runtime_py.load(outs["android"])
    ids = _ids()
    got = m.features(ids)[0]["positions"]
    x, _ = hf_site(hf.ref, "resid_post", 1, torch.tensor([ids]))
    want = topk_sets(jumprelu(params[0], x), K)
    overlap = [len(set(p["indices"]) & w) / max(len(w), 1) for p, w in zip(got, want)]
    print(f"\nint8 encoder: mean top-{K} overlap with the fp32 equations {np.mean(overlap):.3f}")
    assert np.mean(overlap) > 0.8
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copyfile(outs["android"] / "model.litertlm", alone / "model.litertlm")
    shutil.copyfile(outs["android"] / "sae_0_decoder.npy", alone / "sae_0_decoder.npy")
    bundle = runtime_py.load(alone / "model.litertlm")
    assert bundle.features(ids) == m.features(ids)
    assert np.array_equal(bundle.logits(ids, steer={3: 2.0}), m.logits(ids, steer={3: 2.0}))


def test_a_quantized_model_keeps_the_fp32_encoder(exported, tmp_path):
    """The model's recipe (int4) leaves an fp32 encoder alone; check_quantized holds both to their storage."""
    from export.converters.litert.graph import weight_records
    from export.converters.litert.quantize import quantize_tflite
    from export.converters.litert.sae import sae_ops
    from export.models.sae import SaeRequest, load_sae
    from export.quantize.recipes import recipe
    _, _, paths, outs = exported
    request = SaeRequest([load_sae(p) for p in paths], K, "fp32")
    quantize_tflite(outs["litert"] / "model.tflite", tmp_path / "q.tflite", recipe("int4", "litert"), sae=request)
    records = weight_records(tmp_path / "q.tflite")
    own = sae_ops(outs["litert"] / "model.tflite", request)
    assert len(own) == 3 * 3                     # 3 SAEs x their FULLY_CONNECTED in 3 SAE signatures
    is_sae = [any(re.fullmatch(rx, scope) for rx, *_ in own) for scope, *_ in records]
    assert {d for (*_, d), s in zip(records, is_sae) if s} == {"FLOAT32"}
    assert {d for (_, op, head, d), s in zip(records, is_sae) if not s and op == "FULLY_CONNECTED" and not head} \
        == {"INT4"}


def test_features_cli_on_the_bundle_and_refusals(exported, tiny_hf, capsys):
    hf, _, paths, outs = exported
    check_features_cli(outs["android"])
    m = runtime_py.load(outs["android"])
    from export.cli import main
    never = outs["android"].parent / "never"
    embedder = tiny_hf("embeddinggemma", tokenizer=True)
    for argv, message in [(["--target", "android", "--model", str(hf.path), "--sae", str(paths[0]), "--sae-k",
                            str(WIDTH + 1), "--out", str(never)], f"--sae-k {WIDTH + 1}: expected 1..{WIDTH}"),
                          (["--target", "android", "--model", str(embedder.path), "--sae", str(paths[0]), "--out",
                            str(never)], "SAEs read a causal text LM")]:
        capsys.readouterr()
        assert main([*argv, "--json"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not never.exists()
    with pytest.raises(ValueError, match="out of range"):
        m.generate([2, 5], max_new_tokens=2, steer={WIDTH: 1.0})
    with pytest.raises(ValueError, match="no steering input 'sae_1_steer'"):
        m.backend.logits([2, 5], extra={"sae_1_steer": np.zeros(64, np.float32)})
    m.backend.sae = None                         # as a .tflite without SAE signatures
    with pytest.raises(ValueError, match="no SAE signatures"):
        m.backend.logits([2, 5], extra={"sae_0_steer": np.zeros(64, np.float32)})


def test_a_vocabulary_wide_encoder_is_not_taken_for_the_head(exported, tmp_path):
    """The SAEs here are as wide as the vocabulary: their encoders have the table's shape, by which the LM head is
    recognised where its output is unnamed (Gemma 2's soft-capped head). A per-weight plan (every weight int8) with
    the encoders fp32 is stored as asked: the encoders stay fp32 and the head is the plan's table, once per
    signature that computes logits."""
    from export.converters.litert.graph import weight_records
    from export.converters.litert.quantize import quantize_tflite
    from export.converters.litert.sae import sae_ops
    from export.models.checkpoints import load_model
    from export.models.sae import SaeRequest, load_sae
    from export.quantize.auto import units
    from export.quantize.recipes import planned
    hf, _, paths, outs = exported
    loaded = load_model(hf.path)
    r = planned({n: "int8" for u in units(loaded.model, "litert") for n in u.names}, "litert")
    request = SaeRequest([load_sae(p) for p in paths], K, "fp32")
    src = outs["litert"] / "model.tflite"
    quantize_tflite(src, tmp_path / "q.tflite", r, loaded.model, sae=request)
    own = sae_ops(src, request)
    records = weight_records(tmp_path / "q.tflite")
    is_sae = [any(re.fullmatch(rx, scope) for rx, *_ in own) for scope, *_ in records]
    assert {d for (*_, d), s in zip(records, is_sae) if s} == {"FLOAT32"}
    assert {d for (*_, d), s in zip(records, is_sae) if not s} == {"INT8"}
    from ai_edge_litert.interpreter import Interpreter
    signatures = Interpreter(model_path=str(src)).get_signature_list()
    heads = [head for (*_, head, _), s in zip(records, is_sae) if not s and head]
    assert len(heads) == sum("logits" in sig["outputs"] for sig in signatures.values()), signatures
