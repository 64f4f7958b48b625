"""The named, flat tensor interface of the LiteRT artifact (LiteRT-LM's I/O contract) mapped onto
our reference model's forward:

  inputs   tokens int32 [1, T], input_pos int32 [T],
           kv_cache_k_{i}, kv_cache_v_{i} float32 [1, G, S_i, D] for every layer i
  outputs  logits float32 [1, T, V] (prefill signatures: or none, contract.PREFILL_LOGITS), kv_cache_k_{i},
           kv_cache_v_{i} (the updated caches)

S_i is the sliding window for sliding layers (a ring buffer, slot = position % S) and the
context length for global ones. RecurrentGemma's recurrent layers have no KV cache but a state
that goes in and out the same way: rg_lru_state_{i} float32 [1, W] and conv1d_state_{i} float32
[1, K-1, W] (W lru width, K conv width). One signature per sequence length: `prefill_{T}` and `decode`
(T = 1). The attention mask is computed in-graph from input_pos, so there is no mask input. `decode` writes
its one slot in place and attends over the caches as stored (decode_write.py).

Padded chunks: LiteRT-LM runs a chunk of n < T tokens through `prefill_T` with the tail zeroed
(tokens 0, input_pos 0). The graph therefore treats input_pos as `start = input_pos[0]` plus the
count n of leading entries equal to start, start + 1, ...: the model sees contiguous positions
start..start+T-1 (so padded tokens sit in the future, invisible to real ones), and the caches keep
only the n real tokens, whatever the padding would have overwritten; the recurrent states advance
over the n real tokens only (padding.py wraps the reference model for both).
"""
from __future__ import annotations

import torch
from torch import nn

from runtime_py.contract import INPUT_POS, LOGITS, TOKENS, kv_cache_names, state_names

from ...models.cache import AttentionCache, RecurrentState
from ...models.config import GemmaConfig, LayerType
from .decode_write import one_slot_writes
from .padding import padded_chunk


def _layer_names(config: GemmaConfig, i: int) -> tuple[str, str]:
    """A layer's two carried tensors, in the order of its cache entry's fields (AttentionCache: k, v;
    RecurrentState: rg_lru, conv1d)."""
    return state_names(i) if config.layer_types[i] is LayerType.RECURRENT else kv_cache_names(i)


def cache_names(config: GemmaConfig) -> list[str]:
    """kv_cache_k_0, kv_cache_v_0, kv_cache_k_1, ... (the order of the signature's inputs/outputs);
    rg_lru_state_{i}, conv1d_state_{i} for recurrent layers."""
    return [name for i in range(config.num_layers) for name in _layer_names(config, i)]


def cache_shapes(config: GemmaConfig, cache_length: int) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for i in range(config.num_layers):
        a, b = _layer_names(config, i)
        if config.layer_types[i] is LayerType.RECURRENT:
            W = config.recurrent_width
            shapes[a], shapes[b] = (1, W), (1, config.conv1d_width - 1, W)
        else:
            shapes[a] = shapes[b] = (1, config.num_kv_heads, config.cache_length(i, cache_length), config.head_dim)
    return shapes


class SignatureModule(nn.Module):
    """forward(tokens, input_pos, **kv_caches) -> {"logits", "kv_cache_k_0", "kv_cache_v_0", ...}.
    The output dict's keys become the .tflite output names; the sample kwargs' keys the input names."""

    def __init__(self, model: nn.Module, logits: bool = True):
        super().__init__()
        self.model = model
        self.names = [_layer_names(model.config, i) for i in range(model.config.num_layers)]
        self.recurrent = [t is LayerType.RECURRENT for t in model.config.layer_types]
        self.logits = logits

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, **caches: torch.Tensor):
        positions = input_pos[0] + torch.arange(input_pos.shape[0], dtype=input_pos.dtype)
        cache = tuple((RecurrentState if recurrent else AttentionCache)(caches[a], caches[b])
                      for (a, b), recurrent in zip(self.names, self.recurrent))
        if tokens.shape[1] == 1:                                         # decode: one token, never padded
            with one_slot_writes(self.model):
                logits, new_cache = self.model(tokens, positions, cache)
        else:
            real = (input_pos == positions).sum()                        # real tokens, before the padding
            with padded_chunk(self.model, cache, input_pos[0], real) as chunk:
                logits, new_cache = self.model(tokens, positions, chunk)
        out = {LOGITS: logits} if self.logits else {}
        for (a, b), entry in zip(self.names, new_cache):
            out[a], out[b] = entry
        return out


def sample_inputs(config: GemmaConfig, length: int, cache_length: int) -> dict[str, torch.Tensor]:
    """Sample kwargs for a signature of `length` new tokens (their dtypes/shapes define the inputs)."""
    sample = {TOKENS: torch.zeros(1, length, dtype=torch.int32),
              INPUT_POS: torch.arange(length, dtype=torch.int32)}
    for name, shape in cache_shapes(config, cache_length).items():
        sample[name] = torch.zeros(shape, dtype=torch.float32)
    return sample
