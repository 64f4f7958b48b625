"""The vision parity oracle: tiny random transformers models of every seeing Gemma (PaliGemma 1 on Gemma,
PaliGemma 2 on Gemma 2, Gemma 3 multimodal, ShieldGemma 2), built offline from config objects at odd sizes
and saved as Hugging Face folders in either weight layout; their prompts (as the processors lay them out:
token ids and token_type_ids) and transformers' own answers on them. Also the Gemma 3 models llama.cpp's
converter reads (`gemma3_vlm`, `save_vlm_folder`: the published google/gemma-3-*-it layout with a
preprocessor_config.json), from which its text GGUF and mmproj GGUF are written."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers as tf
from safetensors.torch import save_file

VOCAB = 400                                # oracle.tiny_tokenizer's 384 pieces fit
BOI, EOI, IMAGE = 390, 391, 392            # Gemma 3 markers; PaliGemma's <image> is IMAGE too
YES, NO = 17, 23                           # ShieldGemma 2's answer tokens in the tiny vocabulary
# Odd sizes: 42 px / patch 6 = 7 x 7 patches (PaliGemma: 49 tokens per image); Gemma 3: 48 px / patch 4 =
# 12 x 12 patches pooled 3 x 3 to 16 tokens. Sliding windows of 8 are shorter than any image.
SIGLIP = dict(hidden_size=40, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4, layer_norm_eps=1e-6,
              vision_use_head=False)
TEXT = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_attention_heads=4, head_dim=16,
            max_position_embeddings=2048)
TINY_VISION = {
    "paligemma": ("PaliGemmaForConditionalGeneration", lambda: tf.PaliGemmaConfig(
        text_config=tf.GemmaConfig(**TEXT, num_hidden_layers=2, num_key_value_heads=1).to_dict(),
        vision_config=dict(SIGLIP, model_type="siglip_vision_model", image_size=42, patch_size=6),
        image_token_index=IMAGE, vocab_size=VOCAB, projection_dim=48)),
    "paligemma2": ("PaliGemmaForConditionalGeneration", lambda: _paligemma2(VOCAB, IMAGE)),
    "gemma3": ("Gemma3ForConditionalGeneration", lambda: tf.Gemma3Config(
        text_config=_gemma3_text(), vision_config=dict(SIGLIP, model_type="siglip_vision_model", image_size=48,
                                                       patch_size=4),
        mm_tokens_per_image=16, boi_token_index=BOI, eoi_token_index=EOI, image_token_index=IMAGE)),
    "shieldgemma2": ("ShieldGemma2ForImageClassification", lambda: tf.ShieldGemma2Config(
        text_config=_gemma3_text(), vision_config=dict(SIGLIP, model_type="siglip_vision_model", image_size=48,
                                                       patch_size=4),
        mm_tokens_per_image=16, boi_token_index=BOI, eoi_token_index=EOI, image_token_index=IMAGE,
        yes_token_index=YES, no_token_index=NO)),
}
# onnxruntime-genai 0.18's Gemma 3 pipeline, as published: 256 soft tokens per image (fixed in its processor),
# the real marker ids and a vocabulary that holds them (the bundled 270M tokenizer's pieces, the 64 past them);
# 32 px / patch 2 = 16 x 16 patches, pooled 1 x 1.
GENAI = dict(vocab=262_208, boi=255_999, eoi=256_000, image=262_144, tokens=256, image_size=32, patch_size=2)
TINY_VISION["gemma3-genai"] = ("Gemma3ForConditionalGeneration", lambda: tf.Gemma3Config(
    text_config={**_gemma3_text(), "vocab_size": GENAI["vocab"]},
    vision_config=dict(SIGLIP, model_type="siglip_vision_model", image_size=GENAI["image_size"],
                       patch_size=GENAI["patch_size"]),
    mm_tokens_per_image=GENAI["tokens"], boi_token_index=GENAI["boi"], eoi_token_index=GENAI["eoi"],
    image_token_index=GENAI["image"]))
# LiteRT-LM 0.18 splices images by the real Gemma 3 marker pieces of the bundled 270M tokenizer: the real ids and
# vocabulary (GENAI's), the odd Gemma 3 sizes above (48 px, 12 x 12 patches pooled 3 x 3 to 16 rows per image).
LITERT = dict(GENAI, tokens=16, image_size=48, patch_size=4, yes=10784, no=3771)
# "gemma3-litert32": its decoder's widths (64, 96) divisible by 32, as int4 blocks of 32 need.
for _arch, _cls, _extra, _text in (
        ("gemma3", tf.Gemma3Config, {}, {}),
        ("shieldgemma2", tf.ShieldGemma2Config, dict(yes_token_index=LITERT["yes"], no_token_index=LITERT["no"]), {}),
        ("gemma3", tf.Gemma3Config, {}, dict(hidden_size=64, intermediate_size=96))):
    _name = f"{_arch}-litert{'32' if _text else ''}"
    TINY_VISION[_name] = (TINY_VISION[_arch][0], lambda cls=_cls, extra=_extra, text=_text: cls(
        text_config={**_gemma3_text(), "vocab_size": LITERT["vocab"], **text},
        vision_config=dict(SIGLIP, model_type="siglip_vision_model", image_size=LITERT["image_size"],
                           patch_size=LITERT["patch_size"]),
        mm_tokens_per_image=LITERT["tokens"], boi_token_index=LITERT["boi"], eoi_token_index=LITERT["eoi"],
        image_token_index=LITERT["image"], **extra))
# PaliGemma 2 for LiteRT-LM: the real vocabulary (the engine tokenizes the text with the bundled tokenizer), an
# image id past its pieces (the engine splices rows, it never sees the id)
TINY_VISION["paligemma2-litert"] = (TINY_VISION["paligemma2"][0],
                                    lambda: _paligemma2(LITERT["vocab"], LITERT["image"]))
MODEL_CLASSES = {"PaliGemmaForConditionalGeneration": tf.PaliGemmaForConditionalGeneration,
                 "Gemma3ForConditionalGeneration": tf.Gemma3ForConditionalGeneration,
                 "ShieldGemma2ForImageClassification": tf.ShieldGemma2ForImageClassification}


# Models for llama.cpp's converter. Odd sizes: every width differs from the others, so a transposed or swapped
# tensor cannot keep its shape; the vision width is a multiple of 32 (Q8_0 rows) and the FFN's is not (the
# converter falls back for fc2). query_pre_attn_scalar is head_dim, as llama.cpp assumes below the 27B size;
# head_dim a multiple of 16, as onnxruntime's GroupQueryAttention needs.
GGUF_VISION = dict(hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4, image_size=28,
                   patch_size=7, layer_norm_eps=1e-5, vision_use_head=False)
GGUF_TEXT = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                 head_dim=16, query_pre_attn_scalar=16, vocab_size=300)
GGUF_IDS = dict(boi_token_index=5, eoi_token_index=6, image_token_index=7)
IMAGE_MEAN, IMAGE_STD = [0.25, 0.5, 0.75], [0.3, 0.4, 0.6]
# transformers' parameter names -> the published checkpoints' (transformers maps them back when loading)
PUBLISHED = (("model.language_model.", "language_model.model."), ("model.vision_tower.", "vision_tower.vision_model."),
             ("model.multi_modal_projector.", "multi_modal_projector."), ("lm_head.", "language_model.lm_head."))


def _paligemma2(vocab: int, image: int):
    return tf.PaliGemmaConfig(
        text_config=tf.Gemma2Config(**{**TEXT, "vocab_size": vocab}, num_hidden_layers=3, num_key_value_heads=2,
                                    sliding_window=8, query_pre_attn_scalar=24, attn_logit_softcapping=3.0,
                                    final_logit_softcapping=2.0).to_dict(),
        vision_config=dict(SIGLIP, model_type="siglip_vision_model", image_size=42, patch_size=6),
        image_token_index=image, vocab_size=vocab, projection_dim=48)


def _gemma3_text() -> dict:
    return tf.Gemma3TextConfig(**TEXT, num_hidden_layers=3, num_key_value_heads=2, sliding_window=8,
                               layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                               query_pre_attn_scalar=16,
                               rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0,
                                                                   "rope_theta": 1e6},
                                                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}
                               ).to_dict()


def _eager(cfg):
    cfg._attn_implementation = "eager"
    for sub in ("text_config", "vision_config"):
        getattr(cfg, sub)._attn_implementation = "eager"
    return cfg


def build(arch: str, seed: int = 0):
    """transformers' tiny random model of `arch` (eager attention, fp32, eval)."""
    name, make = TINY_VISION[arch]
    torch.manual_seed(seed)
    model = MODEL_CLASSES[name](_eager(make())).eval()
    with torch.no_grad():     # non-zero norms, biases and the zero-initialised Gemma 3 projection: every parameter matters
        for n, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
            elif not p.any():
                p.normal_(0.0, 0.1)
            assert p.any(), n
    return model


