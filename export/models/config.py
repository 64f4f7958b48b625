"""One frozen config for the Gemma family (Gemma 1/2/3, CodeGemma, ShieldGemma, EmbeddingGemma,
RecurrentGemma). Everything that tells the variants apart is a field here; the modules in
layers.py and griffin.py read these fields and nothing else."""
from __future__ import annotations

import dataclasses
import enum
import math
import struct

from runtime_py import contract

from .config_checks import check_config


class LayerType(str, enum.Enum):
    GLOBAL = contract.FULL_ATTENTION        # attends to every earlier token; full-length cache
    LOCAL = contract.SLIDING_ATTENTION      # attends to the last `sliding_window` tokens; ring-buffer cache
    RECURRENT = contract.RECURRENT          # Griffin recurrent block (Conv1D + RG-LRU); fixed-size state


def griffin_pattern(num_layers: int) -> tuple[LayerType, ...]:
    """RecurrentGemma's residual blocks: (recurrent, recurrent, local attention), repeated."""
    return tuple(LayerType.LOCAL if i % 3 == 2 else LayerType.RECURRENT for i in range(num_layers))


def round_to_bfloat16(x: float) -> float:
    """x rounded to the nearest bfloat16 (ties to even), as a float."""
    bits = struct.unpack("<I", struct.pack("<f", x))[0]
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def layer_pattern(num_layers: int, local_per_global: int) -> tuple[LayerType, ...]:
    """`local_per_global` sliding layers then one global layer, repeated (Gemma 2: 1, Gemma 3: 5).
    0 means every layer is global (Gemma 1)."""
    period = local_per_global + 1
    return tuple(LayerType.GLOBAL if (i + 1) % period == 0 else LayerType.LOCAL
                 for i in range(num_layers))


@dataclasses.dataclass(frozen=True)
class EmbeddingHead:
    """EmbeddingGemma's sentence-transformers head: mean pooling -> dense -> dense -> L2 norm."""
    dense_dims: tuple[int, ...] = (3072, 768)   # output width of each bias-free linear layer
    matryoshka_dims: tuple[int, ...] = (768, 512, 256, 128)


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    family: str                          # gemma | gemma2 | gemma3 | embeddinggemma | recurrentgemma
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    layer_types: tuple[LayerType, ...]
    sliding_window: int | None = None    # tokens a LOCAL layer sees, itself included
    rope_base: float = 10_000.0          # GLOBAL layers
    rope_local_base: float = 10_000.0    # LOCAL layers
    rope_scale: float = 1.0              # linear position scaling on GLOBAL layers (Gemma 3 4B+)
    rope_fraction: float = 1.0           # share of head_dim that RoPE rotates (RecurrentGemma: 0.5)
    query_pre_attn_scalar: float | None = None   # attention scale = this ** -0.5 (None: head_dim)
    attn_softcap: float | None = None
    final_softcap: float | None = None
    qk_norm: bool = False
    sandwich_norms: bool = False         # post-attention and pre/post-feedforward norms (Gemma 2+)
    rms_eps: float = 1e-6
    max_position: int = 8192
    bidirectional: bool = False          # EmbeddingGemma: encoder attention, no causal mask
    embedding_head: EmbeddingHead | None = None
    # RecurrentGemma (Griffin): RG-LRU width (None: hidden_size), Conv1D width, biases on the MLP
    # and the attention output projection, and sqrt(hidden_size) rounded to bfloat16 as the
    # embedding scale (what its checkpoints were trained with).
    lru_width: int | None = None
    conv1d_width: int = 4
    mlp_bias: bool = False
    attn_out_bias: bool = False
    embed_scale_bf16: bool = False
    # Vision-language decoders (export.models.vlm). PaliGemma counts RoPE positions from 1
    # (transformers' "1-indexed" position_ids); caches and masks still count from 0.
    position_offset: int = 0
    # Whether a bidirectional block (Gemma 3's image tokens, PaliGemma's prompt prefix) is still cut by the
    # sliding window on LOCAL layers: transformers ANDs the window after Gemma 3's block overlay but ORs
    # PaliGemma 2's prefix block after the window.
    blocks_in_window: bool = True
    bos_id: int = 2
    eos_id: int = 1
    pad_id: int = 0

    def __post_init__(self):
        if not self.layer_types:
            raise ValueError("layer_types is empty: a model needs at least one layer")
        check_config(self)                   # types, signs and bounds first: nothing below divides by zero
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if LayerType.LOCAL in self.layer_types and not self.sliding_window:
            raise ValueError(f"{LayerType.LOCAL.value} layers need sliding_window")
        if LayerType.RECURRENT in self.layer_types and self.recurrent_width % self.num_heads:
            raise ValueError(f"lru_width {self.recurrent_width} is not a multiple of num_heads {self.num_heads} "
                             f"(the RG-LRU gates are block-diagonal, one block per head)")

    @property
    def num_layers(self) -> int:
        return len(self.layer_types)

    @property
    def attn_scale(self) -> float:
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    @property
    def embed_scale(self) -> float:
        scale = math.sqrt(self.hidden_size)
        return round_to_bfloat16(scale) if self.embed_scale_bf16 else scale

    @property
    def rotary_dim(self) -> int:
        """Leading dimensions of each head that RoPE rotates; the rest pass through."""
        return int(self.head_dim * self.rope_fraction)

    @property
    def recurrent_width(self) -> int:
        return self.lru_width or self.hidden_size

    def cache_length(self, layer: int, max_len: int) -> int:
        """Slots a layer's KV cache needs to decode up to `max_len` positions (0: no KV cache)."""
        if self.layer_types[layer] is LayerType.RECURRENT:
            return 0
        if self.layer_types[layer] is LayerType.LOCAL:
            return min(self.sliding_window, max_len)
        return max_len

    def replace(self, **kw) -> "GemmaConfig":
        return dataclasses.replace(self, **kw)
