"""The Gemma family as one model: a backbone of residual blocks (attention or, for RecurrentGemma,
Griffin's recurrent blocks) plus either a tied LM head (causal LMs) or a pooling head
(EmbeddingGemma). Parameter names match Hugging Face (Gemma) checkpoints."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cache import Cache
from .config import GemmaConfig, LayerType
from .layers import DecoderLayer, RMSNorm, attention_mask, block_overlay, rope_tables


class GemmaBackbone(nn.Module):
    def __init__(self, config: GemmaConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, t) for t in config.layer_types)
        self.norm = RMSNorm(config.hidden_size, config.rms_eps)

    def forward(self, tokens: torch.Tensor | None, positions: torch.Tensor, cache: Cache | None = None,
                padding_mask: torch.Tensor | None = None, embeds: torch.Tensor | None = None,
                blocks: torch.Tensor | None = None):
        """tokens [B, T] (or embeds [B, T, d]: the residual stream's start, e.g. with image rows spliced in);
        positions [T], contiguous; cache from init_cache or None (no state kept); padding_mask [B, T] bool,
        True = real token (only without a cache); blocks [B, T] int, tokens with the same id >= 0 attend to
        each other both ways (layers.block_overlay). -> ([B, T, d], cache)."""
        c = self.config
        x = self.embed(tokens) if embeds is None else embeds
        ropes, masks = self.attention_inputs(positions, cache, padding_mask, blocks)
        new_cache = []
        for i, layer in enumerate(self.layers):
            t = c.layer_types[i]
            x, entry = layer(x, ropes.get(t), masks.get(t), positions, None if cache is None else cache[i])
            new_cache.append(entry)
        return self.norm(x), (None if cache is None else tuple(new_cache))

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """The residual stream's start: embed_tokens(tokens) * embed_scale, [B, T] -> [B, T, d]."""
        x = self.embed_tokens(tokens)
        return x * torch.tensor(self.config.embed_scale, dtype=x.dtype)

    def attention_inputs(self, positions: torch.Tensor, cache: Cache | None = None,
                         padding_mask: torch.Tensor | None = None,
                         blocks: torch.Tensor | None = None) -> tuple[dict, dict]:
        """({layer type: (cos, sin)}, {layer type: bool mask [B or 1, T, S + T]}): what the attention
        layers of each type are given, computed once per layer type, not per layer."""
        c = self.config
        masks, ropes = {}, {}
        for i, t in enumerate(c.layer_types):
            if t in masks or t is LayerType.RECURRENT:     # recurrent blocks need neither
                continue
            if cache is not None:
                key_pos = torch.cat((cache[i].slot_positions(positions[0]), positions))
            else:
                key_pos = positions
            m = attention_mask(c, t, positions, key_pos)[None]               # [1, T, K]
            if padding_mask is not None:
                if cache is not None:
                    raise ValueError("padding_mask is only supported without a cache")
                m = m & padding_mask[:, None, :]                              # [B, T, K]
            if blocks is not None:
                m = block_overlay(c, t, m, positions, blocks)
            masks[t] = m
            attn = self.layers[i].self_attn
            ropes[t] = rope_tables(positions + c.position_offset, c.rotary_dim, attn.rope_base, attn.rope_scale)
        return ropes, masks


class GemmaForCausalLM(nn.Module):
    def __init__(self, config: GemmaConfig):
        super().__init__()
        self.config = config
        self.model = GemmaBackbone(config)

    def forward(self, tokens: torch.Tensor | None, positions: torch.Tensor, cache: Cache | None = None,
                embeds: torch.Tensor | None = None, blocks: torch.Tensor | None = None):
        """-> (logits [B, T, V] in fp32, new cache). embeds / blocks: see GemmaBackbone.forward."""
        h, cache = self.model(tokens, positions, cache, embeds=embeds, blocks=blocks)
        return self.logits(h), cache

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """The tied LM head and the final softcap: h [B, T, d] -> logits [B, T, V] in fp32."""
        logits = F.linear(h, self.model.embed_tokens.weight).float()
        if self.config.final_softcap is not None:
            cap = self.config.final_softcap
            logits = torch.tanh(logits / cap) * cap
        return logits


class GemmaEmbedder(nn.Module):
    """EmbeddingGemma: bidirectional backbone, masked mean pooling, bias-free dense layers,
    L2 normalisation. Matryoshka truncation (`dim`) re-normalises the leading coordinates."""

    def __init__(self, config: GemmaConfig):
        super().__init__()
        if config.embedding_head is None:
            raise ValueError("GemmaEmbedder needs a config with embedding_head")
        self.config = config
        self.model = GemmaBackbone(config)
        widths = (config.hidden_size,) + config.embedding_head.dense_dims
        self.dense = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(widths, widths[1:]))

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None,
                dim: int | None = None) -> torch.Tensor:
        """tokens [B, T], attention_mask [B, T] (1 = token) -> embeddings [B, dim], unit norm."""
        if attention_mask is None:
            attention_mask = torch.ones_like(tokens)
        valid = attention_mask.bool()
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        h, _ = self.model(tokens, positions, None, padding_mask=valid)
        return self.head(h, valid, dim)

    def head(self, h: torch.Tensor, valid: torch.Tensor, dim: int | None = None) -> torch.Tensor:
        """Masked mean pooling, the dense layers, L2 normalisation: h [B, T, d], valid bool [B, T]
        -> [B, dim]."""
        w = valid.unsqueeze(-1).to(h.dtype)
        pooled = (h * w).sum(1) / w.sum(1).clamp(min=1.0)                      # [B, d]
        for dense in self.dense:
            pooled = dense(pooled)
        if dim is not None:
            allowed = self.config.embedding_head.matryoshka_dims
            if dim not in allowed:
                raise ValueError(f"dim={dim} is not a Matryoshka size of this model; choose from {allowed}")
            pooled = pooled[:, :dim]
        return F.normalize(pooled.float(), dim=-1)


def build_model(config) -> nn.Module:
    """The reference module of a GemmaConfig, or of a VisionLanguageConfig (export.models.vlm)."""
    if not isinstance(config, GemmaConfig):
        from .vlm import VisionLanguageModel
        return VisionLanguageModel(config)
    return GemmaEmbedder(config) if config.embedding_head is not None else GemmaForCausalLM(config)


def count_parameters(config: GemmaConfig) -> int:
    """Parameters of the model described by `config`, counted on the meta device (no memory)."""
    with torch.device("meta"):
        model = build_model(config)
    return sum(p.numel() for p in model.parameters())
