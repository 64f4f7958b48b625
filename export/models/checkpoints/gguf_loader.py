"""GGUF files (llama.cpp): metadata mapped onto GemmaConfig, tensors mapped onto our parameter
names (the HF text-model names), with the raw quantized blocks kept for a later lossless import.

llama.cpp conventions undone here (convert_hf_to_gguf.py, llama-model.cpp):
- every `*_norm` weight is stored as (1 + w): Gemma's RMSNorm offset is folded in;
- Gemma q/k weights are NOT permuted (only the Llama converter permutes; Gemma uses NEOX rope);
- `blk.N.ffn_norm` is the pre-MLP norm: HF `post_attention_layernorm` in Gemma 1,
  `pre_feedforward_layernorm` in Gemma 2/3 (whose `post_attention_norm` is HF `post_attention_layernorm`);
- the tied LM head is absent, or present as `output` equal to `token_embd`;
- what the metadata omits (local rope base, sliding pattern, query_pre_attn_scalar, softcaps of old
  files) comes from the per-architecture defaults llama.cpp hard-codes, tabulated in families.py;
  query_pre_attn_scalar is head_dim except at the 27B sizes, where llama.cpp uses hidden / heads."""
from __future__ import annotations

import re
from pathlib import Path

import gguf
import numpy as np
import torch

from ..config import EmbeddingHead, GemmaConfig, LayerType, layer_pattern
from ..config_checks import check_value
from ..families import GGUF_ARCHS, Family, special_token_ids
from .gguf_blocks import LAYOUTS, StoredBlocks
from .weights import CheckpointError

LLAMA_CPP_ROPE_BASE = 10_000.0         # llama.cpp's rope base when {arch}.rope.freq_base is absent

# GGUF tensor name -> our name. Block tensors are "blk.{i}.<key>.weight"; ffn_norm is per family.
GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "dense_2.weight": "dense.0.weight",        # EmbeddingGemma sentence-transformers 2_Dense
    "dense_3.weight": "dense.1.weight",        # ... and 3_Dense
}
TIED_HEAD = "output.weight"                    # optional copy of token_embd; Gemma ties the head
BLOCK_TENSORS = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": None,
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
NORM_OFFSET = 1.0                              # llama.cpp stores every *_norm weight as 1 + w
_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.weight")
_ROWS = 16_384


def gguf_to_ours(name: str, arch: Family) -> str | None:
    """Our parameter name for a GGUF tensor name; None if the name is not one we know."""
    if name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[name]
    m = _BLOCK.fullmatch(name)
    if m is None or m.group(2) not in BLOCK_TENSORS:
        return None
    return f"model.layers.{m.group(1)}.{BLOCK_TENSORS[m.group(2)] or arch.gguf_ffn_norm}.weight"


