"""Every published size of the seeing Gemmas as data: PaliGemma 1 (Gemma 2B) and 2 (Gemma 2 2B/9B/27B) at
224/448/896 px, Gemma 3 4B/12B/27B multimodal (`gemma3-*-vision`; the text-only presets keep their names)
and ShieldGemma 2. Parameter counts are checked against the published checkpoints in tests/test_presets.py."""
from __future__ import annotations

from .presets import PRESETS
from .vision_config import GEMMA3, PALIGEMMA, SiglipConfig, VisionLanguageConfig

# PaliGemma's vocabulary: Gemma's 256,000 + 1,024 <locXXXX> + 128 <segXXX> tokens + <image> and reserved ones.
PALIGEMMA_VOCAB, PALIGEMMA_IMAGE = 257_216, 257_152
# Gemma 3's image markers and ShieldGemma 2's answer tokens (their config.json / processor defaults).
GEMMA3_TOKENS = dict(image_token_id=262_144, boi_id=255_999, eoi_id=256_000, tokens_per_image=256)
# ... and the vocabulary pieces of those ids (a GGUF's tokenizer names them; export.models.checkpoints.gguf_vision)
GEMMA3_PIECES = dict(image_token_id="<image_soft_token>", boi_id="<start_of_image>", eoi_id="<end_of_image>")
SHIELD_YES_NO = (10_784, 3771)


def _siglip(size: int) -> SiglipConfig:
    return SiglipConfig(image_size=size)                  # So400m/14: SiglipConfig's defaults


def _paligemma(text: str, size: int) -> VisionLanguageConfig:
    decoder = PRESETS[text].replace(vocab_size=PALIGEMMA_VOCAB, position_offset=1, blocks_in_window=False)
    siglip = _siglip(size)
    return VisionLanguageConfig(PALIGEMMA, decoder, siglip, PALIGEMMA_IMAGE, siglip.num_patches)


def _gemma3(text: str, **kw) -> VisionLanguageConfig:
    return VisionLanguageConfig(GEMMA3, PRESETS[text], _siglip(896), **GEMMA3_TOKENS, **kw)


VISION_PRESETS: dict[str, VisionLanguageConfig] = {
    **{f"paligemma-3b-{s}": _paligemma("gemma-2b", s) for s in (224, 448, 896)},
    **{f"paligemma2-{n}-{s}": _paligemma(text, s) for n, text in (("3b", "gemma2-2b"), ("10b", "gemma2-9b"),
                                                                  ("28b", "gemma2-27b")) for s in (224, 448, 896)},
    **{f"gemma3-{n}-vision": _gemma3(f"gemma3-{n}") for n in ("4b", "12b", "27b")},
    "shieldgemma2-4b": _gemma3("gemma3-4b", classifier=SHIELD_YES_NO),
}
