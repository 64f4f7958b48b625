"""llama.cpp's `mmproj` GGUF of Gemma 3 vision (the SigLIP tower and the Gemma 3 projector, shipped beside the
text GGUF) read into Hugging Face `Gemma3ForConditionalGeneration` checkpoint names, float32, with the vision
config the file states. The names are the published checkpoints' (`vision_tower.vision_model.*`,
`multi_modal_projector.*`), which llama.cpp's converter reads; transformers 5.23 holds the tower as
`model.vision_tower.*` without `vision_model.` and renames the published names when it loads them.

Conventions of llama.cpp's writers (convert_hf_to_gguf.py `Gemma3VisionModel` and the older
examples/llava/gemma3_convert_encoder_to_gguf.py) and of its reader (tools/mtmd/clip.cpp) undone here:
- general.architecture is "clip"; the projector type is `clip.projector_type` (or `clip.vision.projector_type`
  in files with several modalities); Gemma 3's is "gemma3";
- only `mm.soft_emb_norm` (Gemma's RMSNorm) is stored as 1 + w; SigLIP's LayerNorms are stored as they are;
- no tensor is transposed or permuted: every GGUF tensor is the HF tensor with its dims listed in reverse
  (the projection too: HF [vision hidden, text hidden], applied as x @ W; clip.cpp transposes it at run time);
- the older script stored mlp.fc1 as `ffn_down` and fc2 as `ffn_up`; clip.cpp tells them apart by shape
  (`ffn_down` taking the vision width as input is fc1) and so does this reader. With the FFN as wide as the
  hidden size the shapes cannot tell; the names are then taken as the current converter writes them;
- the average pool's kernel (patches per side / tokens per side) is `clip.vision.projector.scale_factor`, which
  the converter writes only when it is not 4, clip.cpp's default for Gemma 3;
- the activation is GELU when `clip.use_gelu` is true (ggml_gelu: the tanh approximation, HF
  gelu_pytorch_tanh); without it clip.cpp runs quick-GELU, which is not Gemma 3's SigLIP.
Tensors may be stored in any type gguf-py dequantizes (the converter forces F32 on the embeddings and F16 on
the projection; the rest follow --outtype: F32, F16, BF16, Q8_0)."""
from __future__ import annotations

from pathlib import Path

import gguf
import torch

from .gguf_loader import _as_float, _field, open_reader
from .weights import CheckpointError

ARCH = "clip"
PROJECTOR_KEYS = ("clip.projector_type", "clip.vision.projector_type")
SUPPORTED_PROJECTORS = ("gemma3",)
DEFAULT_POOL = 4                                 # clip.cpp's Gemma 3 pool kernel when scale_factor is absent
SOFT_EMB_NORM_OFFSET = 1.0                       # mm.soft_emb_norm is stored as 1 + w
HIDDEN_ACT = "gelu_pytorch_tanh"                 # what clip.use_gelu means (ggml_gelu)

_V = "vision_tower.vision_model."
_P = "multi_modal_projector."
# GGUF tensor name -> HF name
GLOBAL_TENSORS = {
    "v.patch_embd.weight": _V + "embeddings.patch_embedding.weight",
    "v.patch_embd.bias": _V + "embeddings.patch_embedding.bias",
    "v.position_embd.weight": _V + "embeddings.position_embedding.weight",
    "v.post_ln.weight": _V + "post_layernorm.weight",
    "v.post_ln.bias": _V + "post_layernorm.bias",
    "mm.input_projection.weight": _P + "mm_input_projection_weight",
    "mm.soft_emb_norm.weight": _P + "mm_soft_emb_norm.weight",
}
OFFSET_TENSORS = ("mm.soft_emb_norm.weight",)
# v.blk.{i}.<key>.{weight,bias} -> vision_tower.vision_model.encoder.layers.{i}.<module>.{weight,bias}
BLOCK_TENSORS = {
    "ln1": "layer_norm1",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_out": "self_attn.out_proj",
    "ln2": "layer_norm2",
    "ffn_up": "mlp.fc1",
    "ffn_down": "mlp.fc2",
}
_LAYER = _V + "encoder.layers.{}."

# facts key -> metadata key, for the integers the file must state
INT_KEYS = {
    "image_size": "clip.vision.image_size",
    "patch_size": "clip.vision.patch_size",
    "hidden_size": "clip.vision.embedding_length",
    "intermediate_size": "clip.vision.feed_forward_length",
    "num_hidden_layers": "clip.vision.block_count",
    "num_attention_heads": "clip.vision.attention.head_count",
    "text_hidden_size": "clip.vision.projection_dim",
}
EPS_KEY = "clip.vision.attention.layer_norm_epsilon"
POOL_KEY = "clip.vision.projector.scale_factor"
MEAN_KEY, STD_KEY = "clip.vision.image_mean", "clip.vision.image_std"
_MAX_INT = 1 << 18


