"""Padded prefill chunks, wrapped around the reference model (which knows nothing of padding).

LiteRT-LM runs a chunk of n < T tokens through `prefill_T` with the tail zeroed. The signatures
(signatures.py) show the model the chunk at contiguous positions start..start+T-1, so the padded
tokens sit in the future, invisible to the real ones; only the state a chunk leaves behind must
not see them:

- ChunkCache.write keeps the n real tokens' keys and values. It makes the model's ring-buffer write
  (AttentionCache.write, slot = position % S) over positions end-T..end-1 (end = start + n) with the
  real rows last and, in front of them, each slot's current content at the position that maps to it:
  every slot the padding would have reached keeps what it held, also when T > S.
- padded_chunk(model, cache, start, n) gives the model such caches and, while active, has every
  RecurrentBlock (export.models.griffin) return the state after its n-th new token: the RG-LRU's
  output there (its per-token outputs are its states) and the last K-1 Conv1D inputs up to it
  (linear_x's output, caught by a forward hook).
"""
from __future__ import annotations

import contextlib
import functools

import torch

from ...models.cache import AttentionCache, RecurrentState
from ...models.griffin import RecurrentBlock


class ChunkCache(AttentionCache):
    """An AttentionCache that keeps only a padded chunk's real tokens: set `end` (start + n) first."""

    def write(self, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> AttentionCache:
        T, S = k.shape[2], self.slots
        pad = T - (self.end - positions[0])
        t = torch.arange(T, device=k.device)
        shifted = self.end - T + t                                       # real tokens last
        held, new = torch.remainder(shifted, S), torch.clamp(t - pad, min=0)
        front = (t < pad)[None, None, :, None]
        return AttentionCache(self.k, self.v).write(
            shifted, *(torch.where(front, old.index_select(2, held), x.index_select(2, new))
                       for old, x in ((self.k, k), (self.v, v))))


@contextlib.contextmanager
def padded_chunk(model: torch.nn.Module, cache: tuple, start: torch.Tensor, real: torch.Tensor):
    """Within this block, `model` run on a chunk at `start` keeps the state after its first `real` tokens:
    yields `cache` with its attention caches as ChunkCaches; every RecurrentBlock is hooked."""
    chunk = []
    for entry in cache:
        if isinstance(entry, AttentionCache):
            entry = ChunkCache(*entry)
            entry.end = start + real
        chunk.append(entry)
    handles = []
    for block in model.modules():
        if isinstance(block, RecurrentBlock):
            caught = {}
            handles += [block.linear_x.register_forward_hook(lambda m, args, out, c=caught: c.update(xs=out)),
                        block.rg_lru.register_forward_hook(lambda m, args, out, c=caught: c.update(ys=out[0])),
                        block.register_forward_hook(functools.partial(_state_after_real_tokens, caught=caught,
                                                                      real=real))]
    try:
        yield tuple(chunk)
    finally:
        for handle in handles:
            handle.remove()


def _state_after_real_tokens(block: RecurrentBlock, args, output, *, caught: dict, real: torch.Tensor):
    """RecurrentBlock forward hook: (out, the state after the first `real` tokens)."""
    out, state = output
    if state is None:
        return output
    before = args[4]                                                     # forward(x, rope, mask, positions, state)
    window = torch.cat((before.conv1d, caught["xs"]), 1)                 # [B, K-1+T, W]
    conv = window.index_select(1, real + torch.arange(block.conv_width - 1, device=window.device))
    last = caught["ys"].index_select(1, (real - 1).clamp(min=0).reshape(1))[:, 0].float()
    return out, RecurrentState(torch.where(real > 0, last, before.rg_lru), conv)
