"""Vision-language `.litertlm` bundles (issue #18) run, unchanged, by the LiteRT-LM engine (litert_lm 0.18.1: an
Engine with a vision backend, a message holding an image) and by runtime_py, against transformers' model on the
same ids and pixels. Tiny random Gemma 3 / ShieldGemma 2 models with the real marker ids and the bundled 270M
tokenizer (the engine finds the image markers by their pieces), 48 px images, 16 rows per image, a sliding window
of 8: every image block is longer than the window. Images are pre-sized PNGs (resized as runtime_py.images
does), so the engine's own stb resize passes them through unchanged."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vision_oracle as vo
from export.converters.litert.bundle import BUNDLE, export_litertlm
from export.models.checkpoints import load_model
from litert_vision_common import CONTEXT, PREFILL, STEPS, TEXT, answer_text, chat_ids, engine_answer, sized_png

SIZES = {"gemma3-litert": (PREFILL, CONTEXT), "shieldgemma2-litert": (192, 256),    # its prompts: ~180 tokens
         "paligemma2-litert": (PREFILL, CONTEXT)}        # 49 rows per 42 px image, 53 tokens with CAPTION
CAPTION = "caption en"


@pytest.fixture(scope="module")
def bundles(real_tokenizer_proto, tmp_path_factory):
    """{arch: (transformers model, LoadedModel, the export folder with model.litertlm)}."""
    root, out = tmp_path_factory.mktemp("litert_vision"), {}
    for arch, (prefill, context) in SIZES.items():
        ref = vo.build(arch)
        loaded = load_model(vo.save_folder(ref, root / f"hf-{arch}", tokenizer=real_tokenizer_proto))
        out[arch] = ref, loaded, export_litertlm(loaded, root / arch, "fp32", (prefill,), context)
    return out


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    return sized_png(tmp_path_factory, vo.LITERT["image_size"])


@pytest.fixture(scope="module")
def pali_png(tmp_path_factory):
    return sized_png(tmp_path_factory, vo.image_size(vo.build("paligemma2-litert")))


def _types(m, ids):
    """token_type_ids as the processor gives them: Gemma 3 1 on the image tokens; PaliGemma 0 (all prefix)."""
    return [0] * len(ids) if m.vision.kind == "paligemma" else [int(t == vo.LITERT["image"]) for t in ids]


def _reference(m, ref, ids, png, n=STEPS):
    pix = torch.from_numpy(m.vision.pixels([str(png)]))
    return vo.hf_generate(ref, ids, _types(m, ids), pix, n), pix


def test_litert_lm_engine_answers_with_transformers_greedy_tokens(bundles, png, tmp_path):
    import runtime_py
    ref, _, folder = bundles["gemma3-litert"]
    m = runtime_py.load(folder / BUNDLE)
    ids = chat_ids(m)
    assert sum(t == vo.LITERT["image"] for t in ids) > ref.config.text_config.sliding_window
    want_text = answer_text(m, _reference(m, ref, ids, png)[0])
    assert engine_answer(folder / BUNDLE, png, TEXT, tmp_path) == want_text and len(want_text) > 10


def test_paligemma_through_runtime_py_is_transformers_exactly(bundles, pali_png):
    """runtime_py prefills PaliGemma's whole prompt, "\n" included, in one two-way chunk and reads the prefill's
    last-row logits: transformers' prefix-LM (whose prefix is longer than the window) exactly."""
    import runtime_py
    ref, _, folder = bundles["paligemma2-litert"]
    m = runtime_py.load(folder / BUNDLE)
    ids = m.vision.prompt_ids(m.tokenizer, CAPTION, 1)
    assert len(ids) > ref.config.text_config.sliding_window and not m.backend.hold_last
    want, pix = _reference(m, ref, ids, pali_png)
    assert m.generate(ids, STEPS, images=[str(pali_png)], stop_ids=()).token_ids == want
    first = m.backend.stepper(len(ids), features=m.image_features([str(pali_png)]))(ids, 0)
    assert np.abs(first - vo.hf_logits(ref, ids, _types(m, ids), pix)[-1].numpy()).max() < 1e-4


def test_litert_lm_engine_holds_back_paligemmas_last_prompt_token(bundles, pali_png, tmp_path):
    """The engine's known deviation on PaliGemma, asserted as what it is: LiteRT-LM 0.18.1 prefills all but the
    last prompt token ("\n") and feeds that one to its first decode step, so no prefix row sees it and it sees
    only the window on sliding layers. runtime_py doing the same (hold_last) answers with the engine's text, and
    its first logits are not transformers' (the held-back token changes the prefix)."""
    import runtime_py
    ref, _, folder = bundles["paligemma2-litert"]
    m = runtime_py.load(folder / BUNDLE)
    ids = m.vision.prompt_ids(m.tokenizer, CAPTION, 1)
    m.backend.hold_last = True
    held = answer_text(m, m.generate(ids, STEPS, images=[str(pali_png)], stop_ids=()).token_ids)
    assert engine_answer(folder / BUNDLE, pali_png, CAPTION, tmp_path) == held and len(held) > 10
    pix = torch.from_numpy(m.vision.pixels([str(pali_png)]))
    first = m.backend.stepper(len(ids), features=m.image_features([str(pali_png)]))(ids, 0)
    assert np.abs(first - vo.hf_logits(ref, ids, _types(m, ids), pix)[-1].numpy()).max() > 1e-2


