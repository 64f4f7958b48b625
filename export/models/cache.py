"""Explicit, functional decoding state.

A model's cache is a tuple with one entry per layer; the entry's type is chosen by the layer's
temporal block: an AttentionCache for attention, a RecurrentState for Griffin's recurrent blocks. Every attention cache is
a ring buffer of `S` slots: slot j holds the newest position p with p % S == j. Sliding-window
layers get S = window, global layers S = the longest sequence to decode, so a global cache never
wraps. Entries are NamedTuples, which torch.export flattens into stable, named tensors.
"""
from __future__ import annotations

from typing import NamedTuple, Union

import torch

from .config import GemmaConfig, LayerType


class AttentionCache(NamedTuple):
    k: torch.Tensor   # [B, Hkv, S, D]
    v: torch.Tensor   # [B, Hkv, S, D]

    @property
    def slots(self) -> int:
        return self.k.shape[2]

    def slot_positions(self, start: torch.Tensor) -> torch.Tensor:
        """Position held by each slot before writing tokens from `start` on; negative = empty. [S]"""
        j = torch.arange(self.slots, device=self.k.device)
        last = start - 1
        return last - torch.remainder(last - j, self.slots)

    def write(self, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> "AttentionCache":
        """Store new keys/values ([B, Hkv, T, D], contiguous positions) at slots position % S; when
        T > S only the newest S survive. Written as a gather + select over all slots (no scatter),
        which every export target lowers with static shapes."""
        T, S = k.shape[2], self.slots
        start = positions[0]
        end = start + T
        j = torch.arange(S, device=k.device)
        first = start + torch.remainder(j - start, S)                 # first new position landing in slot j
        last = first + S * torch.div(end - 1 - first, S, rounding_mode="floor")   # the newest one
        written = (first < end)[None, None, :, None]                 # [1, 1, S, 1]
        t = torch.clamp(last - start, 0, T - 1)                      # [S] index into the new tokens
        return AttentionCache(torch.where(written, k.index_select(2, t), self.k),
                              torch.where(written, v.index_select(2, t), self.v))


class RecurrentState(NamedTuple):
    """A Griffin recurrent block's whole memory of the past, the same size at any length."""
    rg_lru: torch.Tensor   # [B, W] RG-LRU hidden state, always float32
    conv1d: torch.Tensor   # [B, K-1, W] the Conv1D's last K-1 inputs, oldest first


CacheEntry = Union[AttentionCache, RecurrentState]
Cache = tuple[CacheEntry, ...]


def init_cache(config: GemmaConfig, max_len: int, batch: int = 1,
               dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Cache:
    """Empty cache for decoding up to `max_len` positions."""
    if max_len > config.max_position:
        raise ValueError(f"max_len {max_len} exceeds the model's context length {config.max_position}")

    def entry(i):
        if config.layer_types[i] is LayerType.RECURRENT:
            W = config.recurrent_width
            return RecurrentState(torch.zeros(batch, W, dtype=torch.float32, device=device),
                                  torch.zeros(batch, config.conv1d_width - 1, W, dtype=dtype, device=device))
        shape = (batch, config.num_kv_heads, config.cache_length(i, max_len), config.head_dim)
        return AttentionCache(torch.zeros(shape, dtype=dtype, device=device),
                              torch.zeros(shape, dtype=dtype, device=device))
    return tuple(entry(i) for i in range(config.num_layers))
