"""`--target onnx/web/desktop` for a vision-language model: the three graphs of onnxruntime-genai's split
(vision.onnx, embedding.onnx, model.onnx: the decoder on inputs_embeds), genai_config.json with its vision and
embedding sections (Gemma 3 / ShieldGemma 2: `type` gemma3, which onnxruntime-genai runs; PaliGemma, which it
has no model type for: the same description in manifest.json for runtime_py), processor_config.json, the
tokenizer, and manifest.json with the `vision` facts runtime_py needs to turn images into rows."""
from __future__ import annotations

import json
from pathlib import Path

from runtime_py.contract import EMBEDDING_FILE, IMAGE_FEATURES, INPUTS_EMBEDS, PIXEL_VALUES, VISION_FILE, VISION_KEY

from runtime_py.vision_prompts import IMAGE_SOFT_TOKEN

from ...models.vision_config import GEMMA3
from ...quantize.recipes import Recipe
from ..artifact import staged_dir
from .folder import check, finish_folder, save_model
from .genai_config import genai_config
from .stream import build_quantized
from .vision import build_embedding, build_vision, check_vision_quant, unranked
from .vision_decoder import build_vision_decoder

PROCESSOR_CONFIG = "processor_config.json"

def default_vision_quant(recipe: Recipe) -> str:
    """The vision graph's storage when --vision-quant is not given: float32 beside a float32 decoder, float16
    beside a float16 one, int8 beside a quantized one."""
    if recipe.float32:
        return "fp32"
    return "fp16" if recipe.weight_bits == 16 else "int8"


def vision_facts(vc, quant: str) -> dict:
    """manifest.json `vision`: what runtime_py needs to lay out prompts and preprocess images, the vision
    graph's storage and the two graphs' files."""
    return {**vc.runtime_facts(), "quant": quant, "files": {"vision": VISION_FILE, "embedding": EMBEDDING_FILE}}


def vision_genai_config(vc, context: int) -> dict:
    """genai_config.json of the split: the decoder's description on inputs_embeds plus the vision and embedding
    sections onnxruntime-genai's multimodal pipeline reads."""
    cfg = genai_config(vc.text, context)
    model = cfg["model"]
    model["type"] = "gemma3" if vc.kind == GEMMA3 else None
    model["image_token_id"] = vc.image_token_id
    dec = model["decoder"]
    dec["inputs"] = {INPUTS_EMBEDS: INPUTS_EMBEDS, "input_ids": "input_ids", **{
        k: v for k, v in dec["inputs"].items() if k != "input_ids"}}
    model["vision"] = {"filename": VISION_FILE, "config_filename": PROCESSOR_CONFIG, "inputs": {PIXEL_VALUES: PIXEL_VALUES},
                       "outputs": {IMAGE_FEATURES: IMAGE_FEATURES}}
    model["embedding"] = {"filename": EMBEDDING_FILE,
                          "inputs": {"input_ids": "input_ids", IMAGE_FEATURES: IMAGE_FEATURES},
                          "outputs": {INPUTS_EMBEDS: INPUTS_EMBEDS}}
    return cfg


def processor_config(vc) -> dict:
    """onnxruntime-extensions' image pipeline for Gemma 3 (what onnxruntime-genai's processor reads)."""
    S = vc.vision.image_size
    interpolation = "LINEAR" if vc.resample == "bilinear" else "CUBIC"
    return {"processor": {"name": "gemma_3_image_processing", "transforms": [
        {"operation": {"name": "decode_image", "type": "DecodeImage", "attrs": {"color_space": "RGB"}}},
        {"operation": {"name": "resize", "type": "Resize", "attrs": {
            "interpolation": interpolation, "width": S, "height": S, "keep_aspect_ratio": 0}}},
        {"operation": {"name": "re-scale", "type": "Rescale", "attrs": {"rescale_factor": 1 / 255}}},
        {"operation": {"name": "normalize", "type": "Normalize", "attrs": {
            "mean": list(vc.image_mean), "std": list(vc.image_std)}}},
        {"operation": {"name": "to_channel_first", "type": "Permute3D", "attrs": {"dims": [2, 0, 1]}}},
    ]}}


def export_onnx_vision(loaded, out: str | Path, r: Recipe, context: int, vision_quant: str | None = None) -> Path:
    """Each graph is saved as soon as it is built and let go of, so that only one is held at a time."""
    vc = loaded.config
    quant = check_vision_quant(vision_quant or default_vision_quant(r))
    m, state = loaded.model, loaded.weights
    runtime = vision_genai_config(vc, context)
    extra = {"context_length": context, "kind": "vision_language", VISION_KEY: vision_facts(vc, quant)}
    with staged_dir(out) as tmp:
        decoder, carried = build_quantized(lambda packer: build_vision_decoder(m, context, state, packer), r,
                                           loaded.stored, scratch=tmp)
        save_model(decoder, tmp / "model.onnx")
        del decoder
        embedding, _ = build_quantized(lambda packer: build_embedding(m, state, packer), r,  # the table as the head's
                                       scratch=tmp)
        check(embedding)                     # before unranked: the checker wants the input's shape
        save_model(unranked(embedding), tmp / EMBEDDING_FILE, checked=True)
        del embedding
        vision = build_vision(m, quant)
        save_model(vision, tmp / VISION_FILE)
        del vision
        if vc.kind == GEMMA3:
            (tmp / "genai_config.json").write_text(json.dumps(runtime, indent=2) + "\n")
            (tmp / PROCESSOR_CONFIG).write_text(json.dumps(processor_config(vc), indent=2) + "\n")
        else:
            extra.update(runtime_config=runtime, onnxruntime_genai=(
                f"not supported: onnxruntime-genai has no model type for {vc.kind}; run it with runtime_py"))
        # onnxruntime-genai's Gemma 3 processor looks <image_soft_token> up by name in tokenizer.json
        soft = {vc.image_token_id: IMAGE_SOFT_TOKEN} if vc.kind == GEMMA3 else None
        finish_folder(tmp, loaded, r, context, carried, extra, soft)
    return Path(out)