def published_state_dict(model, head: bool = False) -> dict[str, torch.Tensor]:
    """The model's tensors under the original published checkpoints' names (`vision_tower.vision_model.*`,
    `multi_modal_projector.*`, `language_model.model.*`; with `head`, the tied `language_model.lm_head.*`, which
    the published Gemma 3 checkpoints leave out). ShieldGemma 2 nests them under `model.`."""
    outer = "model." if isinstance(model, tf.ShieldGemma2ForImageClassification) else ""
    out = {}
    for k, v in model.state_dict().items():
        inner = k[len(outer):]
        name = next((old + inner[len(new):] for new, old in PUBLISHED if inner.startswith(new)), inner)
        if head or not name.startswith("language_model.lm_head."):
            out[outer + name] = v.contiguous().clone()
    return out


def save_folder(model, path, old_layout: bool = False, head: bool = True, tokenizer: bytes | None = None):
    """config.json by save_pretrained, the weights in one of the two layouts real checkpoints use (the
    in-memory names of transformers >= 4.52: `model.vision_tower.*`, `model.language_model.*`, `lm_head.*`, its
    SigLIP without the `vision_model.` level; or the original published one: published_state_dict) and
    tokenizer.model (`tokenizer`, default oracle.tiny_tokenizer's)."""
    model.save_pretrained(path, safe_serialization=True)
    if old_layout:
        tensors = published_state_dict(model, head)
    else:
        tensors = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    for f in path.glob("*.safetensors"):
        f.unlink()
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    from oracle import tiny_tokenizer
    (path / "tokenizer.model").write_bytes(tokenizer or tiny_tokenizer())
    return path


