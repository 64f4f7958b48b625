"""Every preset's parameter count equals the real checkpoint's (counted on the meta device)."""
import pytest

from export.models import PRESETS, count_parameters, preset

from oracle import PUBLISHED_PARAMETERS as REAL

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
