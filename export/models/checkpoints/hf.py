"""Hugging Face folders: config.json mapped onto GemmaConfig, safetensors (single or sharded)
mapped onto our parameter names, which are the HF text-model names."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from runtime_py.files import inside, read_json

from ..config import EmbeddingHead, GemmaConfig, LayerType, layer_pattern
from ..config_checks import check_value
from ..families import FAMILIES, HF_ARCHITECTURES, Family, special_token_ids
from .recurrentgemma import recurrentgemma_config, rename_recurrentgemma
from .weights import CheckpointError

# Checkpoint-name prefix -> our prefix, tried in order; None = tensor not part of the text model.
PREFIXES = (
    ("model.language_model.", "model."),
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
    ("model.vision_tower.", None), ("vision_tower.", None),
    ("model.multi_modal_projector.", None), ("multi_modal_projector.", None),
    ("model.", "model."),
    ("lm_head.", "lm_head."),
    ("", "model."),                                # Gemma3TextModel (EmbeddingGemma) has no prefix
)
# GemmaConfig field -> its config.json key, where the two differ
HF_KEYS = {"num_kv_heads": "num_key_value_heads", "max_position": "max_position_embeddings", "rms_eps": "rms_norm_eps",
           "attn_softcap": "attn_logit_softcapping", "final_softcap": "final_logit_softcapping"}
# sentence-transformers modules of EmbeddingGemma, in order: folder -> our dense layer
DENSE_FOLDERS = ("2_Dense", "3_Dense")


def config_from_hf(cfg: dict, source: str = "config.json") -> GemmaConfig:
    """A config.json's values as a GemmaConfig; CheckpointError naming the file and key otherwise."""
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{source}: expected a JSON object, got {type(cfg).__name__}")
    try:
        return _config_from_hf(cfg, source)
    except CheckpointError:
        raise
    except (ValueError, TypeError, AttributeError) as e:     # a value of the wrong type or out of bounds
        raise CheckpointError(f"{source}: {e}") from None


def _config_from_hf(cfg: dict, source: str) -> GemmaConfig:
    archs = cfg.get("architectures") or []
    arch = archs[0] if archs else None
    if arch not in HF_ARCHITECTURES:
        raise CheckpointError(f"{source}: architecture {arch!r} is not supported; supported: "
                              f"{', '.join(HF_ARCHITECTURES)}, and the vision-language ones "
                              f"(export.models.checkpoints.hf_vision)")
    family = HF_ARCHITECTURES[arch]
    if family.family == "recurrentgemma":
        return recurrentgemma_config(cfg, source)
    text = cfg.get("text_config", cfg) if arch == "Gemma3ForConditionalGeneration" else cfg
    if not isinstance(text, dict):
        raise CheckpointError(f"{source}: text_config is not an object")
    if family.family == "gemma3" and text.get("use_bidirectional_attention"):
        family = FAMILIES["embeddinggemma"]
    return text_config_from_hf(text, family, source, cfg)


def text_config_from_hf(text: dict, family: Family, source: str, top: dict | None = None) -> GemmaConfig:
    """A decoder's config.json values (a text model's, or a multimodal one's text_config) read as `family`;
    special token ids may sit at the top level (`top`)."""
    top = text if top is None else top
    try:
        n = check_value("num_layers", text["num_hidden_layers"], "num_hidden_layers")
        d = check_value("hidden_size", text["hidden_size"])
        heads = check_value("num_heads", text["num_attention_heads"], "num_attention_heads")
        kw = dict(
            vocab_size=text["vocab_size"], hidden_size=d, intermediate_size=text["intermediate_size"],
            num_heads=heads, num_kv_heads=text.get("num_key_value_heads", heads),
            head_dim=text.get("head_dim") or d // heads,
            rms_eps=text.get("rms_norm_eps", 1e-6),
            max_position=text.get("max_position_embeddings", 8192),
        )
    except KeyError as e:
        raise CheckpointError(f"{source}: missing key {e.args[0]!r}") from None
    if text.get("layer_types"):
        kw["layer_types"] = tuple(LayerType(t) for t in text["layer_types"])
        if len(kw["layer_types"]) != n:
            raise CheckpointError(f"{source}: layer_types has {len(kw['layer_types'])} entries, "
                                  f"num_hidden_layers is {n}")
    else:
        pattern = text.get("sliding_window_pattern", family.local_per_global + 1)
        if isinstance(pattern, bool) or not isinstance(pattern, int) or pattern < 1:
            raise CheckpointError(f"{source}: sliding_window_pattern {pattern!r}: must be an integer >= 1")
        kw["layer_types"] = layer_pattern(n, pattern - 1)
    kw.update(sliding_window=text.get("sliding_window", family.sliding_window),
              query_pre_attn_scalar=text.get("query_pre_attn_scalar"),
              attn_softcap=text.get("attn_logit_softcapping", family.attn_softcap),
              final_softcap=text.get("final_logit_softcapping", family.final_softcap),
              sandwich_norms=family.sandwich_norms, qk_norm=family.qk_norm, bidirectional=family.bidirectional)
    kw.update(_rope(text, family))
    if family.bidirectional:
        kw["embedding_head"] = EmbeddingHead()
    kw.update(special_token_ids(lambda key: text.get(key, top.get(key)), "hf"))
    for ours, key in HF_KEYS.items():                # errors name the key as config.json spells it
        check_value(ours, kw[ours], key)
    return GemmaConfig(family=family.family, **kw)


