"""HLFB composites for the LiteRT target: while `marked_composites()` is active, our reference
model's RMSNorm and attention core trace as StableHLO composites `odml.rms_norm` and
`odml.scaled_dot_product_attention`, the op names LiteRT's GPU/NPU backends fuse and the CPU
runs through their decomposition. Swapped at conversion time only; export/models is untouched.

Composite interfaces follow litert-torch's own Generative API (generative/layers):
  odml.rms_norm(x, w) {epsilon}            -> x * rsqrt(mean(x^2) + eps) * w, w = 1 + weight
  odml.scaled_dot_product_attention(q [B,T,H,D], k [B,K,G,D], v [B,K,G,D], mask [B|1,1,T,K] additive)
      {scale, logit_cap?}                   -> [B,T,H,D]
The decompositions compute exactly what export/models/layers.py computes.
"""
from __future__ import annotations

import contextlib
import types

import torch
from litert_torch.hlfb import StableHLOCompositeBuilder

from ...models import layers
from ...models.layers import apply_rope

# What masked keys get added to their scores. LiteRT-LM fills its own masks with -0.7 * FLT_MAX: far
# below any score, yet adding two of them (or a softcapped score) cannot overflow to -inf.
MASKED = -0.7 * torch.finfo(torch.float32).max


def rms_norm_forward(self: layers.RMSNorm, x: torch.Tensor) -> torch.Tensor:
    builder = StableHLOCompositeBuilder("odml.rms_norm", attr={"epsilon": float(self.eps)})
    x, w = builder.mark_inputs(x, 1.0 + self.weight.float())
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
    return builder.mark_outputs((y * w).type_as(x))


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float,
         softcap: float | None) -> torch.Tensor:
    """q [B,T,H,D], k/v [B,K,G,D], additive mask [1,1,T,K] -> [B,T,H,D] as one composite."""
    attr = {"scale": float(scale)}
    if softcap is not None:
        attr["logit_cap"] = float(softcap)
    builder = StableHLOCompositeBuilder("odml.scaled_dot_product_attention", attr=attr)
    q, k, v, mask = builder.mark_inputs(q, k, v, mask)
    B, T, H, D = q.shape
    G = k.shape[2]
    R = H // G
    q = q.transpose(1, 2).reshape(B, G, R * T, D)              # heads of a group share K/V
    k, v = k.transpose(1, 2), v.transpose(1, 2)                 # [B, G, K, D]
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale       # [B, G, R*T, K]
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.view(B, G, R, T, -1) + mask[:, :, None]     # mask [1, 1, 1, T, K]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(probs.view(B, G, R * T, -1), v)          # [B, G, R*T, D]
    out = out.view(B, H, T, D).transpose(1, 2)
    return builder.mark_outputs(out.contiguous())


def attention_forward(self: layers.Attention, x, rope, mask, positions, cache):
    """layers.Attention.forward with the attention core as an SDPA composite (same math). A copy of
    its projections/RoPE/cache write until layers.py exposes the core as a function of its own; keep
    in sync (tests/test_litert_export.py compares every architecture with transformers)."""
    c = self.config
    B, T, _ = x.shape
    q = self.q_proj(x).view(B, T, c.num_heads, c.head_dim)
    k = self.k_proj(x).view(B, T, c.num_kv_heads, c.head_dim)
    v = self.v_proj(x).view(B, T, c.num_kv_heads, c.head_dim)
    if c.qk_norm:
        q, k = self.q_norm(q), self.k_norm(k)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)    # [B, heads, T, D]
    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    if cache is not None:
        keys, values = torch.cat((cache.k, k), 2), torch.cat((cache.v, v), 2)   # [B, G, S+T, D]
        cache = cache.write(positions, k, v)
    else:
        keys, values = k, v
    bias = torch.where(mask, 0.0, MASKED).to(q.dtype)[:, None]           # [1, 1, T, S+T]
    out = sdpa(q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2), bias,
               c.attn_scale, c.attn_softcap)
    return self.o_proj(out.reshape(B, T, -1)), cache


@contextlib.contextmanager
def marked_composites(model: torch.nn.Module, enabled: bool = True):
    """Within this block, `model`'s RMSNorms and Attentions trace with composites (per-instance
    forward overrides, removed on exit)."""
    swapped = []
    if enabled:
        for m in model.modules():
            fn = {layers.RMSNorm: rms_norm_forward, layers.Attention: attention_forward}.get(type(m))
            if fn is not None:
                m.forward = types.MethodType(fn, m)
                swapped.append(m)
    try:
        yield
    finally:
        for m in swapped:
            del m.forward
