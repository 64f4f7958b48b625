"""Vision-language `.litertlm` bundles (issue #18) run, unchanged, by the LiteRT-LM engine (litert_lm 0.18.1: an
Engine with a vision backend, a message holding an image) and by runtime_py, against transformers' model on the
same ids and pixels. Tiny random Gemma 3 / ShieldGemma 2 models with the real marker ids and the bundled 270M
tokenizer (the engine finds the image markers by their pieces), 48 px images, 16 rows per image, a sliding window
of 8: every image block is longer than the window. Images are pre-sized PNGs (resized as runtime_py.images
does), so the engine's own stb resize passes them through unchanged."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import vision_oracle as vo
from export.converters.litert.bundle import BUNDLE, build_litertlm, export_litertlm
from export.data.images import bundled_images
from export.models.checkpoints import load_model

STEPS = 16
PREFILL, CONTEXT = 64, 128
SIZES = {"gemma3-litert": (PREFILL, CONTEXT), "shieldgemma2-litert": (192, 256),    # its prompts: ~180 tokens
         "paligemma2-litert": (PREFILL, CONTEXT)}        # 49 rows per 42 px image, 53 tokens with CAPTION
TEXT = "Describe this image in detail please."
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


def _png(tmp_path_factory, size: int):
    """A bundled image, resized to the model's size as runtime_py.images (transformers' PIL processor) does."""
    from runtime_py.images import load_image
    path = tmp_path_factory.mktemp("png") / "image.png"
    Image.fromarray(load_image(bundled_images()[0]["file"])).resize((size, size), Image.BILINEAR).save(path)
    return path


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    return _png(tmp_path_factory, vo.LITERT["image_size"])


@pytest.fixture(scope="module")
def pali_png(tmp_path_factory):
    return _png(tmp_path_factory, vo.image_size(vo.build("paligemma2-litert")))


def _types(m, ids):
    """token_type_ids as the processor gives them: Gemma 3 1 on the image tokens; PaliGemma 0 (all prefix)."""
    return [0] * len(ids) if m.vision.kind == "paligemma" else [int(t == vo.LITERT["image"]) for t in ids]


def _reference(m, ref, ids, png, n=STEPS):
    pix = torch.from_numpy(m.vision.pixels([str(png)]))
    return vo.hf_generate(ref, ids, _types(m, ids), pix, n), pix


def _text(m, ids):
    """The text of `ids` up to the first stop token (what the engine answers)."""
    stops = [i for i, t in enumerate(ids) if t in m.tokenizer.stop_ids]
    return m.tokenizer.decode(ids[:stops[0] if stops else None])


def _engine(bundle, png, text, cache):
    """The LiteRT-LM engine's greedy answer to one user message: the image, then `text`."""
    import litert_lm
    engine = litert_lm.Engine(str(bundle), backend=litert_lm.Backend.CPU(), vision_backend=litert_lm.Backend.CPU(),
                              cache_dir=str(cache))
    try:
        conv = engine.create_conversation(max_output_tokens=STEPS)
        reply = conv.send_message({"role": "user", "content": [{"type": "image", "path": str(png)},
                                                               {"type": "text", "text": text}]})
        conv.close()
        return str(reply.contents)
    finally:
        engine.close()


def _chat(m):
    return m.vision.chat_ids(m.tokenizer, [{"role": "user", "content": [{"type": "image", "image": "unused"},
                                                                          {"type": "text", "text": TEXT}]}])[0]


def test_litert_lm_engine_answers_with_transformers_greedy_tokens(bundles, png, tmp_path):
    import runtime_py
    ref, _, folder = bundles["gemma3-litert"]
    m = runtime_py.load(folder / BUNDLE)
    ids = _chat(m)
    assert sum(t == vo.LITERT["image"] for t in ids) > ref.config.text_config.sliding_window
    want_text = _text(m, _reference(m, ref, ids, png)[0])
    assert _engine(folder / BUNDLE, png, TEXT, tmp_path) == want_text and len(want_text) > 10


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
    held = _text(m, m.generate(ids, STEPS, images=[str(pali_png)], stop_ids=()).token_ids)
    assert _engine(folder / BUNDLE, pali_png, CAPTION, tmp_path) == held and len(held) > 10
    pix = torch.from_numpy(m.vision.pixels([str(pali_png)]))
    first = m.backend.stepper(len(ids), features=m.image_features([str(pali_png)]))(ids, 0)
    assert np.abs(first - vo.hf_logits(ref, ids, _types(m, ids), pix)[-1].numpy()).max() > 1e-2


@pytest.mark.parametrize("where", ["bundle", "folder"])
def test_runtime_py_runs_the_bundle_like_transformers(bundles, png, where):
    import runtime_py
    ref, _, folder = bundles["gemma3-litert"]
    m = runtime_py.load(folder / BUNDLE if where == "bundle" else folder)
    ids = _chat(m)
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
    ids = _chat(m)
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


