"""Hugging Face folders of the seeing Gemmas (PaliGemmaForConditionalGeneration,
Gemma3ForConditionalGeneration, ShieldGemma2ForImageClassification): config.json read as a
VisionLanguageConfig, tensors renamed onto export.models.vlm's names in both layouts transformers has
written (before 4.52: `vision_tower.*`, `language_model.model.*`; since: `model.vision_tower.*`,
`model.language_model.*`, `lm_head.*`; ShieldGemma 2 nests either under one more `model.`)."""
from __future__ import annotations

from pathlib import Path

import torch

from runtime_py.vision_prompts import (GEMMA3_BOI_ID, GEMMA3_EOI_ID, GEMMA3_IMAGE_ID, GEMMA3_TOKENS_PER_IMAGE,
                                       SHIELDGEMMA2_NO_ID, SHIELDGEMMA2_YES_ID)

from ..config_checks import check_value
from ..families import FAMILIES
from ..vision_config import GEMMA3, PALIGEMMA, SiglipConfig, VisionLanguageConfig
from .hf import read_tensors_renamed, text_config_from_hf
from .weights import CheckpointError

# config.json `architectures[0]` -> (kind, prefix its tensors carry before the layouts below)
VISION_ARCHITECTURES = {
    "PaliGemmaForConditionalGeneration": (PALIGEMMA, ""),
    "Gemma3ForConditionalGeneration": (GEMMA3, ""),
    "ShieldGemma2ForImageClassification": (GEMMA3, "model."),
}
# text_config.model_type -> our decoder family (PaliGemma 1: Gemma, PaliGemma 2: Gemma 2)
TEXT_FAMILIES = {"gemma": "gemma", "gemma2": "gemma2", "gemma3_text": "gemma3", "gemma3": "gemma3"}
# Checkpoint prefix -> ours, tried in order; None: dropped (the tied LM head, checked equal to the embedding).
VISION_PREFIXES = (
    ("model.vision_tower.", "vision_tower."), ("vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."), ("multi_modal_projector.", "multi_modal_projector."),
    ("model.language_model.", "language_model.model."), ("language_model.model.", "language_model.model."),
    ("language_model.lm_head.", "lm_head."), ("lm_head.", "lm_head."),
)
SIGLIP_INNER = "vision_model."
# SiglipConfig field -> config.json key; defaults are transformers' SiglipVisionConfig's (what a
# vision_config that leaves a key out means), except where the model's own config class sets them.
SIGLIP_KEYS = {"image_size": "image_size", "patch_size": "patch_size", "hidden_size": "hidden_size",
               "intermediate_size": "intermediate_size", "num_layers": "num_hidden_layers",
               "num_heads": "num_attention_heads", "layer_norm_eps": "layer_norm_eps"}
SIGLIP_DEFAULTS = dict(image_size=224, patch_size=16, hidden_size=768, intermediate_size=3072, num_layers=12,
                       num_heads=12, layer_norm_eps=1e-6)
# PaliGemmaConfig's vision_config when config.json has none
PALIGEMMA_VISION = dict(image_size=224, patch_size=14, hidden_size=1152, intermediate_size=4096, num_layers=27,
                        num_heads=16)
# Gemma3Config's / ShieldGemma2Config's defaults for the top-level keys
GEMMA3_IDS = dict(image_token_index=GEMMA3_IMAGE_ID, boi_token_index=GEMMA3_BOI_ID, eoi_token_index=GEMMA3_EOI_ID,
                  mm_tokens_per_image=GEMMA3_TOKENS_PER_IMAGE)
SHIELD_IDS = dict(yes_token_index=SHIELDGEMMA2_YES_ID, no_token_index=SHIELDGEMMA2_NO_ID)


def is_vision(cfg: dict) -> bool:
    archs = cfg.get("architectures") or [] if isinstance(cfg, dict) else []
    return bool(archs) and archs[0] in VISION_ARCHITECTURES


