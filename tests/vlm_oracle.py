"""Tiny random Gemma 3 vision-language models (transformers' Gemma3ForConditionalGeneration, built offline from a
config object) saved as Hugging Face folders in the layout of the published google/gemma-3-*-it checkpoints,
which is what llama.cpp's converter reads."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers as tf
from safetensors.torch import save_file

# Odd sizes: every width differs from the others, so a transposed or swapped tensor cannot keep its shape; the
# vision width is a multiple of 32 (Q8_0 rows) and the FFN's is not (the converter falls back for fc2).
VISION = dict(hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4, image_size=28,
              patch_size=7, layer_norm_eps=1e-5, vision_use_head=False)
TEXT = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            head_dim=24, vocab_size=300)
IMAGE_MEAN, IMAGE_STD = [0.25, 0.5, 0.75], [0.3, 0.4, 0.6]
# transformers' parameter names -> the published checkpoints' (transformers maps them back when loading)
PUBLISHED = (("model.vision_tower.", "vision_tower.vision_model."), ("model.multi_modal_projector.",
             "multi_modal_projector."), ("model.language_model.", "language_model.model."))


def gemma3_vlm(tokens_per_image: int = 4, seed: int = 0) -> tf.Gemma3ForConditionalGeneration:
    """Every weight random (the soft-embedding norm too, so its stored 1 + w is tested)."""
    cfg = tf.Gemma3Config(vision_config=dict(model_type="siglip_vision_model", **VISION),
                          text_config=dict(model_type="gemma3_text", **TEXT), mm_tokens_per_image=tokens_per_image,
                          boi_token_index=5, eoi_token_index=6, image_token_index=7)
    torch.manual_seed(seed)
    model = tf.Gemma3ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.5 if "norm" in name else 0.08)
    return model


def published_state_dict(model) -> dict[str, torch.Tensor]:
    """The model's tensors under the published checkpoints' names (the LM head is tied: not stored)."""
    out = {}
    for name, t in model.state_dict().items():
        for ours, theirs in PUBLISHED:
            if name.startswith(ours):
                out[theirs + name[len(ours):]] = t.contiguous()
    return out


def save_vlm_folder(model, path: Path) -> Path:
    """config.json, model.safetensors (published names) and preprocessor_config.json (with image_seq_length, as
    published); transformers must read it back as the same model."""
    model.save_pretrained(path)
    save_file(published_state_dict(model), str(path / "model.safetensors"), metadata={"format": "pt"})
    tf.Gemma3ImageProcessorPil(size={"height": VISION["image_size"], "width": VISION["image_size"]},
                               image_mean=IMAGE_MEAN, image_std=IMAGE_STD).save_pretrained(path)
    pre = json.loads((path / "preprocessor_config.json").read_text())
    (path / "preprocessor_config.json").write_text(json.dumps({**pre, "image_seq_length": model.config.mm_tokens_per_image}))
    back = tf.Gemma3ForConditionalGeneration.from_pretrained(path).state_dict()
    assert all(torch.equal(back[n], t) for n, t in model.state_dict().items()), "folder does not read back"
    return path