def gemma3_vlm(tokens_per_image: int = 4, seed: int = 0, text: dict | None = None,
               ids: dict | None = None) -> tf.Gemma3ForConditionalGeneration:
    """A Gemma 3 model at the GGUF sizes (`text`: text_config fields replacing GGUF_TEXT's; `ids`: the image
    marker ids, default GGUF_IDS) with every weight random (the norms too, so their stored 1 + w is tested)."""
    cfg = tf.Gemma3Config(vision_config=dict(model_type="siglip_vision_model", **GGUF_VISION),
                          text_config=dict(model_type="gemma3_text", **{**GGUF_TEXT, **(text or {})}),
                          mm_tokens_per_image=tokens_per_image, **(ids or GGUF_IDS))
    torch.manual_seed(seed)
    model = tf.Gemma3ForConditionalGeneration(_eager(cfg)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.5 if "norm" in name else 0.08)
    return model


def save_vlm_folder(model, path: Path, tokenizer: bytes | None = None) -> Path:
    """The published layout (no LM head), preprocessor_config.json (IMAGE_MEAN / IMAGE_STD, with
    image_seq_length, as published) and the SentencePiece `tokenizer` if given; transformers must read it back
    as the same model."""
    save_folder(model, path, old_layout=True, head=False)
    tf.Gemma3ImageProcessorPil(size={"height": GGUF_VISION["image_size"], "width": GGUF_VISION["image_size"]},
                               image_mean=IMAGE_MEAN, image_std=IMAGE_STD).save_pretrained(path)
    pre = json.loads((path / "preprocessor_config.json").read_text())
    (path / "preprocessor_config.json").write_text(json.dumps({**pre, "image_seq_length": model.config.mm_tokens_per_image}))
    if tokenizer is not None:
        (path / "tokenizer.model").write_bytes(tokenizer)
    back = tf.Gemma3ForConditionalGeneration.from_pretrained(path).state_dict()
    assert all(torch.equal(back[n], t) for n, t in model.state_dict().items()), "folder does not read back"
    return path


def pixels(n: int, size: int, seed: int = 3) -> torch.Tensor:
    """n normalised images [n, 3, size, size] in [-1, 1]."""
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def prompt(arch: str, model, text_len: int = 12, images: int = 1, seed: int = 5) -> tuple[list[int], list[int]]:
    """(input_ids, token_type_ids) laid out as the processors do. PaliGemma: <image> x N per image, <bos>,
    the prefix, "\\n" (here: token 108 stands for it) -- all prefix (type 0). Gemma 3: <bos>, text, then per
    image "\\n\\n" (token 108) <boi> soft x N <eoi> "\\n\\n", more text; type 1 on the soft tokens."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(30, 280, (text_len,), generator=g).tolist()
    if arch.startswith("paligemma"):
        n = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2
        ids = [cfg.image_token_index] * (n * images) + [2] + text + [108]
        return ids, [0] * len(ids)
    n, image = cfg.mm_tokens_per_image, cfg.image_token_index
    ids = [2] + text[: text_len // 2]
    for _ in range(images):
        ids += [108, cfg.boi_token_index] + [image] * n + [cfg.eoi_token_index, 108]
    ids += text[text_len // 2:]
    return ids, [int(t == image) for t in ids]


def image_size(model) -> int:
    return model.config.vision_config.image_size


def config_json(path) -> dict:
    return json.loads((path / "config.json").read_text())


@torch.no_grad()
def hf_logits(model, ids, types, pix):
    """Logits [T, V] of transformers' forward on the prompt (ShieldGemma 2: its inner Gemma 3 model's)."""
    inner = model.model if isinstance(model, tf.ShieldGemma2ForImageClassification) else model
    out = inner(input_ids=torch.tensor([ids]), pixel_values=pix, token_type_ids=torch.tensor([types]))
    return out.logits[0]


@torch.no_grad()
def hf_generate(model, ids, types, pix, n: int) -> list[int]:
    """transformers' greedy continuation (its generate with a cache)."""
    out = model.generate(input_ids=torch.tensor([ids]), pixel_values=pix, token_type_ids=torch.tensor([types]),
                         attention_mask=torch.ones(1, len(ids), dtype=torch.long), max_new_tokens=n,
                         do_sample=False, min_new_tokens=n)
    return out[0, len(ids):].tolist()


def tokens_between(lo: int, hi: int, n: int, seed: int = 1) -> list[int]:
    """n random ids in [lo, hi), the same for the same arguments."""
    return torch.randint(lo, hi, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
