"""The named, flat tensor interface of the LiteRT artifact (LiteRT-LM's I/O contract) mapped onto
our reference model's forward:

  inputs   tokens int32 [1, T], input_pos int32 [T],
           kv_cache_k_{i}, kv_cache_v_{i} float32 [1, G, S_i, D] for every layer i
  outputs  logits float32 [1, T, V], kv_cache_k_{i}, kv_cache_v_{i} (the updated caches)

S_i is the sliding window for sliding layers (a ring buffer, slot = position % S) and the
context length for global ones. One signature per sequence length: `prefill_{T}` and `decode`
(T = 1). The attention mask is computed in-graph from input_pos, so there is no mask input.

Padded chunks: LiteRT-LM runs a chunk of n < T tokens through `prefill_T` with the tail zeroed
(tokens 0, input_pos 0). The graph therefore treats input_pos as `start = input_pos[0]` plus the
count n of leading entries equal to start, start + 1, ...: the model sees contiguous positions
start..start+T-1 (so padded tokens sit in the future, invisible to real ones), and the caches keep
only the n real tokens (`_ChunkCache.write`), whatever the padding would have overwritten.
"""
from __future__ import annotations

import torch
from torch import nn

from ...models.cache import AttentionCache
from ...models.config import GemmaConfig


def cache_names(num_layers: int) -> list[str]:
    """kv_cache_k_0, kv_cache_v_0, kv_cache_k_1, ... (the order of the signature's inputs/outputs)."""
    return [f"kv_cache_{kv}_{i}" for i in range(num_layers) for kv in ("k", "v")]


def cache_shapes(config: GemmaConfig, cache_length: int) -> dict[str, tuple[int, ...]]:
    return {f"kv_cache_{kv}_{i}": (1, config.num_kv_heads, config.cache_length(i, cache_length), config.head_dim)
            for i in range(config.num_layers) for kv in ("k", "v")}


class _ChunkCache(AttentionCache):
    """An AttentionCache that keeps only a padded chunk's real tokens (positions before `end`)."""

    def write(self, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> AttentionCache:
        return AttentionCache(self.k, self.v).write(positions, k, v, end=self.end)


class SignatureModule(nn.Module):
    """forward(tokens, input_pos, **kv_caches) -> {"logits", "kv_cache_k_0", "kv_cache_v_0", ...}.
    The output dict's keys become the .tflite output names; the sample kwargs' keys the input names."""

    def __init__(self, model: nn.Module, logits: bool = True):
        super().__init__()
        self.model = model
        self.num_layers = model.config.num_layers
        self.logits = logits

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, **caches: torch.Tensor):
        positions = input_pos[0] + torch.arange(input_pos.shape[0], dtype=input_pos.dtype)
        end = input_pos[0] + (input_pos == positions).sum()          # start + real tokens
        cache = []
        for i in range(self.num_layers):
            entry = _ChunkCache(caches[f"kv_cache_k_{i}"], caches[f"kv_cache_v_{i}"])
            entry.end = end
            cache.append(entry)
        logits, new_cache = self.model(tokens, positions, tuple(cache))
        out = {"logits": logits} if self.logits else {}
        for i, entry in enumerate(new_cache):
            out[f"kv_cache_k_{i}"] = entry.k
            out[f"kv_cache_v_{i}"] = entry.v
        return out


def sample_inputs(config: GemmaConfig, length: int, cache_length: int) -> dict[str, torch.Tensor]:
    """Sample kwargs for a signature of `length` new tokens (their dtypes/shapes define the inputs)."""
    sample = {"tokens": torch.zeros(1, length, dtype=torch.int32),
              "input_pos": torch.arange(length, dtype=torch.int32)}
    for name, shape in cache_shapes(config, cache_length).items():
        sample[name] = torch.zeros(shape, dtype=torch.float32)
    return sample
