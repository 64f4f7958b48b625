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


# --- the seeing Gemmas --------------------------------------------------------------------------------------

def _hf_vision_config(name: str):
    """transformers' config of a vision preset, from the published checkpoints' config.json fields."""
    import transformers as tf
    from export.models.vision_presets import VISION_PRESETS
    from export.models.vision_config import PALIGEMMA
    vc = VISION_PRESETS[name]
    t, v = vc.text, vc.vision
    text = dict(hidden_size=t.hidden_size, intermediate_size=t.intermediate_size, num_hidden_layers=t.num_layers,
                num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads, head_dim=t.head_dim,
                vocab_size=t.vocab_size)
    vision = dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                  num_attention_heads=16, patch_size=14, image_size=v.image_size, vision_use_head=False)
    if vc.kind == PALIGEMMA:
        if t.family == "gemma2":
            text.update(model_type="gemma2", query_pre_attn_scalar=t.query_pre_attn_scalar or t.head_dim)
        else:
            text.update(model_type="gemma")
        return "PaliGemmaForConditionalGeneration", tf.PaliGemmaConfig(
            text_config=text, vision_config=vision, projection_dim=t.hidden_size, image_token_index=257_152,
            vocab_size=t.vocab_size)
    text.update(model_type="gemma3_text", query_pre_attn_scalar=t.query_pre_attn_scalar, sliding_window=1024,
                rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                                 "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
                max_position_embeddings=131_072)
    if vc.classifier:
        return "ShieldGemma2ForImageClassification", tf.ShieldGemma2Config(text_config=text, vision_config=vision)
    return "Gemma3ForConditionalGeneration", tf.Gemma3Config(text_config=text, vision_config=vision)


def _vision_names():
    from export.models.vision_presets import VISION_PRESETS
    return sorted(VISION_PRESETS)


@pytest.mark.parametrize("name", _vision_names())
def test_vision_presets_match_transformers_and_the_published_counts(name):
    """The parameter count of transformers' model of the published config (the Gemma 3 ones also equal the
    published safetensors totals), and the config our loader reads from that config.json is the preset."""
    import torch
    import transformers as tf

    from export.models.checkpoints.hf_vision import vision_config_from_hf
    from oracle import PUBLISHED_PARAMETERS, SIGLIP
    arch, cfg = _hf_vision_config(name)
    with torch.device("meta"):
        ref = getattr(tf, arch)(cfg)
    count = sum(p.numel() for p in ref.parameters())
    assert count_parameters(preset(name)) == count
    text = name.removesuffix("-vision").replace("shieldgemma2-4b", "gemma3-4b")
    if text in PUBLISHED_PARAMETERS and text.startswith("gemma3-"):
        d = preset(name).text.hidden_size
        assert count == PUBLISHED_PARAMETERS[text] + SIGLIP + 1152 * d + 1152
    assert vision_config_from_hf({**cfg.to_dict(), "architectures": [arch]}) == preset(name)