@pytest.mark.parametrize("where", ["bundle", "folder"])
def test_runtime_py_runs_the_bundle_like_transformers(bundles, png, where):
    import runtime_py
    ref, _, folder = bundles["gemma3-litert"]
    m = runtime_py.load(folder / BUNDLE if where == "bundle" else folder)
    ids = chat_ids(m)
    want, pix = _reference(m, ref, ids, png)
    assert m.generate(ids, STEPS, images=[str(png)], stop_ids=()).token_ids == want
    with torch.no_grad():                  # the encoder (SigLIP, normalisation folded in) and the adapter's rows
        tower = ref.model.vision_tower(pixel_values=pix).last_hidden_state.numpy()
        rows = ref.model.get_image_features(pixel_values=pix)
    rows = np.asarray(getattr(rows, "pooler_output", rows)).reshape(1, vo.LITERT["tokens"], -1)
    x = (pix.numpy()[0].transpose(1, 2, 0) * 0.5 + 0.5)[None].astype(np.float32)
    (features,) = m.backend._encoder(images=x).values()
    assert np.abs(features - tower).max() < 1e-4
    assert np.abs(m.image_features([str(png)]) - rows).max() < 1e-4


def test_the_image_block_is_two_way_past_the_window(bundles, png):
    """The bundle's decoder honours the mask it is given: fed a causal one over the image, its first logits move
    away from transformers' (whose image rows see each other both ways, on sliding layers too)."""
    import runtime_py
    ref, _, folder = bundles["gemma3-litert"]
    m = runtime_py.load(folder / BUNDLE)
    ids = chat_ids(m)
    types = [int(t == vo.LITERT["image"]) for t in ids]
    pix = torch.from_numpy(m.vision.pixels([str(png)]))
    want = vo.hf_logits(ref, ids, types, pix)[-1].numpy()
    feats = m.image_features([str(png)])
    got = m.backend.stepper(len(ids), features=feats)(ids, 0)
    assert np.abs(got - want).max() < 1e-4
    m.backend.blocks = "causal"
    got = m.backend.stepper(len(ids), features=feats)(ids, 0)
    assert np.abs(got - want).max() > 1e-3


def test_shieldgemma2_probabilities_one_chunk_per_policy(bundles, png):
    import runtime_py
    ref, _, folder = bundles["shieldgemma2-litert"]
    m = runtime_py.load(folder / BUNDLE)
    runs, run = [], m.backend.run
    m.backend.run = lambda runner, *a: runs.append(runner) or run(runner, *a)
    got = m.classify_image(str(png))
    names, prompts = m.vision.policy_prompts(m.tokenizer)
    # every prompt fits the one prefill chunk: each run whole costs one chunk, prefix + rest would cost two
    assert max(map(len, prompts)) <= SIZES["shieldgemma2-litert"][0] and len(runs) == len(prompts)
    pix = torch.from_numpy(m.vision.pixels([str(png)]))
    for name, ids in zip(names, prompts):
        logits = vo.hf_logits(ref, ids, [int(t == vo.LITERT["image"]) for t in ids], pix)[-1]
        want = torch.softmax(logits[[vo.LITERT["yes"], vo.LITERT["no"]]], 0)[0].item()
        assert abs(got[name] - want) < 1e-5, name


def test_a_tokenizer_without_the_models_image_markers_is_refused(bundles, tmp_path):
    """Refused before any conversion (the bundler checks the same again when it bundles a folder)."""
    import dataclasses

    from oracle import tiny_tokenizer
    from runtime_py.tokenizer import Tokenizer
    _, loaded, _ = bundles["gemma3-litert"]
    wrong = dataclasses.replace(loaded, tokenizer=Tokenizer.from_bytes(tiny_tokenizer()))
    with pytest.raises(ValueError, match=r"the tokenizer's <start_of_image> is id"):
        export_litertlm(wrong, tmp_path / "x", "fp32", (PREFILL,), CONTEXT)
    assert not any(tmp_path.iterdir())


def test_validate_checks_a_litert_vision_bundle(bundles):
    """validate on a LiteRT vision export: PaliGemma fp32 exactly (each prompt's last logits and the teacher-forced
    decode steps; prefill gives no other logits), greedy tokens. The quantized bundles: test_litert_vision_quant."""
    from export.validate import validate
    pali = validate(bundles["paligemma2-litert"][2])
    assert pali["passed"] and "prefill" not in pali["conversion"] and pali["greedy_match_tokens"] == 16
    assert pali["conversion"]["decode"]["max_abs_logit_diff"] < 1e-4 and pali["conversion"]["decode"]["positions"] > 2