def _rope(text: dict, family: Family) -> dict:
    """RoPE bases and linear scaling from transformers 4 (rope_theta, rope_local_base_freq,
    rope_scaling) or transformers 5 (rope_parameters, optionally per layer type) keys."""
    params = text.get("rope_parameters") or {}
    per_type = {t.value: params[t.value] for t in LayerType if isinstance(params.get(t.value), dict)}
    glob = per_type.get(LayerType.GLOBAL.value, params)
    local = per_type.get(LayerType.LOCAL.value, {})
    base = glob.get("rope_theta", text.get("rope_theta", family.rope_base))
    local_base = local.get("rope_theta", text.get("rope_local_base_freq", family.rope_local_base or base))
    scaling = text.get("rope_scaling") or glob
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in ("default", "linear"):
        raise CheckpointError(f"config.json: rope type {rope_type!r} is not supported (default, linear)")
    scale = float(scaling.get("factor", 1.0)) if rope_type == "linear" else 1.0
    return dict(rope_base=float(base), rope_local_base=float(local_base), rope_scale=scale)


def _tensor_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: no 'weight_map' object")
        files = [inside(folder, s, f"{index}: shard") for s in sorted(set(map(str, weight_map.values())))]
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder}: no *.safetensors files (only safetensors checkpoints are read)")
    for f in files:
        if not f.exists():
            raise CheckpointError(f"{index}: shard {f.name} is missing")
    return files


def read_tensors_renamed(folder: Path, rename) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's safetensors under rename(key) (None: dropped); a name given twice is an error."""
    out: dict[str, torch.Tensor] = {}
    for f in _tensor_files(folder):
        with _safetensors(f) as st:
            for key in st.keys():
                name = rename(key, f"{f}: tensor {key}")
                if name is None:
                    continue
                if name in out:
                    raise CheckpointError(f"{f}: tensor {key} appears twice (as {name})")
                out[name] = st.get_tensor(key)
    return out


def read_tensors(folder: Path, config: GemmaConfig) -> dict[str, torch.Tensor]:
    """All tensors of the text model under our names; vision-tower tensors are dropped."""
    def rename(key: str, where: str) -> str | None:
        name = _rename(key)
        if name is not None and config.family == "recurrentgemma":
            name = rename_recurrentgemma(name, config, where)
        return name
    out = read_tensors_renamed(folder, rename)
    for i, sub in enumerate(_dense_folders(folder) if config.embedding_head is not None else ()):
        (f,) = _tensor_files(sub)
        with _safetensors(f) as st:
            out[f"dense.{i}.weight"] = st.get_tensor("linear.weight")
    head = out.pop("lm_head.weight", None)
    if head is not None and not torch.equal(head, out.get("model.embed_tokens.weight", head)):
        raise CheckpointError(f"{folder}: lm_head.weight differs from the embedding; Gemma ties them")
    return out


@contextlib.contextmanager
def _safetensors(path: Path):
    """safe_open(path), its errors (a header that lies about sizes or offsets, a truncated file, a missing
    tensor) as one CheckpointError naming the file."""
    try:
        with safe_open(str(path), framework="pt") as st:
            yield st
    except (SafetensorError, KeyError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def _dense_folders(folder: Path) -> list[Path]:
    missing = [d for d in DENSE_FOLDERS if not (folder / d / "config.json").exists()]
    if missing:
        raise CheckpointError(f"{folder}: EmbeddingGemma needs the sentence-transformers folders "
                              f"{', '.join(missing)} (with config.json)")
    return [folder / d for d in DENSE_FOLDERS]


def _embedding_head(folder: Path) -> EmbeddingHead:
    """Dense widths from the sentence-transformers Dense configs; only bias-free identity layers."""
    dims = []
    for sub in _dense_folders(folder):
        cfg = read_json(sub / "config.json")
        act = cfg.get("activation_function", "torch.nn.modules.linear.Identity")
        if cfg.get("bias", False) or not str(act).endswith("Identity"):
            raise CheckpointError(f"{sub / 'config.json'}: only bias-free Identity Dense layers are supported")
        dims.append(check_value("hidden_size", cfg.get("out_features"), f"{sub / 'config.json'}: out_features"))
    return EmbeddingHead(dense_dims=tuple(dims))


def _rename(key: str) -> str | None:
    for prefix, ours in PREFIXES:
        if key.startswith(prefix):
            return None if ours is None else ours + key[len(prefix):]
    return None


def read_hf_config(folder: str | Path) -> GemmaConfig:
    """A Hugging Face folder's config (config.json, and the sentence-transformers head if any)."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise CheckpointError(f"{folder}: no config.json (expected a Hugging Face model folder)")
    config = config_from_hf(read_json(cfg_path), str(cfg_path))
    if config.embedding_head is not None:
        config = config.replace(embedding_head=_embedding_head(folder))
    return config


def load_hf_folder(folder: str | Path) -> tuple[GemmaConfig, dict[str, torch.Tensor]]:
    config = read_hf_config(folder)
    return config, read_tensors(Path(folder), config)
