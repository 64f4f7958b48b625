"""Every published size of the seeing Gemmas as data: PaliGemma 1 (Gemma 2B) and 2 (Gemma 2 2B/9B/27B) at
224/448/896 px, Gemma 3 4B/12B/27B multimodal (`gemma3-*-vision`; the text-only presets keep their names)
and ShieldGemma 2. Parameter counts are checked against the published checkpoints in tests/test_presets.py."""
from __future__ import annotations

from runtime_py.vision_prompts import (END_OF_IMAGE, GEMMA3_BOI_ID, GEMMA3_EOI_ID, GEMMA3_IMAGE_ID,
                                       GEMMA3_TOKENS_PER_IMAGE, IMAGE_SOFT_TOKEN, PALIGEMMA_IMAGE_ID,
                                       SHIELDGEMMA2_NO_ID, SHIELDGEMMA2_YES_ID, START_OF_IMAGE)

from .presets import PRESETS
from .vision_config import GEMMA3, PALIGEMMA, SiglipConfig, VisionLanguageConfig

# PaliGemma's vocabulary: Gemma's 256,000 + 1,024 <locXXXX> + 128 <segXXX> tokens + <image> and reserved ones.
PALIGEMMA_VOCAB = 257_216
GEMMA3_TOKENS = dict(image_token_id=GEMMA3_IMAGE_ID, boi_id=GEMMA3_BOI_ID, eoi_id=GEMMA3_EOI_ID,
                     tokens_per_image=GEMMA3_TOKENS_PER_IMAGE)
# ... and the vocabulary pieces of those ids (a GGUF's tokenizer names them; export.models.checkpoints.gguf_vision)
GEMMA3_PIECES = dict(image_token_id=IMAGE_SOFT_TOKEN, boi_id=START_OF_IMAGE, eoi_id=END_OF_IMAGE)


def _siglip(size: int) -> SiglipConfig:
    return SiglipConfig(image_size=size)                  # So400m/14: SiglipConfig's defaults


def _paligemma(text: str, size: int) -> VisionLanguageConfig:
    decoder = PRESETS[text].replace(vocab_size=PALIGEMMA_VOCAB, position_offset=1, blocks_in_window=False)
    siglip = _siglip(size)
    return VisionLanguageConfig(PALIGEMMA, decoder, siglip, PALIGEMMA_IMAGE_ID, siglip.num_patches)


def _gemma3(text: str, **kw) -> VisionLanguageConfig:
    return VisionLanguageConfig(GEMMA3, PRESETS[text], _siglip(896), **GEMMA3_TOKENS, **kw)


VISION_PRESETS: dict[str, VisionLanguageConfig] = {
    **{f"paligemma-3b-{s}": _paligemma("gemma-2b", s) for s in (224, 448, 896)},
    **{f"paligemma2-{n}-{s}": _paligemma(text, s) for n, text in (("3b", "gemma2-2b"), ("10b", "gemma2-9b"),
                                                                  ("28b", "gemma2-27b")) for s in (224, 448, 896)},
    **{f"gemma3-{n}-vision": _gemma3(f"gemma3-{n}") for n in ("4b", "12b", "27b")},
    "shieldgemma2-4b": _gemma3("gemma3-4b", classifier=(SHIELDGEMMA2_YES_ID, SHIELDGEMMA2_NO_ID)),
}
