"""`load(path) -> Model`: artifact discovery. Which backend an artifact needs (ONNX folder, LiteRT folder,
.tflite or .litertlm file), where its manifest, tokenizer and model config are, and the config derived from
what the artifact states when another tool made it (genai_config.json, the LiteRT signatures).

Each backend's runtime (onnxruntime, ai_edge_litert) is imported only when an artifact needs it.
"""
from __future__ import annotations

from pathlib import Path

from .api import Model
from .contract import FULL_ATTENTION, SAE_KEY, SLIDING_ATTENTION, VISION_KEY
from .files import inside, read_json
from .tokenizer import Tokenizer


def _tokenizer(where: Path, model_proto: bytes | None = None) -> Tokenizer:
    """The SentencePiece model in `model_proto`, or else in the file `where`; errors name `where`."""
    return Tokenizer.from_bytes(model_proto, str(where)) if model_proto is not None else Tokenizer.from_file(where)


def _open_litert(path: Path, threads: int | None) -> Model:
    """A LiteRT artifact as a Model: a folder with model.tflite (or a *.litertlm bundle), manifest.json and
    tokenizer.model; a .tflite file (with the manifest and tokenizer beside it); or a .litertlm file (its
    TFLite model, SentencePiece tokenizer and stored config; the manifest.json and tokenizer.model beside it
    are used when that manifest names this bundle)."""
    from .litert_backend import open_bundle, open_tflite    # here, so an ONNX-only install needs no LiteRT

    folder = path.parent if path.is_file() else path
    manifest = read_json(folder / "manifest.json") if (folder / "manifest.json").exists() else None
    bundle, model_file = ((path, None) if path.suffix == ".litertlm" else (None, path)) if path.is_file() \
        else (None, path / "model.tflite")
    if model_file is not None and not model_file.exists():
        named = (manifest or {}).get("bundle")
        named = inside(folder, named, f"{folder / 'manifest.json'}: bundle") if named is not None else None
        bundles = [named] if named and named.exists() else sorted(folder.glob("*.litertlm"))
        tflites = sorted(folder.glob("*.tflite"))
        if bundles:
            bundle, model_file = bundles[0], None
        elif len(tflites) == 1:
            model_file = tflites[0]
        else:
            raise FileNotFoundError(f"{path / 'model.tflite'}: no such file (a LiteRT artifact folder holds "
                                    f"model.tflite or a .litertlm bundle)")
    if bundle is not None and manifest is not None and manifest.get("bundle") != bundle.name:
        manifest = None                          # a manifest beside the bundle that describes something else
    tok_bytes, facts = None, {}
    if bundle is not None:
        backend, tok_bytes, facts = open_bundle(bundle, threads)
        if manifest is None and isinstance(facts.get(VISION_KEY), dict):
            manifest = {VISION_KEY: facts[VISION_KEY]}        # how images become rows, for Model.vision
        if manifest is None and isinstance(facts.get(SAE_KEY), list):
            manifest = {SAE_KEY: facts[SAE_KEY]}              # the SAEs it carries (decoder rows beside it)
    elif isinstance((manifest or {}).get(VISION_KEY), dict):   # a vision-language folder: its five .tflite files
        from .litert_vision import LiteRTVisionBackend
        files = {section: inside(folder, name, f"{folder / 'manifest.json'}: vision files").read_bytes()
                 for section, name in (manifest[VISION_KEY].get("files") or {}).items()}
        backend = LiteRTVisionBackend(files, manifest[VISION_KEY], threads, manifest.get("context_length"),
                                      str(folder))
    else:
        backend = open_tflite(model_file, threads=threads, context_length=(manifest or {}).get("context_length"))
    tok_path = folder / "tokenizer.model"
    use_folder_tok = tok_path.exists() and (bundle is None or manifest is not None or not tok_bytes)
    tokenizer = (_tokenizer(tok_path) if use_folder_tok else _tokenizer(bundle, tok_bytes) if tok_bytes else None)
    config = (manifest or {}).get("config") or facts.get("config")
    if not isinstance(config, dict):            # a LiteRT model from another tool: what the signatures say
        embedder = backend.kind == "embedding"
        config = {"family": None, "vocab_size": backend.vocab_size,
                  "num_layers": None if embedder else len(backend.caches) // 2,
                  "max_position": backend.context_length, "bidirectional": embedder,
                  "embedding_head": {} if embedder else None,
                  "bos_id": tokenizer.bos_id if tokenizer else None,
                  "eos_id": tokenizer.eos_id if tokenizer else None, "pad_id": tokenizer.pad_id if tokenizer else None}
    return Model(path, backend, tokenizer, config, manifest)


