"""Loading real checkpoints: a Hugging Face folder, a GGUF file, or the bundled default model."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..config import GemmaConfig
from ..config_checks import check_tensor_layout
from ..gemma import build_model
from .default import DEFAULT_MODEL, default_model_path
from .gguf_blocks import StoredBlocks
from .weights import CheckpointError, assign_weights


@dataclasses.dataclass
class LoadedModel:
    model: nn.Module
    config: GemmaConfig
    tokenizer: "Tokenizer | None"  # runtime_py.tokenizer.Tokenizer
    source: Path
    # Tensors whose stored quantized blocks a matching recipe carries over exactly (GGUF Q4_0/Q8_0),
    # by parameter name; the model's float weights are their dequantized values.
    stored: dict[str, "StoredBlocks"] = dataclasses.field(default_factory=dict)
    # How the `stored` blocks not read from the checkpoint were rounded (export.quantize.gptq's info),
    # recorded in the artifact's manifest; empty: none were.
    rounding: dict = dataclasses.field(default_factory=dict)
    # The mmproj GGUF whose vision tower joined the text GGUF `source` (gguf_vision); None: one source.
    mmproj: Path | None = None
    # The text model's weights by state-dict name (a vision-language model: its language_model's), read one
    # at a time, for a model whose own are left on the meta device (bench/vision_shapes.py: random weights at
    # a 4B model's shapes); None: the exporters read `model`'s. Such a model exports, but cannot be validated.
    weights: "Mapping[str, torch.Tensor] | None" = None


def release(module: nn.Module) -> None:
    """Free a module's weights: its parameters and buffers move to the meta device (shapes kept, no data), so
    their memory goes back once nothing else holds them (an exporter whose caller is done with the model)."""
    import gc
    module.to("meta")
    gc.collect()


def released(model: nn.Module) -> bool:
    """Whether some of `model`'s weights were freed (release) or never held (LoadedModel.weights): it cannot
    compute, and a validation reads the checkpoint again."""
    return any(t.is_meta for t in (*model.parameters(), *model.buffers()))


def resolve(source: str | Path | None) -> Path:
    """A path, or the default model's name / None -> the path to read."""
    if source is None or str(source) == DEFAULT_MODEL:
        return default_model_path()
    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"--model {source}: no such file or folder (give a Hugging Face folder, "
                              f"a .gguf file, or {DEFAULT_MODEL!r} for the bundled model)")
    return path


def load_model(source: str | Path | None = None, dtype: torch.dtype = torch.float32,
               mmproj: str | Path | None = None) -> LoadedModel:
    """Build the reference model of a checkpoint with its tokenizer (None if the folder has none). mmproj:
    llama.cpp's mmproj GGUF of a Gemma 3 vision tower, joined to the text GGUF `source` (gguf_vision)."""
    path = resolve(source)
    if mmproj is not None:
        return _load_vision_gguf(path, mmproj, dtype)
    if path.is_dir() and _vision_folder(path):
        return _load_vision_folder(path, dtype)
    if path.is_dir():
        from .hf import load_hf_folder
        config, tensors = load_hf_folder(path)
        check_tensor_layout(config, {n: tuple(t.shape) for n, t in tensors.items()}, str(path))
        tok_file = path / "tokenizer.model"
        tokenizer = _tokenizer(tok_file.read_bytes(), tok_file, config) if tok_file.exists() else None
        stored = {}
    elif path.suffix == ".gguf":
        from .gguf_loader import load_gguf
        from .gguf_tokenizer import sentencepiece_model_from_gguf
        ckpt = load_gguf(path)
        config = ckpt.config
        check_tensor_layout(config, {n: ckpt.shape(n) for n in ckpt.tensor_names}, str(path))
        try:
            proto = sentencepiece_model_from_gguf(ckpt.reader)
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from None
        tokenizer = _tokenizer(proto, path, config)
        tensors, stored = ckpt.dequantized(), ckpt.stored_blocks()
    else:
        raise CheckpointError(f"--model {path}: not a Hugging Face folder nor a .gguf file")
    with torch.device("meta"):
        model = build_model(config)
    model = assign_weights(model, tensors, str(path), dtype).eval()
    return LoadedModel(model, config, tokenizer, path, stored)