def vision_config_from_hf(cfg: dict, source: str = "config.json") -> VisionLanguageConfig:
    try:
        return _vision_config(cfg, source)
    except CheckpointError:
        raise
    except (ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{source}: {e}") from None


def _vision_config(cfg: dict, source: str) -> VisionLanguageConfig:
    kind, _ = VISION_ARCHITECTURES[cfg["architectures"][0]]
    text, vision = cfg.get("text_config"), cfg.get("vision_config")
    if not isinstance(text, dict):
        raise CheckpointError(f"{source}: text_config is missing or not an object")
    model_type = text.get("model_type", "gemma" if kind == PALIGEMMA else "gemma3_text")
    if model_type not in TEXT_FAMILIES:
        raise CheckpointError(f"{source}: text_config.model_type {model_type!r} is not supported "
                              f"({', '.join(TEXT_FAMILIES)})")
    family = FAMILIES[TEXT_FAMILIES[model_type]]
    if kind == PALIGEMMA:
        text = {"vocab_size": cfg.get("vocab_size", 257_152), **text}
    decoder = text_config_from_hf(text, family, f"{source}: text_config", cfg)
    if kind == PALIGEMMA:       # positions from 1; the prefix block is not cut by the sliding window
        decoder = decoder.replace(position_offset=1, blocks_in_window=False)
    siglip = _siglip(vision, kind, source)
    if kind == PALIGEMMA:
        return VisionLanguageConfig(PALIGEMMA, decoder, siglip, image_token_id=cfg.get("image_token_index", 256_000),
                                    tokens_per_image=siglip.num_patches)
    ids = {k: cfg.get(k, v) for k, v in GEMMA3_IDS.items()}
    shield = cfg["architectures"][0] == "ShieldGemma2ForImageClassification"
    classifier = tuple(cfg.get(k, v) for k, v in SHIELD_IDS.items()) if shield else None
    if classifier and any(not 0 <= t < decoder.vocab_size for t in classifier):
        raise CheckpointError(f"{source}: yes/no token ids {classifier} are outside the vocabulary")
    return VisionLanguageConfig(GEMMA3, decoder, siglip, image_token_id=ids["image_token_index"],
                                tokens_per_image=ids["mm_tokens_per_image"], boi_id=ids["boi_token_index"],
                                eoi_id=ids["eoi_token_index"], classifier=classifier)


def _siglip(vision, kind: str, source: str) -> SiglipConfig:
    if vision is None:
        return SiglipConfig(**(PALIGEMMA_VISION if kind == PALIGEMMA else SIGLIP_DEFAULTS))
    if not isinstance(vision, dict):
        raise CheckpointError(f"{source}: vision_config is not an object")
    if vision.get("vision_use_head"):
        raise CheckpointError(f"{source}: vision_config.vision_use_head is true; PaliGemma and Gemma 3 use the "
                              f"tower without its pooling head")
    kw = {ours: vision.get(key, SIGLIP_DEFAULTS[ours]) for ours, key in SIGLIP_KEYS.items()}
    for name in ("image_size", "patch_size"):           # transformers allows [h, w]; the models are square
        if isinstance(kw[name], (list, tuple)):
            if len(set(kw[name])) != 1:
                raise CheckpointError(f"{source}: vision_config.{name} {kw[name]} is not square")
            kw[name] = kw[name][0]
    check_value("rms_eps", kw["layer_norm_eps"], "vision_config.layer_norm_eps")
    return SiglipConfig(**kw)


PREPROCESSOR = "preprocessor_config.json"
# PIL's resampling filters, as image processors save them (an int, or in some versions the name)
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def with_preprocessor(folder: Path, config: VisionLanguageConfig) -> VisionLanguageConfig:
    """The config with the image normalisation of the folder's preprocessor_config.json (image_mean / image_std;
    none with do_normalize false), when it has one; its size must be the tower's and its resampling the one the
    exporters and runtime_py apply for this kind of model."""
    path = folder / PREPROCESSOR
    if not path.is_file():
        return config
    from runtime_py.files import read_json
    pre = read_json(path)
    if not isinstance(pre, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    S = config.vision.image_size
    size = pre.get("size")
    sides = {k: size.get(k) for k in ("height", "width", "shortest_edge") if k in size} if isinstance(size, dict) \
        else {"size": size} if size is not None else {}
    if any(v != S for v in sides.values()):
        raise CheckpointError(f"{path}: size {size!r} differs from the vision tower's image_size {S}")
    resample = pre.get("resample")
    named = PIL_RESAMPLE.get(resample, resample) if type(resample) is int else resample
    if resample is not None and str(named).lower() != config.resample:
        raise CheckpointError(f"{path}: resample {resample!r} ({named}); a {config.kind} model's images are resized "
                              f"{config.resample} here")
    if pre.get("do_normalize", True) is False:
        return config.replace(image_mean=(0.0, 0.0, 0.0), image_std=(1.0, 1.0, 1.0))
    kw = {}
    for key in ("image_mean", "image_std"):
        v = pre.get(key)
        if v is None:
            continue
        if not isinstance(v, list) or len(v) != 3 or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            raise CheckpointError(f"{path}: {key} {v!r}: must be 3 numbers (R, G, B)")
        kw[key] = tuple(float(x) for x in v)
    try:
        return config.replace(**kw)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None


def read_vision_tensors(folder: Path, config: VisionLanguageConfig, arch: str) -> dict[str, torch.Tensor]:
    _, outer = VISION_ARCHITECTURES[arch]

    def rename(key: str, where: str) -> str | None:
        if not key.startswith(outer):
            return None
        key = key[len(outer):]
        for prefix, ours in VISION_PREFIXES:
            if key.startswith(prefix):
                rest = key[len(prefix):]
                if ours == "vision_tower." and not rest.startswith(SIGLIP_INNER):
                    rest = SIGLIP_INNER + rest      # transformers >= 5 drops SiglipVisionModel's own level
                return ours + rest
        return None
    out = read_tensors_renamed(folder, rename)
    head = out.pop("lm_head.weight", None)
    embed = out.get("language_model.model.embed_tokens.weight")
    if head is not None and embed is not None and not torch.equal(head, embed):
        raise CheckpointError(f"{folder}: lm_head.weight differs from the embedding; Gemma ties them")
    return out
