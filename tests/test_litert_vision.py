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
from PIL import Image

import vision_oracle as vo
from export.converters.litert.bundle import BUNDLE, build_litertlm, export_litertlm
from export.data.images import bundled_images
from export.models.checkpoints import load_model

STEPS = 16
PREFILL, CONTEXT = 64, 128
SIZES = {"gemma3-litert": (PREFILL, CONTEXT), "shieldgemma2-litert": (192, 256)}    # its prompts: ~180 tokens
TEXT = "Describe this image in detail please."


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
    """A bundled image, resized to the model's 48 px as runtime_py.images (transformers' PIL processor) does."""
    from runtime_py.images import load_image
    path = tmp_path_factory.mktemp("png") / "image.png"
    size = vo.LITERT["image_size"]
    Image.fromarray(load_image(bundled_images()[0]["file"])).resize((size, size), Image.BILINEAR).save(path)
    return path


def _reference(m, ref, ids, png, n=STEPS):
    types = [int(t == vo.LITERT["image"]) for t in ids]
    pix = torch.from_numpy(m.vision.pixels([str(png)]))
    return vo.hf_generate(ref, ids, types, pix, n), pix


def _chat(m):
    return m.vision.chat_ids(m.tokenizer, [{"role": "user", "content": [{"type": "image", "image": "unused"},
                                                                          {"type": "text", "text": TEXT}]}])[0]


def test_litert_lm_engine_answers_with_transformers_greedy_tokens(bundles, png, tmp_path):
    import litert_lm

    import runtime_py
    ref, _, folder = bundles["gemma3-litert"]
    m = runtime_py.load(folder / BUNDLE)
    ids = _chat(m)
    assert sum(t == vo.LITERT["image"] for t in ids) > ref.config.text_config.sliding_window
    want, _ = _reference(m, ref, ids, png)
    stops = [i for i, t in enumerate(want) if t in m.tokenizer.stop_ids]
    want_text = m.tokenizer.decode(want[:stops[0] if stops else None])
    engine = litert_lm.Engine(str(folder / BUNDLE), backend=litert_lm.Backend.CPU(),
                              vision_backend=litert_lm.Backend.CPU(), cache_dir=str(tmp_path))
    try:
        conv = engine.create_conversation(max_output_tokens=STEPS)
        reply = conv.send_message({"role": "user", "content": [{"type": "image", "path": str(png)},
                                                               {"type": "text", "text": TEXT}]})
        got = str(reply.contents)
        conv.close()
    finally:
        engine.close()
    assert got == want_text and len(want_text) > 10


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


def test_shieldgemma2_probabilities_with_the_shared_image_prefix(bundles, png):
    import runtime_py
    ref, _, folder = bundles["shieldgemma2-litert"]
    m = runtime_py.load(folder / BUNDLE)
    got = m.classify_image(str(png))
    names, prompts = m.vision.policy_prompts(m.tokenizer)
    pix = torch.from_numpy(m.vision.pixels([str(png)]))
    for name, ids in zip(names, prompts):
        logits = vo.hf_logits(ref, ids, [int(t == vo.LITERT["image"]) for t in ids], pix)[-1]
        want = torch.softmax(logits[[vo.LITERT["yes"], vo.LITERT["no"]]], 0)[0].item()
        assert abs(got[name] - want) < 1e-5, name


def test_a_tokenizer_without_the_models_image_markers_is_refused(bundles, tmp_path):
    import shutil

    from oracle import tiny_tokenizer
    _, loaded, _ = bundles["gemma3-litert"]
    from export.converters.litert import export_litert
    folder = export_litert(loaded, tmp_path / "lt", "fp32", (PREFILL,), CONTEXT)
    (folder / "tokenizer.model").write_bytes(tiny_tokenizer())
    with pytest.raises(ValueError, match=r"tokenizer\.model: the tokenizer's <start_of_image> is id"):
        build_litertlm(folder, tmp_path / "x.litertlm")
    assert not (tmp_path / "x.litertlm").exists()
    shutil.rmtree(folder)