def tensor_names(num_layers: int) -> dict[str, str]:
    """GGUF name -> HF name of every tensor of a Gemma 3 mmproj with `num_layers` encoder layers."""
    names = dict(GLOBAL_TENSORS)
    for i in range(num_layers):
        for key, module in BLOCK_TENSORS.items():
            for param in ("weight", "bias"):
                names[f"v.blk.{i}.{key}.{param}"] = f"{_LAYER.format(i)}{module}.{param}"
    return names


def expected_shapes(facts: dict) -> dict[str, tuple[int, ...]]:
    """HF name -> torch shape of every tensor of a Gemma 3 vision tower + projector with these facts."""
    d, f, p = facts["hidden_size"], facts["intermediate_size"], facts["patch_size"]
    side = facts["image_size"] // p
    shapes = {
        _V + "embeddings.patch_embedding.weight": (d, facts["num_channels"], p, p),
        _V + "embeddings.patch_embedding.bias": (d,),
        _V + "embeddings.position_embedding.weight": (side * side, d),
        _V + "post_layernorm.weight": (d,), _V + "post_layernorm.bias": (d,),
        _P + "mm_input_projection_weight": (d, facts["text_hidden_size"]),
        _P + "mm_soft_emb_norm.weight": (d,),
    }
    per_layer = {"layer_norm1": (d,), "layer_norm2": (d,), "mlp.fc1": (f, d), "mlp.fc2": (d, f),
                 **{f"self_attn.{x}_proj": (d, d) for x in ("q", "k", "v", "out")}}
    for i in range(facts["num_hidden_layers"]):
        for module, weight in per_layer.items():
            name = _LAYER.format(i) + module
            shapes[name + ".weight"], shapes[name + ".bias"] = weight, weight[:1]
    return shapes


