"""RecurrentGemma (Griffin) Hugging Face checkpoints: config.json -> GemmaConfig, and the
tensor-name table from RecurrentGemmaForCausalLM's names to ours."""
from __future__ import annotations

from ..config import GemmaConfig, LayerType
from ..config_checks import check_value
from ..families import FAMILIES, special_token_ids
from .weights import CheckpointError

_FAMILY = FAMILIES["recurrentgemma"]

# block_types entries -> our layer types (repeated over num_hidden_layers, as transformers does).
BLOCK_TYPES = {"recurrent": LayerType.RECURRENT, "attention": LayerType.LOCAL}

# HF name part -> ours, inside model.layers.{i}. and at the top of the model.
RENAMES = (
    ("temporal_pre_norm.", "input_layernorm."),
    ("channel_pre_norm.", "post_attention_layernorm."),
    ("mlp_block.", "mlp."),
    ("model.final_norm.", "model.norm."),
)
# The temporal block lives under a name that depends on the layer's type.
TEMPORAL = {LayerType.RECURRENT: "recurrent.", LayerType.LOCAL: "self_attn."}


def recurrentgemma_config(cfg: dict, source: str) -> GemmaConfig:
    try:
        n = check_value("num_layers", cfg["num_hidden_layers"], "num_hidden_layers")
        d = check_value("hidden_size", cfg["hidden_size"])
        heads = check_value("num_heads", cfg["num_attention_heads"], "num_attention_heads")
        block_types = list(cfg.get("block_types") or cfg.get("_block_types") or ("recurrent", "recurrent", "attention"))
        unknown = sorted(set(block_types) - set(BLOCK_TYPES))
        if unknown:
            raise CheckpointError(f"{source}: block_types {unknown} unknown (known: {', '.join(BLOCK_TYPES)})")
        if cfg.get("attention_bias"):
            raise CheckpointError(f"{source}: attention_bias=true is not supported (RecurrentGemma has none)")
        act = cfg.get("hidden_activation", "gelu_pytorch_tanh")
        if act != "gelu_pytorch_tanh":
            raise CheckpointError(f"{source}: hidden_activation {act!r} is not supported (gelu_pytorch_tanh)")
        if cfg.get("embeddings_scale_by_sqrt_dim") is False:
            raise CheckpointError(f"{source}: embeddings_scale_by_sqrt_dim=false is not supported")
        rope = cfg.get("rope_parameters") or {}
        rope_type = rope.get("rope_type", "default")
        if rope_type != "default":
            raise CheckpointError(f"{source}: rope type {rope_type!r} is not supported (default)")
        base = float(rope.get("rope_theta", cfg.get("rope_theta", _FAMILY.rope_base)))
        head_dim = cfg.get("head_dim") or d // heads
        kw = dict(
            _FAMILY.config_fields(), vocab_size=cfg["vocab_size"], hidden_size=d,
            intermediate_size=cfg["intermediate_size"] // 2,     # transformers' MLP is half as wide
            num_heads=heads, num_kv_heads=cfg.get("num_key_value_heads") or heads, head_dim=head_dim,
            layer_types=tuple(BLOCK_TYPES[b] for b in (block_types * n)[:n]),
            sliding_window=cfg.get("attention_window_size", _FAMILY.sliding_window), rope_base=base,
            rope_local_base=base,
            rope_fraction=float(rope.get("partial_rotary_factor",
                                         cfg.get("partial_rotary_factor", _FAMILY.rope_fraction))),
            final_softcap=cfg.get("logits_soft_cap", _FAMILY.final_softcap), rms_eps=cfg.get("rms_norm_eps", 1e-6),
            max_position=cfg.get("max_position_embeddings", 8192), lru_width=cfg.get("lru_width") or d,
            conv1d_width=cfg.get("conv1d_width", _FAMILY.conv1d_width))
    except KeyError as e:
        raise CheckpointError(f"{source}: missing key {e.args[0]!r}") from None
    kw.update(special_token_ids(cfg.get, "hf"))
    return GemmaConfig(**kw)


def rename_recurrentgemma(name: str, config: GemmaConfig, where: str) -> str:
    """A tensor name after the generic prefix mapping (model.*, lm_head.*) -> our parameter name."""
    for theirs, ours in RENAMES:
        name = name.replace(theirs, ours)
    if ".temporal_block." in name:
        try:
            layer = int(name.split(".")[2])           # model.layers.{i}.temporal_block...
            name = name.replace("temporal_block.", TEMPORAL[config.layer_types[layer]])
        except (ValueError, IndexError):
            raise CheckpointError(f"{where}: not in a layer 0..{config.num_layers - 1}") from None
    return name
