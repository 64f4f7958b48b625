"""Deployment targets: what `--target NAME` builds. A target names a deployment (android, ios, web,
desktop) or a raw format (litert, onnx); each is one profile row -- artifact format, default recipe,
prefill lengths, cache length, bundle type, the devices its cost report estimates -- and every column
but the format can be overridden flag by flag (`--quant`, `--prefill`, `--context`)."""
from __future__ import annotations

import dataclasses
import importlib

from runtime_py.contract import DEFAULT_CONTEXT, DEFAULT_PREFILL

from .quantize.recipes import WEB_EMBEDDER_RECIPE, WEB_RECIPE

# bundle type -> the exporter that writes it: module:function(loaded, out, recipe, ...)
EXPORTERS = {
    "onnx-folder": "export.converters.onnx:export_onnx",
    "onnx-web": "export.converters.onnx:export_onnx_web",      # transformers.js's layout
    "tflite-folder": "export.converters.litert:export_litert",
    "litertlm": "export.converters.litert.bundle:export_litertlm",
}


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    format: str                       # onnx | litert: the format the recipe table is checked against
    bundle: str                       # a key of EXPORTERS
    recipe: str                       # default --quant
    context: int                      # default --context: positions the KV caches hold
    prefill: tuple[int, ...] | None   # default --prefill: LiteRT prefill signature lengths (None: ONNX)
    runtime: str                      # what runs the artifact on the device
    devices: tuple[str, ...] = ()     # devices/catalogue.json entries the cost report estimates
    embedding_recipe: str | None = None   # default --quant for an embedding model (None: `recipe`)

    def default_recipe(self, config=None) -> str:
        """The default --quant for a model of `config` (None: not read yet, taken as a text LM)."""
        embedder = config is not None and not hasattr(config, "vision") and config.embedding_head is not None
        return (self.embedding_recipe or self.recipe) if embedder else self.recipe

    def export(self, loaded, out, recipe: str | None = None, context: int | None = None,
               prefill: tuple[int, ...] | None = None, vision_quant: str | None = None, sae=None,
               consume: bool = False):
        """Export `loaded` to `out` with this profile, each argument overriding its column; vision_quant: the
        vision graph's storage of a vision-language model; sae: an export.models.sae.SaeRequest;
        consume: the caller is done with loaded.model (a LiteRT exporter may free its weights before quantizing:
        export.converters.litert)."""
        module, func = EXPORTERS[self.bundle].split(":")
        if self.bundle == "litertlm":       # refused before any conversion work
            from .converters.litert.bundle import unbundleable
            if why := unbundleable(loaded.config):
                raise ValueError(f"--target {self.name}: {why}")
        fn = getattr(importlib.import_module(module), func)
        user_context, recipe, context = context, recipe or self.default_recipe(loaded.config), context or self.context
        context = min(context, loaded.config.max_position)
        if self.format == "onnx":
            if prefill:
                raise ValueError(f"--prefill: --target {self.name} builds ONNX, which has no prefill signatures")
            return fn(loaded, out, recipe, context_length=context, vision_quant=vision_quant,
                      **({"sae": sae} if sae else {}))
        if not hasattr(loaded.config, "vision") and loaded.config.embedding_head is not None:
            return _export_embedder(fn, loaded, out, recipe, user_context, prefill)
        # the profile's lengths that fit the context; a user's --prefill is taken as given (checked by the exporter;
        # a vision-language model's takes one length, export.converters.litert.vision)
        lengths = tuple(prefill) if prefill else tuple(t for t in self.prefill if t <= context) or (context,)
        if hasattr(loaded.config, "vision") and not prefill:
            lengths = DEFAULT_PREFILL
        return fn(loaded, out, recipe, prefill_lengths=lengths, cache_length=context, consume=consume,
                  **({"vision_quant": vision_quant} if vision_quant else {}), **({"sae": sae} if sae else {}))


def _export_embedder(fn, loaded, out, recipe: str, context: int | None, prefill):
    """EmbeddingGemma on a LiteRT target: --prefill names the sequence lengths of its signatures (LiteRT:
    embed_{T}; a bundle: the text encoder's encoder_{S}); it has no KV cache, so --context has no meaning."""
    if context:
        raise ValueError(f"--context {context}: {loaded.source} is an embedding model (no KV cache); its longest "
                         f"sequence is set by --prefill (the signature lengths)")
    return fn(loaded, out, recipe, prefill_lengths=tuple(prefill) if prefill else None)


# Prefill lengths: the exporters' defaults (runtime_py.contract). Contexts: the default on phones (Gemma 3's
# few global layers keep the fp32 KV caches small); 2048 on the web, where a wasm32 heap is capped at 4 GB;
# 8192 on desktops. Default recipes: int4 where the download and RAM matter (phones); on the web, what
# bench/web_formats.py measured fastest per byte on onnxruntime-web's wasm build; fp16 on desktops
# (it passes validation at half fp32's size, int8 does not: README, the quantization table).
TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("android", "litert", "litertlm", "int4", DEFAULT_CONTEXT, DEFAULT_PREFILL,
           "LiteRT-LM on Android (model.litertlm)", ("pixel-8", "pixel-9", "galaxy-s24", "galaxy-a54")),
    Target("ios", "litert", "litertlm", "int4", DEFAULT_CONTEXT, DEFAULT_PREFILL,
           "LiteRT-LM on iOS (model.litertlm)", ("iphone-15-pro",)),
    Target("web", "onnx", "onnx-web", WEB_RECIPE, 2048, None,
           "transformers.js 4.x / onnxruntime-web (wasm, WebGPU): config.json + onnx/model_fp16.onnx, caches that grow "
           "from empty; recipe web = float16 weights run as float32, measured fastest per byte on wasm (int4 "
           "MatMulNBits ~100x, int8 MatMulInteger ~10x slower: bench/results/web_formats.json); EmbeddingGemma: "
           f"recipe {WEB_EMBEDDER_RECIPE} (int8 MatMulNBits body, int8 table read by Gather: 327 MB, cosine 0.9996; in "
           "Chromium within 10% of the 420-620 MB float bodies at 128 tokens; float16 weights or compute held cosine "
           "0.999999 on random weights at real shapes, not proof for the real model's activations: "
           "bench/results/browser_embedding*.json)",
           embedding_recipe=WEB_EMBEDDER_RECIPE),
    Target("desktop", "onnx", "onnx-folder", "fp16", 8192, None,
           "onnxruntime-genai on Windows / macOS / Linux: ONNX folder with genai_config.json"),
    Target("litert", "litert", "tflite-folder", "fp32", DEFAULT_CONTEXT, DEFAULT_PREFILL,
           "raw LiteRT: model.tflite with prefill_{T}/decode signatures"),
    Target("onnx", "onnx", "onnx-folder", "fp32", DEFAULT_CONTEXT, None,
           "raw ONNX: model.onnx + genai_config.json for onnxruntime / onnxruntime-genai"),
)}


def target(name: str) -> Target:
    if name not in TARGETS:
        raise ValueError(f"--target {name}: unknown target; known: {', '.join(TARGETS)}")
    return TARGETS[name]


def rows() -> list[dict]:
    """The table as plain rows (for `gemma-export targets`)."""
    return [{**dataclasses.asdict(t), "prefill": list(t.prefill) if t.prefill else None,
             "devices": list(t.devices)} for t in TARGETS.values()]