def load_mmproj(path: str | Path, text_hidden_size: int | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a Gemma 3 mmproj GGUF. Returns (tensors, facts):
    - tensors: HF name (`vision_tower.vision_model.*`, `multi_modal_projector.*`) -> float32 tensor, HF shape;
    - facts: `projector_type` ("gemma3"); SiglipVisionConfig's `image_size`, `patch_size`, `hidden_size`,
      `intermediate_size`, `num_hidden_layers`, `num_attention_heads`, `num_channels` (3), `layer_norm_eps`
      (also the soft-embedding RMSNorm's eps, as in HF), `hidden_act` ("gelu_pytorch_tanh"); Gemma3Config's
      `mm_tokens_per_image`; `text_hidden_size` (the projection's output width); `pool_kernel` (patches per
      side pooled into one token per side); the image processor's `image_mean`, `image_std` (3 floats each).
    `text_hidden_size`, when given (the text GGUF's hidden size), must equal the projection's width.
    Anything else (not an mmproj, another projector, a tensor missing, unknown or misshaped) -> CheckpointError
    (a ValueError) naming the file and the key or tensor."""
    path = Path(path)
    reader, facts = _opened(path, text_hidden_size)
    names, stored = tensor_names(facts["num_hidden_layers"]), {}
    for t in reader.tensors:
        if t.name not in names:
            raise CheckpointError(f"{path}: unknown tensor {t.name} for a Gemma 3 vision tower of "
                                  f"{INT_KEYS['num_hidden_layers']} {facts['num_hidden_layers']}")
        stored[names[t.name]] = t
    _undo_legacy_ffn_order(stored, facts)
    missing = [(g, hf) for g, hf in names.items() if hf not in stored]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CheckpointError(f"{path}: missing tensor {missing[0][0]} ({missing[0][1]}){more}")
    shapes = expected_shapes(facts)
    for name, t in stored.items():
        shape = _torch_shape(t)
        if shape != shapes[name]:
            raise CheckpointError(f"{path}: tensor {t.name} ({name}) has shape {shape}, the metadata "
                                  f"needs {shapes[name]}")
    return {name: _dequantized(t, path) for name, t in stored.items()}, facts


def mmproj_facts(path: str | Path, text_hidden_size: int | None = None) -> dict:
    """load_mmproj's facts from the metadata alone (no tensor read), with the same checks of the metadata and
    of `text_hidden_size`: to refuse a pair of files before any work."""
    return _opened(Path(path), text_hidden_size)[1]


def _opened(path: Path, text_hidden_size: int | None) -> tuple[gguf.GGUFReader, dict]:
    reader = open_reader(path)
    facts = _facts(reader, path)
    # the projection's shape is checked against this metadata with every other tensor's
    if text_hidden_size is not None and text_hidden_size != facts["text_hidden_size"]:
        raise CheckpointError(f"{path}: tensor mm.input_projection.weight projects to width "
                              f"{facts['text_hidden_size']} ({INT_KEYS['text_hidden_size']}), the text model's "
                              f"hidden size is {text_hidden_size}")
    return reader, facts


def _facts(reader: gguf.GGUFReader, path: Path) -> dict:
    key = lambda k, default=...: _field(reader, path, k, default)  # noqa: E731
    arch = key("general.architecture")
    if arch != ARCH:
        raise CheckpointError(f"{path}: not an mmproj GGUF (general.architecture {arch!r}, an mmproj's is "
                              f"{ARCH!r}); the text GGUF goes to --model, the mmproj to --mmproj")
    if key("clip.has_vision_encoder", False) is not True:
        raise CheckpointError(f"{path}: clip.has_vision_encoder is not true: no vision tower")
    projector = next((key(k) for k in PROJECTOR_KEYS if k in reader.fields), None)
    if projector not in SUPPORTED_PROJECTORS:
        raise CheckpointError(f"{path}: projector type {projector!r} ({PROJECTOR_KEYS[0]}) is not supported; "
                              f"supported: {', '.join(SUPPORTED_PROJECTORS)}")
    if key("clip.use_gelu", False) is not True:
        raise CheckpointError(f"{path}: clip.use_gelu is not true (llama.cpp would run quick-GELU; "
                              f"Gemma 3's SigLIP uses {HIDDEN_ACT})")
    facts = {"projector_type": projector, **{k: _int(key(g), g, path) for k, g in INT_KEYS.items()}}
    eps = key(EPS_KEY)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise CheckpointError(f"{path}: {EPS_KEY} {eps!r}: must be a number between 0 and 1")
    mean, std = key(MEAN_KEY), key(STD_KEY)
    for k, v in ((MEAN_KEY, mean), (STD_KEY, std)):
        if not isinstance(v, list) or len(v) != 3 or not all(isinstance(x, (int, float)) for x in v):
            raise CheckpointError(f"{path}: {k} {v!r}: must be 3 numbers (R, G, B)")
    if any(s <= 0 for s in std):
        raise CheckpointError(f"{path}: {STD_KEY} {std!r}: must be positive")
    pool = _int(key(POOL_KEY, DEFAULT_POOL), POOL_KEY, path)
    d, heads, size, patch = (facts[k] for k in ("hidden_size", "num_attention_heads", "image_size", "patch_size"))
    if d % heads:
        raise CheckpointError(f"{path}: {INT_KEYS['hidden_size']} {d} is not a multiple of "
                              f"{INT_KEYS['num_attention_heads']} {heads}")
    if size % patch or (size // patch) % pool:
        raise CheckpointError(f"{path}: {INT_KEYS['image_size']} {size} is not a whole number of patches of "
                              f"{patch} pooled by {pool} ({POOL_KEY})")
    tokens_per_side = size // patch // pool
    return {**facts, "num_channels": len(mean), "layer_norm_eps": float(eps), "hidden_act": HIDDEN_ACT,
            "pool_kernel": pool, "mm_tokens_per_image": tokens_per_side * tokens_per_side,
            "image_mean": tuple(float(x) for x in mean), "image_std": tuple(float(x) for x in std)}


def _int(value, key: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_INT:
        raise CheckpointError(f"{path}: {key} {value!r}: must be an integer between 1 and {_MAX_INT}")
    return value


def _torch_shape(t: gguf.ReaderTensor) -> tuple[int, ...]:
    return tuple(int(d) for d in reversed(t.shape))


def _undo_legacy_ffn_order(stored: dict[str, gguf.ReaderTensor], facts: dict) -> None:
    """Swap fc1/fc2 back in the layers where `ffn_down` holds fc1 (the older script's order), told by shape."""
    d, f = facts["hidden_size"], facts["intermediate_size"]
    if d == f:
        return
    for i in range(facts["num_hidden_layers"]):
        fc1, fc2 = (_LAYER.format(i) + m for m in ("mlp.fc1", "mlp.fc2"))
        down = stored.get(fc2 + ".weight")
        if down is not None and _torch_shape(down) == (f, d):
            for suffix in (".weight", ".bias"):
                a, b = stored.pop(fc1 + suffix, None), stored.pop(fc2 + suffix, None)
                stored.update({k: v for k, v in ((fc1 + suffix, b), (fc2 + suffix, a)) if v is not None})


def _dequantized(t: gguf.ReaderTensor, path: Path) -> torch.Tensor:
    try:
        w = _as_float(t).reshape(_torch_shape(t))
    except NotImplementedError:
        raise CheckpointError(f"{path}: tensor {t.name} is stored as {t.tensor_type.name}, "
                              "which gguf-py cannot dequantize") from None
    if t.name in OFFSET_TENSORS:
        w -= SOFT_EMB_NORM_OFFSET
    return torch.from_numpy(w)


__all__ = ["load_mmproj", "mmproj_facts", "tensor_names", "expected_shapes", "GLOBAL_TENSORS", "BLOCK_TENSORS"]
