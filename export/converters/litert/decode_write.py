"""The `decode` signature's cache write: one slot, written in place.

The reference model (export.models) writes its ring-buffer caches with a gather + select over every slot and
attends over (old cache, new tokens) concatenated: any T, any target. For one new token on LiteRT that costs
four whole-cache tensors per cache and step (a CONCATENATION, a GATHER_ND and two SELECT_V2s, all of them run
by TFLite's reference kernels outside XNNPACK). While `one_slot_writes(model)` is active, every attention layer
instead writes its key and value with one DYNAMIC_UPDATE_SLICE at slot = position % S (the slot the reference
write picks for one token) and attends over the written cache: S keys, the slot's old entry (position - S,
never visible: before the start on a global layer, outside the window on a sliding one) replaced by the new
token, which every query sees (offset 0). Same keys, values and mask as the reference for T = 1, so the same
logits and caches. Swapped at conversion time only, for T = 1; prefill keeps the reference write (padded
chunks, padding.py).

The attention then reads the written caches as they are stored, [B, G, S, D]: q.k^T is a BATCH_MATMUL with adj_y
on the K cache and probs.v a BATCH_MATMUL on the V cache, nothing between the caches and those two ops. The
odml.scaled_dot_product_attention composite (composites.py) is left out of this signature: its [B, K, G, D]
interface puts a RESHAPE (TRANSPOSE when G > 1) on each cache in front of it and its decomposition multiplies
by the K cache as a dynamic FULLY_CONNECTED, and XNNPACK copies or packs each of those whole every step.
litert-torch's own `export_hf` decode graph holds no attention composite either."""
from __future__ import annotations

import contextlib
import types

import torch
from litert_torch.generative.custom_ops.bmm_4d import bmm_4d
from litert_torch.generative.custom_ops.dynamic_update_slice import dynamic_update_slice

from ...models import layers
from ...models.cache import AttentionCache
from .composites import MASKED


def _write_slot(cache: torch.Tensor, new: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """cache [B, G, S, D] with new [B, G, 1, D] at slot `slot` (0-d int) along axis 2."""
    zero = torch.zeros((), dtype=slot.dtype)
    return dynamic_update_slice(cache, new, [zero, zero, slot, zero])


def one_slot_forward(self: layers.Attention, x, rope, mask, positions, cache):
    """layers.Attention.forward for one new token: mask [1, 1, S + 1] over (cache slots, the new token)."""
    if cache is None or x.shape[1] != 1:
        return layers.Attention.forward(self, x, rope, mask, positions, cache)
    q, k, v, _ = self.project(x, rope, positions, None)                  # q/k/v after norms and RoPE
    S = cache.slots
    slot = torch.remainder(positions[0], S)
    written = AttentionCache(_write_slot(cache.k, k, slot), _write_slot(cache.v, v, slot))
    seen = mask[..., :S] | (torch.arange(S, dtype=slot.dtype) == slot)
    heads = layers.tap(self, "self_attn.o_proj.input", attend(self, q, written.k, written.v, seen))   # an SAE's site
    return self.o_proj(heads), written


def attend(self: layers.Attention, q, keys, values, seen):
    """layers.Attention.core for one new token (same math): q [B, H, 1, D], keys/values [B, G, S, D] (the caches
    as stored), bool seen [1, 1, S] -> [B, 1, H*D]."""
    c = self.config
    B, H, _, D = q.shape
    G = c.num_kv_heads
    q = q.reshape(B, G, H // G, D)                                  # heads of a group share K/V
    scores = bmm_4d(q, keys) * c.attn_scale                         # [B, G, R, S]; contracts D of both
    if c.attn_softcap is not None:
        scores = torch.tanh(scores / c.attn_softcap) * c.attn_softcap
    bias = torch.where(seen, 0.0, MASKED).to(q.dtype)[:, None]      # [1, 1, 1, S]
    probs = torch.softmax(scores + bias, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.einsum("bgrs,bgsd->bgrd", probs, values)            # 4-D, lowered without reshaping the V cache
    return out.reshape(B, 1, H * D)


@contextlib.contextmanager
def one_slot_writes(model: torch.nn.Module):
    """Within this block, `model`'s attention layers run one new token as one_slot_forward (per-instance
    overrides, removed on exit)."""
    swapped = [m for m in model.modules() if type(m) is layers.Attention]
    for m in swapped:
        m.forward = types.MethodType(one_slot_forward, m)
    try:
        yield
    finally:
        for m in swapped:
            del m.forward