@pytest.fixture(scope="module", params=["int8", "int4"])
def quantized(request, real_tokenizer_proto, tmp_path_factory):
    """(transformers model, the export folder) of the tiny Gemma 3 with widths divisible by 32 (int4 blocks) and
    the all-zero padding row transformers gives a random model, bundled with `recipe` (encoder: int8)."""
    ref = vo.build("gemma3-litert32")
    assert not ref.get_input_embeddings().weight[0].any()
    root = tmp_path_factory.mktemp(f"litert-{request.param}")
    loaded = load_model(vo.save_folder(ref, root / "hf", tokenizer=real_tokenizer_proto))
    return ref, export_litertlm(loaded, root / "out", request.param, (PREFILL,), CONTEXT)


def test_quantized_bundles_load_run_and_keep_the_zero_row(quantized, png, tmp_path):
    """int8 / int4 decoder + int8 encoder: the engine answers with runtime_py's greedy text on the same bundle;
    the zero row, whose scale ai-edge-quantizer made 0 (XNNPACK refuses it) and the export made positive,
    still embeds to zeros and scores 0; the int8 encoder's rows within validate's bound of transformers'."""
    import runtime_py
    from export.validate_vision import VISION_FEATURE_ERROR, relative_rms
    ref, folder = quantized
    m = runtime_py.load(folder / BUNDLE)
    assert m.vision is not None and m.manifest["vision"]["quant"] == "int8"
    ids = _chat(m)
    got = _text(m, m.generate(ids, STEPS, images=[str(png)], stop_ids=()).token_ids)
    assert _engine(folder / BUNDLE, png, TEXT, tmp_path) == got and len(got) > 10
    assert not m.backend._embedder(token_ids=np.zeros((1, 1), np.int32))["embeddings"].any()
    assert m.backend.stepper(len(ids), features=m.image_features([str(png)]))(ids, 0)[0] == 0.0
    with torch.no_grad():
        rows = ref.model.get_image_features(pixel_values=torch.from_numpy(m.vision.pixels([str(png)])))
    rows = np.asarray(getattr(rows, "pooler_output", rows)).reshape(1, vo.LITERT["tokens"], -1)
    assert relative_rms(m.image_features([str(png)]), rows) < VISION_FEATURE_ERROR["int8"]


def test_a_consumed_model_gives_the_same_bundle_and_is_freed(quantized, tmp_path, monkeypatch):
    """consume=True (the CLI without --validate): the exporter frees the float model's weights before quantizing
    (all on the meta device afterwards, the language model's already while the vision encoder converts), and the
    bundle is byte for byte the one exported with the model kept."""
    import export.converters.litert.vision as vision
    _, folder = quantized
    recipe = json.loads((folder / "manifest.json").read_text())["recipe"]
    loaded = load_model(folder.parent / "hf")            # the same source: the bundle's uuid is derived from it
    lm, convert, seen = loaded.model.language_model, vision.convert_to_tflite, {}

    def spy(signatures, composites_of, into, name, r, flags=None):
        seen[name] = {p.device.type for p in lm.parameters()}
        return convert(signatures, composites_of, into, name, r, flags)
    monkeypatch.setattr(vision, "convert_to_tflite", spy)
    out = export_litertlm(loaded, tmp_path / "out", recipe, (PREFILL,), CONTEXT, consume=True)
    assert seen[vision.DECODER] == seen[vision.EMBEDDER] == {"cpu"} and seen[vision.ENCODER] == {"meta"}
    assert {t.device.type for t in (*loaded.model.parameters(), *loaded.model.buffers())} == {"meta"}
    assert (out / BUNDLE).read_bytes() == (folder / BUNDLE).read_bytes()


def test_validate_checks_a_litert_vision_artifact(bundles, quantized, real_tokenizer_proto, tmp_path):
    """validate on LiteRT vision exports: the encoder's rows against the reference's, each prompt's last logits
    and the teacher-forced decode steps against the simulated recipe (prefill gives no other logits), greedy
    tokens; PaliGemma fp32 exactly. Against another model's weights the same artifact fails."""
    from export.validate import validate
    pali = validate(bundles["paligemma2-litert"][2])
    assert pali["passed"] and "prefill" not in pali["conversion"] and pali["greedy_match_tokens"] == 16
    assert pali["conversion"]["decode"]["max_abs_logit_diff"] < 1e-4 and pali["conversion"]["decode"]["positions"] > 2
    ref, folder = quantized
    assert validate(folder)["passed"]
    other = vo.save_folder(vo.build("gemma3-litert32", seed=1), tmp_path / "other", tokenizer=real_tokenizer_proto)
    report = validate(folder, str(other))
    assert not report["passed"] and any("decode" in f for f in report["conversion"]["failures"])
