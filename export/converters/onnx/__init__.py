"""`--target onnx`: model.onnx (+ external data when large), genai_config.json, tokenizer.model,
manifest.json — a folder onnxruntime-genai 0.18 and runtime_py run unchanged. RecurrentGemma
folders run in runtime_py only (its decoder description is in manifest.json, see genai_config.py).
`--target web` writes transformers.js's layout (web_folder.py): EmbeddingGemma, and Gemma 1/2/3 text decoders with
decoder.py's web graph."""
from __future__ import annotations

import json
from pathlib import Path

from runtime_py.contract import DEFAULT_CONTEXT, MODEL_FILE, SAE_KEY

from ..artifact import staged_dir
from ...models.vision_config import VisionLanguageConfig
from ...quantize.recipes import WEB_EMBEDDER_RECIPE, WEB_RECIPE, web_recipe
from ...quantize.recipes import recipe as recipe_for
from .decoder import build_decoder
from .embedder import build_embedder
from .folder import finish_folder, save_model
from .genai_config import genai_config, genai_supported
from .sae import sae_taps
from .stream import build_quantized
from .quantize import TABLE
from .web_table import table_storage
from .web_folder import WEB_LAYOUT, causal_family, chat_template, web_dtype, write_web_folder


def export_onnx_web(loaded, out: str | Path, recipe: str | None = None, context_length: int | None = None,
                    vision_quant: str | None = None, sae=None) -> Path:
    """export_onnx in the folder layout transformers.js reads (web_folder.py). Default recipe: the one measured
    fastest per byte in the browser for the model's kind (README, "Causal Gemma on the web", "EmbeddingGemma on the
    web")."""
    recipe = recipe or (WEB_EMBEDDER_RECIPE if loaded.config.embedding_head is not None else WEB_RECIPE)
    return export_onnx(loaded, out, recipe, context_length, vision_quant, layout=WEB_LAYOUT, sae=sae)


def export_onnx(loaded, out: str | Path, recipe: str = "fp32", context_length: int | None = None,
                vision_quant: str | None = None, layout: str | None = None, sae=None) -> Path:
    """Export a LoadedModel (export.models.checkpoints) to an ONNX artifact folder. vision_quant: the vision
    graph's storage of a vision-language model (fp32 | fp16 | int8; default: vision_folder.default_vision_quant).
    layout: WEB_LAYOUT puts an embedding model's graph where transformers.js reads it. sae: an
    export.models.sae.SaeRequest (sae.py: the SAEs' outputs and steering inputs in the decoder)."""
    c = loaded.config
    web = layout == WEB_LAYOUT
    causal_web = web and c.embedding_head is None and not isinstance(c, VisionLanguageConfig)
    if web and isinstance(c, VisionLanguageConfig):
        raise ValueError("--target web: vision-language models have no web layout yet")
    if causal_web:
        causal_family(c)
        if sae is not None:
            raise ValueError("--sae: --target web does not export sparse autoencoders")
    r = web_recipe(recipe) if web else recipe_for(recipe, "onnx")
    if web:
        web_dtype(r.name)             # a recipe transformers.js has no file name for is refused before any work
    context = min(context_length or DEFAULT_CONTEXT, c.max_position)
    if sae is not None and (isinstance(c, VisionLanguageConfig) or c.embedding_head is not None):
        raise ValueError("--sae: sparse autoencoders are exported with causal text LMs only")
    if isinstance(c, VisionLanguageConfig):
        from .vision_folder import export_onnx_vision
        return export_onnx_vision(loaded, out, r, context, vision_quant)
    if c.sliding_window and context < c.sliding_window:
        raise ValueError(f"--context {context} is shorter than the sliding window ({c.sliding_window})")
    if c.rotary_dim < c.head_dim and c.rotary_dim % 16:
        raise ValueError(f"partial RoPE over {c.rotary_dim} of {c.head_dim} head dimensions: onnxruntime's "
                         f"GroupQueryAttention needs a multiple of 16")
    embedder = c.embedding_head is not None
    m, state = loaded.model, loaded.weights
    taps = sae_taps(sae.saes, sae.k, sae.encoder) if sae else None
    web_table = table_storage(r.layout(TABLE, table=True)) if web and r.table_activations else None
    extra = {"context_length": context, "kind": "embedder" if embedder else "causal_lm"}
    with staged_dir(out) as tmp:
        proto, carried = build_quantized(lambda packer: build_embedder(m, state, packer, web_table) if embedder
                                         else build_decoder(m, context, state, packer, taps, causal_web, web_table),
                                         r, loaded.stored, scratch=tmp)
        if web:
            extra.update(write_web_folder(proto, tmp, c, r.name, loaded.tokenizer.stop_ids if loaded.tokenizer else ()))
        else:
            save_model(proto, tmp / "model.onnx")
        if sae:
            extra[SAE_KEY] = sae.write_decoders(tmp)
        if causal_web:      # runtime_py's description of the graph; no genai_config.json (it needs window caches)
            extra["runtime_config"] = genai_config(c, context, extra[MODEL_FILE], window_caches=False)
        elif not embedder and genai_supported(c):
            (tmp / "genai_config.json").write_text(json.dumps(genai_config(c, context), indent=2) + "\n")
        elif not embedder:     # runtime_py reads the same description from the manifest
            extra.update(runtime_config=genai_config(c, context), onnxruntime_genai=(
                f"not supported: onnxruntime-genai has no model type for {c.family} (recurrent state); "
                f"run it with runtime_py"))
        finish_folder(tmp, loaded, r, context, carried, extra, chat_template=chat_template(c) if causal_web else None)
    return Path(out)
