"""Shared building blocks of the Gemma family: one norm, one RoPE, one attention, one MLP.
Shapes: B batch, T new tokens, S cache slots, H query heads, G kv heads, R = H // G, D head dim."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cache import AttentionCache
from .config import GemmaConfig, LayerType
from .griffin import RecurrentBlock


class RMSNorm(nn.Module):
    """Gemma RMSNorm: x / rms(x) * (1 + w), computed in fp32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * (1.0 + self.weight.float())).type_as(x)


def rope_tables(positions: torch.Tensor, head_dim: int, base: float, scale: float = 1.0):
    """cos, sin of shape [T, D] for rotate-half RoPE (HF layout)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device)
                                .float() / head_dim))
    freqs = (positions.float() / scale)[:, None] * inv_freq[None, :]   # [T, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)                              # [T, D]
    return emb.cos(), emb.sin()


def rope_params(config: GemmaConfig, layer_type: LayerType) -> tuple[float, float]:
    """(base, linear scale) of a layer type's RoPE."""
    if layer_type is LayerType.GLOBAL:
        return config.rope_base, config.rope_scale
    return config.rope_local_base, 1.0


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, D]; cos/sin [T, R] rotate the first R <= D dimensions (partial RoPE)."""
    R = cos.shape[-1]
    if R < x.shape[-1]:
        return torch.cat((apply_rope(x[..., :R], cos, sin), x[..., R:]), dim=-1)
    half = R // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x.float() * cos + rotated.float() * sin).type_as(x)


def visible(config: GemmaConfig, layer_type: LayerType, offset: torch.Tensor) -> torch.Tensor:
    """Whether a query may see a key `offset` = query position - key position away (bool, offset's
    shape): causal unless bidirectional, within the sliding window on LOCAL layers."""
    allowed = torch.ones_like(offset, dtype=torch.bool) if config.bidirectional else offset >= 0
    if layer_type is LayerType.LOCAL:
        if config.bidirectional:   # a window centred on the query (transformers: window // 2 + 1 each side)
            allowed = allowed & (offset.abs() < config.sliding_window // 2 + 1)
        else:
            allowed = allowed & (offset < config.sliding_window)
    return allowed


def attention_mask(config: GemmaConfig, layer_type: LayerType, positions: torch.Tensor,
                   key_positions: torch.Tensor) -> torch.Tensor:
    """Which keys each query may see: bool [T, K]. key_positions < 0 marks empty cache slots."""
    return (key_positions[None, :] >= 0) & visible(config, layer_type, positions[:, None] - key_positions[None, :])


def block_overlay(config: GemmaConfig, layer_type: LayerType, mask: torch.Tensor, positions: torch.Tensor,
                  blocks: torch.Tensor) -> torch.Tensor:
    """`mask` [B or 1, T, S + T] with each new token also seeing the new tokens of its own block both ways:
    blocks [B, T] int, equal ids >= 0 = one block (Gemma 3's image tokens, PaliGemma's prompt prefix), as
    transformers' blockwise overlay. A block lies within one call, so cached keys (the first S columns) gain
    nothing. On LOCAL layers the window still applies unless config.blocks_in_window is False."""
    T = blocks.shape[1]
    same = (blocks[:, :, None] == blocks[:, None, :]) & (blocks[:, :, None] >= 0)         # [B, T, T]
    if layer_type is LayerType.LOCAL and config.blocks_in_window:
        same = same & ((positions[:, None] - positions[None, :]) < config.sliding_window)
    new = mask[..., -T:] | same
    return torch.cat((mask[..., :-T].expand(new.shape[0], -1, -1), new), dim=-1)


class Attention(nn.Module):
    def __init__(self, config: GemmaConfig, layer_type: LayerType):
        super().__init__()
        c = config
        self.config, self.layer_type = c, layer_type
        self.q_proj = nn.Linear(c.hidden_size, c.num_heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.num_heads * c.head_dim, c.hidden_size, bias=c.attn_out_bias)
        if c.qk_norm:
            self.q_norm = RMSNorm(c.head_dim, c.rms_eps)
            self.k_norm = RMSNorm(c.head_dim, c.rms_eps)
        self.rope_base, self.rope_scale = rope_params(c, layer_type)
        self.taps = {}     # "self_attn.o_proj.input" -> callable(z) -> z (export.models.sae); not parameters

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor,
                positions: torch.Tensor, cache: AttentionCache | None):
        """x: [B, T, d]; mask: bool [B or 1, T, S + T] over (cache slots, new tokens)."""
        q, keys, values, cache = self.project(x, rope, positions, cache)
        return self.o_proj(tap(self, "self_attn.o_proj.input", self.core(q, keys, values, mask))), cache

    def project(self, x, rope, positions, cache):
        """Projections, q/k norms, RoPE and the cache write -> q [B, H, T, D], keys/values
        [B, G, S+T, D] over (old cache slots, new tokens), and the updated cache."""
        c = self.config
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, c.num_heads, c.head_dim)
        k = self.k_proj(x).view(B, T, c.num_kv_heads, c.head_dim)
        v = self.v_proj(x).view(B, T, c.num_kv_heads, c.head_dim)
        if c.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)    # [B, heads, T, D]
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is None:
            return q, k, v, None
        keys, values = torch.cat((cache.k, k), 2), torch.cat((cache.v, v), 2)   # [B, G, S+T, D]
        return q, keys, values, cache.write(positions, k, v)

    def core(self, q, keys, values, mask):
        """Scaled dot-product attention with softcap and mask -> [B, T, H*D]. Exporters may
        replace this method (e.g. with a composite) and keep everything around it."""
        c = self.config
        B, _, T, _ = q.shape
        G, R = c.num_kv_heads, c.num_heads // c.num_kv_heads
        q = q.reshape(B, G, R * T, c.head_dim)                                 # heads of a group share K/V
        scores = torch.matmul(q, keys.transpose(-1, -2)) * c.attn_scale         # [B, G, R*T, S+T]
        if c.attn_softcap is not None:
            scores = torch.tanh(scores / c.attn_softcap) * c.attn_softcap
        scores = scores.view(B, G, R, T, -1)
        scores = scores.masked_fill(~mask[:, None, None], torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs.view(B, G, R * T, -1), values)                 # [B, G, R*T, D]
        return out.view(B, c.num_heads, T, c.head_dim).transpose(1, 2).reshape(B, T, -1)


class MLP(nn.Module):
    """GeGLU feed-forward (tanh-approximated GELU); RecurrentGemma's has biases."""

    def __init__(self, config: GemmaConfig):
        super().__init__()
        d, f, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(d, f, bias=bias)
        self.up_proj = nn.Linear(d, f, bias=bias)
        self.down_proj = nn.Linear(f, d, bias=bias)

    def forward(self, x):
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm block; with sandwich_norms (Gemma 2+) also post-norms on both branches.
    In Gemma 1 checkpoints `post_attention_layernorm` is the norm *before* the MLP. The temporal
    block is attention (`self_attn`) or, in RecurrentGemma, Griffin's recurrent block (`recurrent`)."""

    def __init__(self, config: GemmaConfig, layer_type: LayerType):
        super().__init__()
        self.sandwich = config.sandwich_norms
        norm = lambda: RMSNorm(config.hidden_size, config.rms_eps)  # noqa: E731
        self.input_layernorm = norm()
        if layer_type is LayerType.RECURRENT:
            self.recurrent = RecurrentBlock(config)
        else:
            self.self_attn = Attention(config, layer_type)
        self.is_recurrent = layer_type is LayerType.RECURRENT
        self.post_attention_layernorm = norm()
        if self.sandwich:
            self.pre_feedforward_layernorm = norm()
            self.post_feedforward_layernorm = norm()
        self.mlp = MLP(config)
        # site -> callable(x) -> x: a sparse autoencoder's probe (export.models.sae), kept out of the parameters
        self.taps = {}

    def forward(self, x, rope, mask, positions, cache):
        temporal = self.recurrent if self.is_recurrent else self.self_attn
        h, cache = temporal(self.input_layernorm(x), rope, mask, positions, cache)
        if self.sandwich:
            x = x + self.post_attention_layernorm(h)
            mlp = self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
            return tap(self, "output", x + tap(self, "post_feedforward_layernorm.output", mlp)), cache
        x = x + h
        return tap(self, "output", x + self.mlp(self.post_attention_layernorm(x))), cache


def tap(module: nn.Module, site: str, x: torch.Tensor) -> torch.Tensor:
    """x through `module`'s tap at `site` (transformers' module path within the layer), if it has one."""
    fn = module.taps.get(site) if module.taps else None
    return x if fn is None else fn(x)
