"""Deployment targets: what `--target NAME` builds. A target names a deployment; its `format`
is the artifact format whose recipes it accepts."""
from __future__ import annotations

import dataclasses
import importlib


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    format: str           # onnx | litert: the format the recipe table is checked against
    exporter: str         # module:function taking (loaded, out, recipe, ...)
    description: str

    def export(self, loaded, out, recipe: str, context: int | None):
        module, func = self.exporter.split(":")
        fn = getattr(importlib.import_module(module), func)
        if self.format == "onnx":
            return fn(loaded, out, recipe, context_length=context)
        return fn(loaded, out, recipe, cache_length=context)


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("onnx", "onnx", "export.converters.onnx:export_onnx",
           "model.onnx + genai_config.json for onnxruntime / onnxruntime-genai"),
    Target("litert", "litert", "export.converters.litert:export_litert",
           "model.tflite with prefill_{T}/decode signatures for LiteRT"),
    Target("android", "litert", "export.converters.litert.bundle:export_litertlm",
           "model.litertlm for LiteRT-LM on Android"),
    Target("ios", "litert", "export.converters.litert.bundle:export_litertlm",
           "model.litertlm for LiteRT-LM on iOS"),
)}
