"""HLFB composites for the LiteRT target: while `marked_composites()` is active, our reference
model's RMSNorm and attention core trace as StableHLO composites `odml.rms_norm` and
`odml.scaled_dot_product_attention`, the op names LiteRT's GPU/NPU backends fuse and the CPU
runs through their decomposition. Swapped at conversion time only; export/models is untouched. The `decode`
signature attends without the attention composite (decode_write.py: its interface would make XNNPACK copy every
cache every step).

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


def attention_core(self: layers.Attention, q, keys, values, mask):
    """layers.Attention.core as an SDPA composite (same math): q [B, H, T, D], keys/values
    [B, G, K, D], bool mask [1, T, K] -> [B, T, H*D]."""
    B, _, T, _ = q.shape
    bias = torch.where(mask, 0.0, MASKED).to(q.dtype)[:, None]           # [1, 1, T, K]
    out = sdpa(q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2), bias,
               self.config.attn_scale, self.config.attn_softcap)
    return out.reshape(B, T, -1)


@contextlib.contextmanager
def marked_composites(model: torch.nn.Module, enabled: bool = True):
    """Within this block, `model`'s RMSNorms and attention cores trace as composites (per-instance
    method overrides, removed on exit)."""
    swapped = []
    if enabled:
        for m in model.modules():
            name, fn = {layers.RMSNorm: ("forward", rms_norm_forward),
                        layers.Attention: ("core", attention_core)}.get(type(m), (None, None))
            if fn is not None:
                setattr(m, name, types.MethodType(fn, m))
                swapped.append((m, name))
    try:
        yield
    finally:
        for m, name in swapped:
            delattr(m, name)