class GGUFCheckpoint:
    """An opened GGUF: `.config`, tensors under our names (`.tensor_names`, `.raw`, `.dequantized`;
    shapes are checked when assign_weights puts them in a model), and the `.reader` itself (its
    tokenizer metadata is read by gguf_tokenizer)."""

    def __init__(self, path: Path, reader: gguf.GGUFReader):
        self.path, self.reader = path, reader
        arch_name = _field(reader, path, "general.architecture")
        if arch_name not in GGUF_ARCHS:
            raise CheckpointError(f"{path}: GGUF architecture {arch_name!r} is not supported; "
                                  f"supported: {', '.join(GGUF_ARCHS)}")
        arch = GGUF_ARCHS[arch_name]
        self._tensors: dict[str, gguf.ReaderTensor] = {}     # our name -> stored tensor
        self._head: gguf.ReaderTensor | None = None
        for t in reader.tensors:
            if t.name == TIED_HEAD:
                self._head = t
                continue
            ours = gguf_to_ours(t.name, arch)
            if ours is None:
                raise CheckpointError(f"{path}: unknown tensor {t.name} for architecture {arch_name}")
            self._tensors[ours] = t
        try:
            self.config = self._config(arch_name, arch)
        except CheckpointError:
            raise
        except (ValueError, TypeError) as e:     # a metadata value of the wrong type (float("x"), d // "8")
            raise CheckpointError(f"{path}: {e}") from None

    @property
    def tensor_names(self) -> tuple[str, ...]:
        return tuple(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        """Torch shape of a tensor: the GGUF dims reversed ([out, in] for a linear weight)."""
        return tuple(int(d) for d in reversed(self._tensors[name].shape))

    def raw(self, name: str) -> tuple[gguf.GGMLQuantizationType, np.ndarray, tuple[int, ...]]:
        """The stored data verbatim (memory-mapped): (type, data, torch shape). Quantized data is a
        uint8 array [rows, bytes per row] of blocks; norm weights still carry the +1 offset."""
        t = self._tensors[name]
        return t.tensor_type, t.data, self.shape(name)

    def stored_blocks(self) -> dict[str, StoredBlocks]:
        """The tensors stored in a layout a recipe can carry over losslessly (Q4_0, Q8_0), by our name."""
        out = {}
        for name, t in self._tensors.items():
            if t.tensor_type.name in LAYOUTS and len(self.shape(name)) == 2:
                out[name] = StoredBlocks(t.tensor_type.name, t.data, self.shape(name))
        return out

    def dequantized(self) -> dict[str, torch.Tensor]:
        """Every tensor as float32 under our names, norm offsets removed."""
        out = {name: self._dequantize(t, name) for name, t in self._tensors.items()}
        if self._head is not None:
            embed = out["model.embed_tokens.weight"]
            head = _as_float(self._head)
            if head.size != embed.numel() or not torch.equal(torch.from_numpy(head).view_as(embed), embed):
                raise CheckpointError(f"{self.path}: tensor {TIED_HEAD} differs from token_embd.weight; "
                                      "Gemma ties the LM head to the embedding")
        return out

    def _dequantize(self, t: gguf.ReaderTensor, name: str) -> torch.Tensor:
        w = _as_float(t).reshape(self.shape(name))
        if t.name.endswith("_norm.weight"):
            w -= NORM_OFFSET
        return torch.from_numpy(w)

    def _config(self, arch_name: str, arch: Family) -> GemmaConfig:
        key = lambda k, default=...: _field(self.reader, self.path, f"{arch_name}.{k}", default)  # noqa: E731
        if "model.embed_tokens.weight" not in self._tensors:
            raise CheckpointError(f"{self.path}: missing tensor token_embd.weight")
        try:
            n = check_value("num_layers", key("block_count"), f"{arch_name}.block_count")
            d = check_value("hidden_size", key("embedding_length"), f"{arch_name}.embedding_length")
            heads = check_value("num_heads", key("attention.head_count"), f"{arch_name}.attention.head_count")
            # a window of 0 would silently make every layer global
            window = check_value("sliding_window", key("attention.sliding_window", arch.sliding_window),
                                 f"{arch_name}.attention.sliding_window")
        except ValueError as e:
            raise CheckpointError(f"{self.path}: {e}") from None
        head_dim = key("attention.key_length", d // heads)
        pattern = key("attention.sliding_window_pattern", arch.local_per_global + 1)
        if isinstance(pattern, list):                # one bool per layer, True = sliding
            layer_types = tuple(LayerType.LOCAL if p and window else LayerType.GLOBAL for p in pattern)
        elif isinstance(pattern, int) and not isinstance(pattern, bool) and pattern >= 1:
            layer_types = layer_pattern(n, pattern - 1 if window else 0)
        else:
            raise CheckpointError(f"{self.path}: sliding_window_pattern {pattern!r} is not supported")
        if len(layer_types) != n:
            raise CheckpointError(f"{self.path}: sliding_window_pattern has {len(layer_types)} entries, "
                                  f"block_count is {n}")
        rope_base = float(key("rope.freq_base", LLAMA_CPP_ROPE_BASE))
        scaling = key("rope.scaling.type", "none")
        if scaling not in ("none", "linear"):
            raise CheckpointError(f"{self.path}: rope scaling {scaling!r} is not supported (none, linear)")
        kw = dict(
            family=arch.family, vocab_size=self.shape("model.embed_tokens.weight")[0], hidden_size=d,
            intermediate_size=key("feed_forward_length"), num_heads=heads,
            num_kv_heads=key("attention.head_count_kv", heads), head_dim=head_dim,
            layer_types=layer_types, sliding_window=window, rope_base=rope_base,
            rope_local_base=float(key("rope.freq_base_swa", arch.rope_local_base or rope_base)),
            rope_scale=float(key("rope.scaling.factor", 1.0)) if scaling == "linear" else 1.0,
            query_pre_attn_scalar=d // heads if n == arch.gguf_wide_scale_layers else head_dim,
            attn_softcap=key("attn_logit_softcapping", arch.attn_softcap),
            final_softcap=key("final_logit_softcapping", arch.final_softcap),
            qk_norm=arch.qk_norm, sandwich_norms=arch.sandwich_norms,
            rms_eps=key("attention.layer_norm_rms_epsilon", 1e-6), max_position=key("context_length", 8192),
            bidirectional=arch.bidirectional,
            embedding_head=self._embedding_head(arch_name) if arch.bidirectional else None,
        )
        kw.update(special_token_ids(lambda k: _field(self.reader, self.path, k, None), "gguf"))
        try:
            return GemmaConfig(**kw)
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{self.path}: {e}") from None

    def _embedding_head(self, arch_name: str) -> EmbeddingHead:
        """Dense widths from the dense_2/dense_3 tensors (absent when converted without
        --sentence-transformers-dense-modules: mean pooling and L2 norm only, as llama.cpp does)."""
        pooling = _field(self.reader, self.path, f"{arch_name}.pooling_type", gguf.PoolingType.MEAN)
        if pooling != gguf.PoolingType.MEAN:
            raise CheckpointError(f"{self.path}: pooling type {pooling} is not supported (mean)")
        dims = tuple(self.shape(n)[0] for n in ("dense.0.weight", "dense.1.weight") if n in self._tensors)
        width = dims[-1] if dims else _field(self.reader, self.path, f"{arch_name}.embedding_length")
        matryoshka = tuple(m for m in EmbeddingHead().matryoshka_dims if m <= width)
        return EmbeddingHead(dense_dims=dims, matryoshka_dims=matryoshka)


def _field(reader: gguf.GGUFReader, path: Path, key: str, default=...):
    """A metadata value (str, int, float, bool or list); `default` when absent, error if none given."""
    f = reader.fields.get(key)
    if f is None:
        if default is ...:
            raise CheckpointError(f"{path}: missing metadata key {key!r}")
        return default
    return f.contents()


def _as_float(t: gguf.ReaderTensor) -> np.ndarray:
    """float32 values of a stored tensor as [rows, ne0], in a private writable array. Dequantized
    _ROWS rows at a time: the 262k-row embedding would otherwise need ~2x its size in temporaries."""
    data = t.data.reshape(-1, t.data.shape[-1])                  # [rows, ne0 values or row bytes]
    out = np.empty((data.shape[0], int(t.shape[0])), np.float32)
    for i in range(0, len(out), _ROWS):
        out[i:i + _ROWS] = gguf.quants.dequantize(data[i:i + _ROWS], t.tensor_type)
    return out


def open_reader(path: Path) -> gguf.GGUFReader:
    """gguf-py's reader of a file (memory-mapped), or CheckpointError naming the file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        return gguf.GGUFReader(path)
    except (ValueError, KeyError, IndexError, TypeError, OverflowError, MemoryError) as e:   # a damaged / lying header
        raise CheckpointError(f"{path}: not a readable GGUF file ({e})") from None


def load_gguf(path: str | Path) -> GGUFCheckpoint:
    """Open a GGUF once; the returned checkpoint reads tensors lazily from the memory map."""
    path = Path(path)
    return GGUFCheckpoint(path, open_reader(path))
