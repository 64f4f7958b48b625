"""The Gemma families in one table: what each fixes, what its checkpoints mean when they leave a field out,
and which Hugging Face and GGUF architectures are read as it. presets.py builds the published sizes on it;
the Hugging Face and GGUF loaders take their defaults and architecture names from it."""
from __future__ import annotations

import dataclasses
from typing import Callable

from .config import GemmaConfig

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(GemmaConfig) if f.default is not dataclasses.MISSING}


@dataclasses.dataclass(frozen=True)
class Family:
    family: str                                # GemmaConfig.family
    hf_architectures: tuple[str, ...] = ()     # config.json `architectures[0]` values read as this family
    gguf_architecture: str | None = None       # GGUF `general.architecture` (llama.cpp's name)
    local_per_global: int = 0                  # sliding layers per global one (transformers' and llama.cpp's
                                               # sliding_window_pattern - 1); 0: every layer global
    fields: dict = dataclasses.field(default_factory=dict)   # GemmaConfig fields the family sets: what every
                                               # published size shares and what a checkpoint means when it is silent
    rope_local_base: float | None = None       # LOCAL layers' RoPE base; None: the global one (as the checkpoint says)
    gguf_ffn_norm: str = "pre_feedforward_layernorm"   # our name for llama.cpp's blk.N.ffn_norm
    gguf_wide_scale_layers: int | None = None  # llama.cpp: at this block count (the 27B) query_pre_attn_scalar
                                               # is hidden / heads, else head_dim

    def __getattr__(self, name: str):
        """A GemmaConfig field: the family's value, else GemmaConfig's default."""
        if name in _DEFAULTS:
            return self.fields.get(name, _DEFAULTS[name])
        raise AttributeError(name)

    def config_fields(self) -> dict:
        """The GemmaConfig fields this family sets, with its RoPE bases resolved."""
        return {"family": self.family, **self.fields, "rope_local_base": self.local_rope_base}

    @property
    def local_rope_base(self) -> float:
        return self.rope_base if self.rope_local_base is None else self.rope_local_base


_GEMMA3 = dict(rope_base=1_000_000.0, qk_norm=True, sandwich_norms=True)
FAMILIES: dict[str, Family] = {f.family: f for f in (
    Family("gemma", ("GemmaForCausalLM",), "gemma", gguf_ffn_norm="post_attention_layernorm"),
    Family("gemma2", ("Gemma2ForCausalLM",), "gemma2", 1, dict(
        sandwich_norms=True, attn_softcap=50.0, final_softcap=30.0, sliding_window=4096), gguf_wide_scale_layers=46),
    # Gemma3ForConditionalGeneration: the text decoder only (vision tensors are skipped)
    Family("gemma3", ("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"), "gemma3", 5, _GEMMA3,
           rope_local_base=10_000.0, gguf_wide_scale_layers=62),
    # EmbeddingGemma: bidirectional, with the sentence-transformers head (a Gemma3ForCausalLM config.json with
    # use_bidirectional_attention is read as it too)
    Family("embeddinggemma", ("Gemma3TextModel",), "gemma-embedding", 5, dict(_GEMMA3, bidirectional=True),
           rope_local_base=10_000.0),
    # RecurrentGemma (Griffin): MQA local attention over 2048 tokens, half-width RoPE, biased MLP and output
    # projection, sqrt(hidden_size) rounded to bfloat16 as the embedding scale.
    Family("recurrentgemma", ("RecurrentGemmaForCausalLM",), None, 0, dict(
        rope_fraction=0.5, final_softcap=30.0, sliding_window=2048, conv1d_width=4, mlp_bias=True, attn_out_bias=True,
        embed_scale_bf16=True)),
)}

HF_ARCHITECTURES: dict[str, Family] = {arch: f for f in FAMILIES.values() for arch in f.hf_architectures}
GGUF_ARCHS: dict[str, Family] = {f.gguf_architecture: f for f in FAMILIES.values() if f.gguf_architecture}

# Special token ids: our config field -> (Hugging Face config.json key, GGUF metadata key).
SPECIAL_TOKENS = {"bos_id": ("bos_token_id", "tokenizer.ggml.bos_token_id"),
                  "eos_id": ("eos_token_id", "tokenizer.ggml.eos_token_id"),
                  "pad_id": ("pad_token_id", "tokenizer.ggml.padding_token_id")}


def special_token_ids(lookup: Callable[[str], object], source: str) -> dict[str, int]:
    """{"bos_id", "eos_id", "pad_id": id} for the ids a checkpoint states. lookup(key) -> value or None, with
    the keys of `source` ("hf" | "gguf"); a list (a config.json's several eos ids) gives its first id."""
    column = {"hf": 0, "gguf": 1}[source]
    out = {}
    for ours, keys in SPECIAL_TOKENS.items():
        value = lookup(keys[column])
        if isinstance(value, list):
            value = value[0]
        if value is not None:
            out[ours] = value
    return out
