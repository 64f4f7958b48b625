"""Every published size as data. Parameter counts are checked against the real checkpoints in
tests/test_presets.py."""
from __future__ import annotations

from .config import EmbeddingHead, GemmaConfig, griffin_pattern, layer_pattern
from .families import FAMILIES

_G1 = dict(FAMILIES["gemma"].config_fields(), vocab_size=256_000, max_position=8192)
_G2 = dict(FAMILIES["gemma2"].config_fields(), vocab_size=256_000, max_position=8192)
_G3 = dict(FAMILIES["gemma3"].config_fields(), query_pre_attn_scalar=256)
_G3_SMALL = dict(_G3, vocab_size=262_144, sliding_window=512, max_position=32_768)
_G3_LARGE = dict(_G3, vocab_size=262_208, sliding_window=1024, max_position=131_072, rope_scale=8.0)
_EMBEDDING = {**_G3_SMALL, **FAMILIES["embeddinggemma"].config_fields(), "sliding_window": 512, "max_position": 2048,
              "embedding_head": EmbeddingHead()}
# RecurrentGemma: trained on 8192-token sequences.
_RG = dict(FAMILIES["recurrentgemma"].config_fields(), vocab_size=256_000, num_kv_heads=1, head_dim=256,
           max_position=8192)


def _pattern(base: dict, layers: int):
    return layer_pattern(layers, FAMILIES[base["family"]].local_per_global)


def _gemma1(layers, d, ffn, heads, kv):
    return GemmaConfig(**_G1, hidden_size=d, intermediate_size=ffn, num_heads=heads,
                       num_kv_heads=kv, head_dim=256, layer_types=_pattern(_G1, layers))


def _gemma2(layers, d, ffn, heads, kv, head_dim, qpas):
    return GemmaConfig(**_G2, hidden_size=d, intermediate_size=ffn, num_heads=heads, num_kv_heads=kv,
                       head_dim=head_dim, query_pre_attn_scalar=qpas, layer_types=_pattern(_G2, layers))


def _gemma3(base, layers, d, ffn, heads, kv, head_dim=256, **kw):
    return GemmaConfig(**{**base, **kw}, hidden_size=d, intermediate_size=ffn, num_heads=heads,
                       num_kv_heads=kv, head_dim=head_dim, layer_types=_pattern(base, layers))


def _recurrentgemma(layers, d, ffn, heads):
    return GemmaConfig(**_RG, hidden_size=d, intermediate_size=ffn, num_heads=heads, lru_width=d,
                       layer_types=griffin_pattern(layers))


PRESETS: dict[str, GemmaConfig] = {
    "gemma-2b": _gemma1(18, 2048, 16_384, 8, 1),
    "gemma-7b": _gemma1(28, 3072, 24_576, 16, 16),
    "codegemma-2b": _gemma1(18, 2048, 16_384, 8, 1),
    "codegemma-7b": _gemma1(28, 3072, 24_576, 16, 16),
    "gemma2-2b": _gemma2(26, 2304, 9216, 8, 4, 256, 256),
    "gemma2-9b": _gemma2(42, 3584, 14_336, 16, 8, 256, 256),
    "gemma2-27b": _gemma2(46, 4608, 36_864, 32, 16, 128, 144),
    "shieldgemma-2b": _gemma2(26, 2304, 9216, 8, 4, 256, 256),
    "shieldgemma-9b": _gemma2(42, 3584, 14_336, 16, 8, 256, 256),
    "shieldgemma-27b": _gemma2(46, 4608, 36_864, 32, 16, 128, 144),
    "gemma3-270m": _gemma3(_G3_SMALL, 18, 640, 2048, 4, 1),
    "gemma3-1b": _gemma3(_G3_SMALL, 26, 1152, 6912, 4, 1),
    "gemma3-4b": _gemma3(_G3_LARGE, 34, 2560, 10_240, 8, 4),
    "gemma3-12b": _gemma3(_G3_LARGE, 48, 3840, 15_360, 16, 8),
    "gemma3-27b": _gemma3(_G3_LARGE, 62, 5376, 21_504, 32, 16, head_dim=128, query_pre_attn_scalar=168),
    "embeddinggemma-300m": _gemma3(_EMBEDDING, 24, 768, 1152, 3, 1),
    "recurrentgemma-2b": _recurrentgemma(26, 2560, 7680, 10),
    "recurrentgemma-9b": _recurrentgemma(38, 4096, 12_288, 16),
}


def preset(name: str):
    """A text preset (GemmaConfig) or a vision-language one (VisionLanguageConfig, vision_presets.py)."""
    from .vision_presets import VISION_PRESETS
    if name in PRESETS:
        return PRESETS[name]
    if name in VISION_PRESETS:
        return VISION_PRESETS[name]
    raise KeyError(f"unknown preset {name!r}; known presets: {', '.join([*PRESETS, *VISION_PRESETS])}")