def _config_from_genai(backend) -> dict:
    """A model config in the manifest's format from genai_config.json (folders made by other tools)."""
    model = (backend.genai or {}).get("model", {})
    dec = model.get("decoder", {})
    sliding = set((dec.get("sliding_window") or {}).get("layers", []))
    eos = model.get("eos_token_id")
    return {"family": model.get("type"), "vocab_size": model.get("vocab_size") or getattr(backend, "vocab_size", None),
            "hidden_size": dec.get("hidden_size"), "num_heads": dec.get("num_attention_heads"),
            "num_kv_heads": dec.get("num_key_value_heads"), "head_dim": dec.get("head_size"),
            "layer_types": [(SLIDING_ATTENTION if i in sliding else FULL_ATTENTION)
                            for i in range(dec.get("num_hidden_layers", 0))],
            "sliding_window": getattr(backend, "window", None), "max_position": model.get("context_length"),
            "bidirectional": False, "embedding_head": None, "bos_id": model.get("bos_token_id"),
            "eos_id": eos[0] if isinstance(eos, list) else eos, "pad_id": model.get("pad_token_id")}


def load(path: str | Path, threads: int | None = None, spin: bool = True) -> Model:
    """Open an artifact: an ONNX folder (model.onnx + genai_config.json and/or manifest.json, tokenizer.model),
    or a LiteRT one (a folder with model.tflite or a .litertlm bundle; a .tflite or .litertlm file).
    `threads`: intra-op threads (None: the runtime's default). `spin` (ONNX): idle threads spin between
    operators, fastest when the process has its cores to itself; pass False on a machine shared with other
    busy processes."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix in (".litertlm", ".tflite"):
            return _open_litert(path, threads)
        if path.suffix != ".onnx":
            raise ValueError(f"{path}: unknown artifact; expected an artifact folder (model.onnx, "
                             f"genai_config.json, manifest.json, tokenizer.model) or a .litertlm/.tflite file")
        path = path.parent
    manifest = read_json(path / "manifest.json") if (path / "manifest.json").exists() else None
    target = str((manifest or {}).get("target", "")).lower()
    if "litert" in target or "tflite" in target or any(path.glob("*.tflite")) or any(path.glob("*.litertlm")):
        return _open_litert(path, threads)
    if not ((path / "model.onnx").exists() or (path / "genai_config.json").exists() or "onnx" in target):
        raise ValueError(f"{path}: not a gemma-export artifact folder (no model.onnx, genai_config.json, "
                         f"*.tflite or manifest.json naming a target)")
    from .onnx_backend import OnnxBackend      # here, so a LiteRT-only install needs no onnxruntime
    backend = OnnxBackend(path, threads, spin)
    if manifest is not None:
        config = manifest.get("config")
        if not isinstance(config, dict):
            raise ValueError(f"{path / 'manifest.json'}: no 'config' object")
    else:
        config = _config_from_genai(backend)
    tok_path = path / "tokenizer.model"
    tokenizer = _tokenizer(tok_path) if tok_path.exists() else None
    return Model(path, backend, tokenizer, config, manifest)