def _vision_folder(path: Path) -> dict | None:
    """config.json of a vision-language folder, else None."""
    from runtime_py.files import read_json
    from .hf_vision import is_vision
    cfg_path = path / "config.json"
    cfg = read_json(cfg_path) if cfg_path.exists() else None
    return cfg if is_vision(cfg) else None


def _vision_folder_config(path: Path, cfg: dict):
    from .hf_vision import vision_config_from_hf, with_preprocessor
    return with_preprocessor(path, vision_config_from_hf(cfg, str(path / "config.json")))


def _load_vision_folder(path: Path, dtype: torch.dtype) -> LoadedModel:
    from .hf_vision import read_vision_tensors
    cfg = _vision_folder(path)
    config = _vision_folder_config(path, cfg)
    tensors = read_vision_tensors(path, config, cfg["architectures"][0])
    tok_file = path / "tokenizer.model"
    tokenizer = _tokenizer(tok_file.read_bytes(), tok_file, config.text) if tok_file.exists() else None
    return _vision_model(config, tensors, tokenizer, path, dtype)


def _load_vision_gguf(path: Path, mmproj: str | Path, dtype: torch.dtype) -> LoadedModel:
    from .gguf_tokenizer import sentencepiece_model_from_gguf
    from .gguf_vision import read_vision_gguf, vision_tensors
    ckpt, mmproj, config = read_vision_gguf(path, mmproj)
    try:
        proto = sentencepiece_model_from_gguf(ckpt.reader)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    tokenizer = _tokenizer(proto, path, config.text)
    loaded = _vision_model(config, vision_tensors(ckpt, mmproj), tokenizer, path, dtype)
    # the decoder's quantized blocks, by the decoder's own parameter names (what its ONNX graph is built from)
    return dataclasses.replace(loaded, stored=ckpt.stored_blocks(), mmproj=mmproj)


def _vision_model(config, tensors: dict, tokenizer, path: Path, dtype: torch.dtype) -> LoadedModel:
    """A VisionLanguageModel of `tensors` (its own parameter names), the decoder's checked as a text model's."""
    from ..vlm import VisionLanguageModel
    text = {n[len("language_model."):]: tuple(t.shape) for n, t in tensors.items() if n.startswith("language_model.")}
    check_tensor_layout(config.text, text, str(path))
    with torch.device("meta"):
        model = VisionLanguageModel(config)
    model = assign_weights(model, tensors, str(path), dtype).eval()
    return LoadedModel(model, config, tokenizer, path)


def read_config(source: str | Path | None = None, mmproj: str | Path | None = None) -> GemmaConfig:
    """The config of a checkpoint without reading its weights (a Hugging Face folder's config.json,
    a GGUF's metadata; with `mmproj`, both GGUFs' metadata), to refuse a model before any work."""
    path = resolve(source)
    if mmproj is not None:
        from .gguf_vision import read_vision_gguf
        return read_vision_gguf(path, mmproj)[2]
    if path.is_dir() and (cfg := _vision_folder(path)):
        return _vision_folder_config(path, cfg)
    if path.is_dir():
        from .hf import read_hf_config
        return read_hf_config(path)
    if path.suffix == ".gguf":
        from .gguf_loader import load_gguf
        return load_gguf(path).config
    raise CheckpointError(f"--model {path}: not a Hugging Face folder nor a .gguf file")


def _tokenizer(model_proto: bytes, where: Path, config: GemmaConfig):
    """The checkpoint's tokenizer; every id it can produce must have a row in the embedding."""
    from runtime_py.tokenizer import Tokenizer
    tok = Tokenizer.from_bytes(model_proto, str(where))
    if tok.vocab_size > config.vocab_size:
        raise CheckpointError(f"{where}: the tokenizer has {tok.vocab_size} tokens, the embedding only "
                              f"{config.vocab_size} rows")
    return tok


__all__ = ["CheckpointError", "LoadedModel", "load_model", "read_config", "resolve", "DEFAULT_MODEL"]
