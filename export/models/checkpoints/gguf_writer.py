"""Writing a model as a GGUF checkpoint that gguf_loader (and llama.cpp) read back: gguf_loader's
name tables inverted, llama.cpp's +1 put back on norm weights, chosen tensors stored in a GGUF block
format quantized by gguf-py itself, the rest float32. Metadata and tokenizer are copied from a
source GGUF, or written from our config and a SentencePiece `tokenizer.model` (HF folders).
The file is written beside its destination and renamed into place."""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from runtime_py.files import atomic_path

from ..config import GemmaConfig, LayerType
from ..families import GGUF_ARCHS, SPECIAL_TOKENS, Family
from .gguf_loader import BLOCK_TENSORS, GLOBAL_TENSORS, NORM_OFFSET, gguf_to_ours

_T = gguf.GGUFValueType
_OWN_KEYS = {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", "general.architecture", "general.file_type"}
_FILE_TYPES = {gguf.GGMLQuantizationType.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0,
               gguf.GGMLQuantizationType.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0}


def arch_name(config: GemmaConfig) -> str:
    names = [n for n, a in GGUF_ARCHS.items() if a.family == config.family]
    if not names:
        raise ValueError(f"no GGUF architecture for family {config.family!r}")
    return names[0]


def ours_to_gguf(name: str, arch: Family) -> str:
    """The GGUF tensor name of one of our parameter names (gguf_to_ours inverted)."""
    glob = {v: k for k, v in GLOBAL_TENSORS.items()}
    if name in glob:
        return glob[name]
    prefix, _, rest = name.partition(".layers.")
    layer, _, suffix = rest.partition(".")
    # ffn_norm first: in Gemma 1 it is HF post_attention_layernorm, which post_attention_norm also names
    keys = sorted(BLOCK_TENSORS, key=lambda k: k != "ffn_norm")
    for key in keys:
        if prefix == "model" and f"{BLOCK_TENSORS[key] or arch.gguf_ffn_norm}.weight" == suffix:
            gname = f"blk.{layer}.{key}.weight"
            if gguf_to_ours(gname, arch) == name:
                return gname
    raise ValueError(f"tensor {name} has no GGUF name")


def _config_metadata(config: GemmaConfig, arch: str, defaults: Family) -> list[tuple[str, object, _T]]:
    """The metadata gguf_loader reads a GemmaConfig from (keys under `arch.`)."""
    c = config
    wide = c.num_layers == defaults.gguf_wide_scale_layers
    derived = c.hidden_size // c.num_heads if wide else c.head_dim
    if (c.query_pre_attn_scalar or c.head_dim) != derived:
        raise ValueError(f"query_pre_attn_scalar {c.query_pre_attn_scalar} cannot be expressed in GGUF metadata "
                         f"(llama.cpp derives {derived} for this model)")
    u, f = _T.UINT32, _T.FLOAT32
    kv = [("block_count", c.num_layers, u), ("embedding_length", c.hidden_size, u),
          ("feed_forward_length", c.intermediate_size, u), ("attention.head_count", c.num_heads, u),
          ("attention.head_count_kv", c.num_kv_heads, u), ("attention.key_length", c.head_dim, u),
          ("attention.value_length", c.head_dim, u), ("context_length", c.max_position, u),
          ("attention.layer_norm_rms_epsilon", c.rms_eps, f), ("rope.freq_base", c.rope_base, f),
          ("rope.freq_base_swa", c.rope_local_base, f),
          ("rope.scaling.type", "linear" if c.rope_scale != 1.0 else "none", _T.STRING)]
    if c.rope_scale != 1.0:
        kv.append(("rope.scaling.factor", c.rope_scale, f))
    if c.sliding_window:
        kv += [("attention.sliding_window", c.sliding_window, u),
               ("attention.sliding_window_pattern", [t is LayerType.LOCAL for t in c.layer_types], _T.BOOL)]
    for key, value, default in (("attn_logit_softcapping", c.attn_softcap, defaults.attn_softcap),
                                ("final_logit_softcapping", c.final_softcap, defaults.final_softcap)):
        if value is None and default is not None:
            raise ValueError(f"GGUF cannot say that a {arch} model has no {key}")
        if value is not None:
            kv.append((key, value, f))
    return [(f"{arch}.{k}", v, t) for k, v, t in kv]


def _tokenizer_metadata(proto: bytes, config: GemmaConfig) -> list[tuple[str, object, _T]]:
    """A SentencePiece model as llama.cpp's "llama" vocabulary (piece types map 1:1 to token types)."""
    m = sp_pb2.ModelProto.FromString(proto)
    spec = m.trainer_spec
    kv = [("tokenizer.ggml.model", "llama", _T.STRING),
          ("tokenizer.ggml.tokens", [p.piece for p in m.pieces], _T.STRING),
          ("tokenizer.ggml.scores", [p.score for p in m.pieces], _T.FLOAT32),
          ("tokenizer.ggml.token_type", [int(p.type) for p in m.pieces], _T.INT32),
          (SPECIAL_TOKENS["bos_id"][1], config.bos_id, _T.UINT32),
          (SPECIAL_TOKENS["eos_id"][1], config.eos_id, _T.UINT32),
          ("tokenizer.ggml.unknown_token_id", spec.unk_id, _T.UINT32),
          ("tokenizer.ggml.add_bos_token", True, _T.BOOL),
          ("tokenizer.ggml.add_space_prefix", m.normalizer_spec.add_dummy_prefix, _T.BOOL)]
    if config.pad_id >= 0:
        kv.append((SPECIAL_TOKENS["pad_id"][1], config.pad_id, _T.UINT32))
    return kv


def _copied_metadata(reader: gguf.GGUFReader) -> list[tuple[str, object, _T]]:
    out = []
    for key, field in reader.fields.items():
        if key in _OWN_KEYS:
            continue
        out.append((key, field.contents(), field.types[0], field.types[-1] if field.types[0] == _T.ARRAY else None))
    return out


def write_gguf(path: str | Path, config: GemmaConfig, state: dict[str, torch.Tensor],
               types: dict[str, gguf.GGMLQuantizationType], *, source: gguf.GGUFReader | None = None,
               tokenizer_proto: bytes | None = None, extra: dict[str, str] | None = None,
               encoders: dict | None = None, blocks: dict | None = None) -> Path:
    """Write `state` (our parameter names, float) to `path`: tensors named in `types` quantized to
    that type with `encoders[type]` (float32 array -> the type's stored bytes) or else
    gguf.quants.quantize, or stored as given in `blocks` (name -> StoredBlocks of that type), the
    others float32. Metadata: copied from `source` if given, else from
    `config` and `tokenizer_proto`; `extra` string keys are added."""
    path = Path(path)
    name = arch_name(config)
    defaults = GGUF_ARCHS[name]
    w = gguf.GGUFWriter(None, name)
    if source is not None:
        kvs = [kv for kv in _copied_metadata(source) if kv[0] not in (extra or {})]   # ours win
    else:
        kvs = [(k, v, t, None) for k, v, t in _config_metadata(config, name, defaults)]
        if tokenizer_proto is not None:
            kvs += [(k, v, t, None) for k, v, t in _tokenizer_metadata(tokenizer_proto, config)]
    for key, value, vtype, sub in kvs:
        if isinstance(value, list):
            vtype, sub = _T.ARRAY, sub or vtype
        w.add_key_value(key, value, vtype, sub)
    body = {t for t in types.values()}
    if len(body) == 1 and (ftype := _FILE_TYPES.get(body.pop())) is not None:
        w.add_file_type(ftype)
    for key, value in (extra or {}).items():
        w.add_string(key, value)

    for ours, tensor in state.items():
        gname = ours_to_gguf(ours, defaults)
        data = tensor.detach().float().contiguous().numpy()
        if ours in (blocks or {}):
            if blocks[ours].kind != types[ours].name:
                raise ValueError(f"tensor {ours}: blocks of {blocks[ours].kind}, to be stored as {types[ours].name}")
            w.add_tensor(gname, np.asarray(blocks[ours].data, np.uint8), raw_dtype=types[ours])
        elif ours in types:
            encode = (encoders or {}).get(types[ours], lambda x, t=types[ours]: gguf.quants.quantize(x, t))
            w.add_tensor(gname, encode(data), raw_dtype=types[ours])
        else:
            w.add_tensor(gname, data + NORM_OFFSET if gname.endswith("_norm.weight") else data)

    with atomic_path(path) as tmp:
        w.write_header_to_file(tmp)
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return path


def storable(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """The float32 value `tensor` has after a GGUF round trip when stored as float32 (norm weights
    pass through 1 + w)."""
    if name.endswith("norm.weight"):
        return (tensor.float() + NORM_OFFSET) - NORM_OFFSET
    return tensor.float()


__all__ = ["write_gguf", "ours_to_gguf", "storable", "arch_name"]
