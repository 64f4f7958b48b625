"""Our Gemma 3 vision-language ONNX folder run by onnxruntime-genai 0.18, unchanged, with an image: its own
multimodal processor (prompt expansion, image decoding and preprocessing from processor_config.json), its
vision / embedding / decoder pipeline and greedy search, against transformers' model on the same image
(preprocessed by transformers' own image processor) and the same ids. The tiny model has the published
pipeline's shape facts: 256 soft tokens per image and the real marker ids (tests/vision_oracle.GENAI)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf

import vision_oracle as vo
from export.converters.onnx import export_onnx
from export.data.images import bundled_images
from export.models.checkpoints import load_model

STEPS = 32


@pytest.fixture(scope="module")
def genai_model(real_tokenizer_proto, tmp_path_factory):
    root = tmp_path_factory.mktemp("genai_vision")
    ref = vo.build("gemma3-genai")
    src = vo.save_folder(ref, root / "hf", tokenizer=real_tokenizer_proto)
    return ref, load_model(src), root


@pytest.fixture(scope="module")
def genai_folder(genai_model):
    ref, loaded, root = genai_model
    return ref, export_onnx(loaded, root / "onnx", "fp32", 1024)


def _genai(folder, prompt: str, image) -> tuple[list[int], list[int], np.ndarray]:
    """(prompt ids, new tokens, first step's last logits) from onnxruntime-genai."""
    import onnxruntime_genai as og
    model = og.Model(str(folder))
    processor = model.create_multimodal_processor()
    inputs = processor(prompt, images=og.Images.open(str(image)) if image else None)
    ids = inputs["input_ids"].as_numpy().reshape(-1).tolist()
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + STEPS, do_sample=False)
    gen = og.Generator(model, params)
    gen.set_inputs(inputs)
    first = None
    while not gen.is_done():
        gen.generate_next_token()
        if first is None:
            logits = gen.get_output("logits")
            first = logits.reshape(-1, logits.shape[-1])[-1].copy()
    tokens = [int(t) for t in gen.get_sequence(0)][len(ids):]
    del gen, params, inputs, processor, model
    return ids, tokens, first


def _pixels(image, size: int) -> torch.Tensor:
    proc = tf.Gemma3ImageProcessorPil(size={"height": size, "width": size}, do_pan_and_scan=False)
    from PIL import Image
    return proc(images=[Image.open(image).convert("RGB")], return_tensors="pt")["pixel_values"]


def test_onnxruntime_genai_runs_the_folder_with_an_image(genai_folder, real_tokenizer_proto):
    ref, folder = genai_folder
    entry = bundled_images()[0]
    prompt = "<bos>" + entry["prompt"]
    ids, tokens, first = _genai(folder, prompt, entry["file"])
    # the ids genai built are the processor's: ours (runtime_py.vision_prompts, held to transformers' processor)
    import runtime_py
    m = runtime_py.load(folder)
    assert ids == m.vision.prompt_ids(m.tokenizer, entry["prompt"], 1)
    assert ids.count(vo.GENAI["image"]) == vo.GENAI["tokens"] and len(ids) > ref.config.text_config.sliding_window
    pix = _pixels(entry["file"], vo.GENAI["image_size"])
    types = [int(t == vo.GENAI["image"]) for t in ids]
    want = vo.hf_logits(ref, ids, types, pix)[-1].numpy()
    assert np.abs(first - want).max() < 1e-4          # genai's own resize is within 1.2e-7 of PIL's per pixel
    assert tokens == vo.hf_generate(ref, ids, types, pix, STEPS)


def test_onnxruntime_genai_runs_a_text_only_prompt(genai_folder):
    ref, folder = genai_folder
    ids, tokens, first = _genai(folder, "<bos>Hello there, how are you?", None)
    with torch.no_grad():
        want = ref(input_ids=torch.tensor([ids])).logits[0, -1].numpy()
    assert np.abs(first - want).max() < 1e-4
    out = ref.generate(input_ids=torch.tensor([ids]), max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False)
    assert tokens == out[0, len(ids):].tolist()


@pytest.mark.parametrize("name", ["fp16", "int4"])
def test_onnxruntime_genai_runs_other_recipes_with_an_image(genai_model, name):
    """A float16 folder (float16 caches, float16 vision graph) and an int4 one (int8 vision graph) run in
    onnxruntime-genai as they are: its first logits are runtime_py's on the same folder, ids and image."""
    import runtime_py
    from runtime_py.onnx_backend import OnnxBackend
    _, loaded, root = genai_model
    folder = export_onnx(loaded, root / name, name, 1024)
    entry = bundled_images()[0]
    ids, tokens, first = _genai(folder, "<bos>" + entry["prompt"], entry["file"])
    m = runtime_py.load(folder)
    assert ids == m.vision.prompt_ids(m.tokenizer, entry["prompt"], 1) and len(tokens) == STEPS
    backend = OnnxBackend(folder)
    want = backend.logits(ids, backend.encode_images(m.vision.pixels([entry["file"]])))[-1]
    assert np.linalg.norm(first - want) / np.linalg.norm(want) < 1e-3
