"""`--model TEXT.gguf --mmproj MMPROJ.gguf`: llama.cpp ships Gemma 3 vision as two files, the text model's GGUF
and an mmproj GGUF holding the SigLIP tower and the projector (gguf_mmproj). Together they are one Gemma 3
vision-language checkpoint: the decoder's config is the text GGUF's (gguf_loader), the tower's config, the tokens
per image and the image normalisation are the mmproj's facts, and the image marker ids are the text GGUF
tokenizer's pieces (llama.cpp copies Gemma 3's vocabulary, markers included) or, where it lacks one,
Gemma3Config's default (vision_presets.GEMMA3_TOKENS)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..vision_config import GEMMA3, SiglipConfig, VisionLanguageConfig
from ..vision_presets import GEMMA3_PIECES, GEMMA3_TOKENS
from .gguf_loader import GGUFCheckpoint, _field, open_reader
from .gguf_mmproj import load_mmproj, mmproj_facts
from .weights import CheckpointError

TEXT_ARCHS = ("gemma3",)               # text GGUF architectures an mmproj's tower and projector join
TEXT_PREFIX = "language_model."        # export.models.vlm's name of the decoder's parameters
TOKENS_KEY = "tokenizer.ggml.tokens"


def check_paths(model: Path, mmproj: str | Path) -> Path:
    """The refusals no file needs to be read for: the text model must be a .gguf file, the mmproj must exist."""
    mmproj = Path(mmproj)
    if model.is_dir() or model.suffix != ".gguf":
        raise CheckpointError(f"--mmproj {mmproj}: goes with a text .gguf --model, not {model} (a Hugging Face "
                              f"vision folder holds its own vision tower)")
    if not mmproj.is_file():
        raise CheckpointError(f"--mmproj {mmproj}: no such file")
    return mmproj


def open_text(model: Path) -> GGUFCheckpoint:
    """The text GGUF, which must be a decoder the mmproj can be joined to."""
    reader = open_reader(model)
    arch = _field(reader, model, "general.architecture")
    if arch not in TEXT_ARCHS:
        raise CheckpointError(f"{model}: GGUF architecture {arch!r} takes no --mmproj (Gemma 3 vision joins a "
                              f"{' or '.join(TEXT_ARCHS)} text GGUF)")
    return GGUFCheckpoint(model, reader)


def vision_config(ckpt: GGUFCheckpoint, facts: dict) -> VisionLanguageConfig:
    """The Gemma 3 vision-language config of a text GGUF and an mmproj's facts (gguf_mmproj.load_mmproj)."""
    siglip = SiglipConfig(image_size=facts["image_size"], patch_size=facts["patch_size"],
                          hidden_size=facts["hidden_size"], intermediate_size=facts["intermediate_size"],
                          num_layers=facts["num_hidden_layers"], num_heads=facts["num_attention_heads"],
                          layer_norm_eps=facts["layer_norm_eps"])
    try:
        return VisionLanguageConfig(GEMMA3, ckpt.config, siglip, tokens_per_image=facts["mm_tokens_per_image"],
                                    image_mean=facts["image_mean"], image_std=facts["image_std"],
                                    **marker_ids(ckpt))
    except ValueError as e:
        raise CheckpointError(f"{ckpt.path}: {e}") from None


def marker_ids(ckpt: GGUFCheckpoint) -> dict[str, int]:
    """image_token_id, boi_id, eoi_id: each its piece's id in the text GGUF's vocabulary, else the default."""
    tokens = _field(ckpt.reader, ckpt.path, TOKENS_KEY, [])
    index = {}
    for i, piece in enumerate(tokens if isinstance(tokens, list) else []):
        index.setdefault(piece, i)
    return {key: index.get(piece, GEMMA3_TOKENS[key]) for key, piece in GEMMA3_PIECES.items()}


def read_vision_gguf(model: Path, mmproj: str | Path) -> tuple[GGUFCheckpoint, Path, VisionLanguageConfig]:
    """(text checkpoint, mmproj path, config) from the metadata of both files; every refusal before a weight is read."""
    mmproj = check_paths(model, mmproj)
    ckpt = open_text(model)
    return ckpt, mmproj, vision_config(ckpt, mmproj_facts(mmproj, ckpt.config.hidden_size))


def vision_tensors(ckpt: GGUFCheckpoint, mmproj: Path) -> dict[str, torch.Tensor]:
    """Every tensor of both files, float32, under export.models.vlm's parameter names."""
    tensors, _ = load_mmproj(mmproj, ckpt.config.hidden_size)
    tensors.update((TEXT_PREFIX + name, t) for name, t in ckpt.dequantized().items())
    return tensors
