"""Every preset's parameter count equals the real checkpoint's (counted on the meta device)."""
import pytest

from export.models import PRESETS, count_parameters, preset

# Published counts of the real checkpoints (safetensors totals). Gemma 3 4B/12B/27B are the
# multimodal checkpoints' totals minus the SigLIP tower (416,866,032) and the projector
# (1152 * d + 1152): their text decoders are what the presets describe.
SIGLIP = 416_866_032
REAL = {
    "gemma-2b": 2_506_172_416,
    "gemma-7b": 8_537_680_896,
    "codegemma-2b": 2_506_172_416,
    "codegemma-7b": 8_537_680_896,
    "gemma2-2b": 2_614_341_888,
    "gemma2-9b": 9_241_705_984,
    "gemma2-27b": 27_227_128_320,
    "shieldgemma-2b": 2_614_341_888,
    "shieldgemma-9b": 9_241_705_984,
    "shieldgemma-27b": 27_227_128_320,
    "gemma3-270m": 268_098_176,
    "gemma3-1b": 999_885_952,
    "gemma3-4b": 4_300_079_472 - SIGLIP - (1152 * 2560 + 1152),
    "gemma3-12b": 12_187_325_040 - SIGLIP - (1152 * 3840 + 1152),
    "gemma3-27b": 27_432_406_640 - SIGLIP - (1152 * 5376 + 1152),
    "embeddinggemma-300m": 307_581_696,   # with the 768->3072->768 dense head
    # RecurrentGemma: transformers' RecurrentGemmaForCausalLM built from the published config.json
    # of google/recurrentgemma-2b and -9b (test below); the 9B's bf16 shards (19.25 GB with an
    # untied copy of the 256000 x 4096 embedding) agree.
    "recurrentgemma-2b": 2_682_862_080,
    "recurrentgemma-9b": 8_579_977_216,
}
# The published config.json fields of the RecurrentGemma checkpoints.
RECURRENTGEMMA_CONFIGS = {
    "recurrentgemma-2b": dict(hidden_size=2560, intermediate_size=15_360, num_attention_heads=10, num_hidden_layers=26,
                              num_key_value_heads=1, lru_width=2560, head_dim=256, vocab_size=256_000,
                              attention_window_size=2048, conv1d_width=4, partial_rotary_factor=0.5),
    "recurrentgemma-9b": dict(hidden_size=4096, intermediate_size=24_576, num_attention_heads=16, num_hidden_layers=38,
                              num_key_value_heads=1, lru_width=4096, head_dim=256, vocab_size=256_000,
                              attention_window_size=2048, conv1d_width=4, partial_rotary_factor=0.5),
}


def test_every_preset_is_checked():
    assert set(REAL) == set(PRESETS)


@pytest.mark.parametrize("name", sorted(REAL))
def test_parameter_count_matches_real_checkpoint(name):
    assert count_parameters(preset(name)) == REAL[name]


@pytest.mark.parametrize("name", sorted(RECURRENTGEMMA_CONFIGS))
def test_recurrentgemma_presets_match_transformers_on_the_published_configs(name):
    """Same count as transformers' model of the published config, and the config our HF loader reads
    from that config.json is the preset."""
    import torch
    import transformers as tf

    from export.models.checkpoints.hf import config_from_hf
    cfg = dict(RECURRENTGEMMA_CONFIGS[name], architectures=["RecurrentGemmaForCausalLM"])
    with torch.device("meta"):
        ref = tf.RecurrentGemmaForCausalLM(tf.RecurrentGemmaConfig(**cfg))
    assert sum(p.numel() for p in ref.parameters()) == REAL[name]
    assert config_from_hf(cfg) == preset(name)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(KeyError, match="gemma3-270m"):
        preset("gemma3-300m")


def test_layer_types_follow_the_published_patterns():
    g2, g3 = preset("gemma2-2b"), preset("gemma3-1b")
    assert [t.value for t in g2.layer_types[:2]] == ["sliding_attention", "full_attention"]
    assert [i for i, t in enumerate(g3.layer_types) if t.value == "full_attention"] == [5, 11, 17, 23]
    rg = preset("recurrentgemma-2b")
    assert [t.value for t in rg.layer_types[:6]] == ["recurrent", "recurrent", "sliding_attention"] * 2
