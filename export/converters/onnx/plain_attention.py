"""Attention over the new tokens alone in plain ONNX ops, under any mask: RoPE and the core of
export.models.layers.Attention (Attention.project's RoPE, Attention.core) without a cache. The
bidirectional embedder uses it for every layer; the vision-language decoder for a prompt with images, where
image tokens see each other both ways (GroupQueryAttention is causal only)."""
from __future__ import annotations

import numpy as np

from ...models.config import GemmaConfig
from .graph import Graph


def plain_attention(g: Graph, c: GemmaConfig, name: str, q: str, k: str, v: str, positions: str,
                    rope: tuple[str, str], bias: str) -> str:
    """q [B, T, H*D], k / v [B, T, G*D] (before RoPE), positions [B, T] int64, rope: (cos, sin) caches,
    bias [B or 1, 1, 1, T, T] added to the scores (0: visible, float32 min: hidden) -> [B, T, H*D]."""
    H, G, D = c.num_heads, c.num_kv_heads, c.head_dim
    kw = dict(domain="com.microsoft", interleaved=0)
    q = g.op("RotaryEmbedding", [q, positions, *rope], f"{name}/q_rotary", num_heads=H, **kw)
    k = g.op("RotaryEmbedding", [k, positions, *rope], f"{name}/k_rotary", num_heads=G, **kw)

    def heads(x, count, part):                                   # [B, T, count*D] -> [B, count, T, D]
        x = g.op("Reshape", [x, g.const([0, 0, count, D])], f"{name}/{part}/Reshape")
        return g.op("Transpose", [x], f"{name}/{part}/Transpose", perm=[0, 2, 1, 3])
    qh = g.op("Reshape", [heads(q, H, "q"), g.const([0, G, -1, D])], f"{name}/q/group")        # [B, G, R*T, D]
    kh, vh = heads(k, G, "k"), heads(v, G, "v")                                                # [B, G, T, D]
    s = g.op("MatMul", [qh, g.op("Transpose", [kh], f"{name}/kT", perm=[0, 1, 3, 2])], f"{name}/scores")
    s = g.op("Mul", [s, g.const(c.attn_scale, np.float32)], f"{name}/scale")                   # [B, G, R*T, T]
    if c.attn_softcap is not None:
        cap = g.const(c.attn_softcap, np.float32)
        s = g.op("Mul", [g.op("Tanh", [g.op("Div", [s, cap], f"{name}/softcap/Div")], f"{name}/softcap/Tanh"), cap],
                 f"{name}/softcap/Mul")
    T = g.op("Shape", [kh], f"{name}/T", start=2, end=3)
    shape5d = g.op("Concat", [g.const([0, G, H // G, -1]), T], f"{name}/scores5d_shape", axis=0)
    s = g.op("Reshape", [s, shape5d], f"{name}/scores5d")                                    # [B, G, R, T, T]
    p = g.op("Softmax", [g.op("Add", [s, bias], f"{name}/mask")], f"{name}/Softmax", axis=-1)
    p = g.op("Reshape", [p, g.const([0, G, -1, 0])], f"{name}/probs4d")                       # [B, G, R*T, T]
    o = g.op("MatMul", [p, vh], f"{name}/context")                                           # [B, G, R*T, D]
    o = g.op("Transpose", [g.op("Reshape", [o, g.const([0, H, -1, D])], f"{name}/heads")],
             f"{name}/Transpose", perm=[0, 2, 1, 3])                                         # [B, T, H, D]
    return g.op("Reshape", [o, g.const([0, 0, H * D])], f"{name}/merge")


def additive(g: Graph, allowed: str, name: str) -> str:
    """bool -> 0 where allowed, float32 min elsewhere."""
    return g.op("Where", [allowed, g.const(0.0, np.float32), g.const(np.finfo(np.float32).min, np.float32)], name)
