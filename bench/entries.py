"""What is benchmarked: (label, runtime, artifact). Artifacts are bench.builders names, or "gguf" (the bundled
GGUF itself, which llama.cpp runs as is)."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Entry:
    key: str
    label: str
    runner: str         # bench.worker.RUNNERS key
    artifact: str       # bench.builders.BUILDERS key or "gguf"
    ours: bool = False
    int4: bool = False
    like: str = ""      # ours: the peer entry with the same weight format (like-for-like ratio)


ENTRIES = (
    Entry("ours-onnx-int4", "ours: ONNX int4 (runtime_py)", "runtime_py", "ours-onnx-int4", ours=True, int4=True,
          like="og-int4"),
    Entry("ours-onnx-int4-b128", "ours: ONNX int4 block 128 (runtime_py)", "runtime_py", "ours-onnx-int4-b128",
          ours=True, int4=True, like="og-int4-b128"),
    Entry("ours-litert-int4", "ours: LiteRT int4 (runtime_py)", "runtime_py", "ours-litert-int4", ours=True, int4=True),
    Entry("ours-litertlm-int4", "ours: LiteRT-LM int4 (--target android)", "litert-lm", "ours-android-int4", ours=True,
          int4=True, like="litertlm-int4"),
    Entry("ours-android-int4", "ours: LiteRT-LM int4 bundle (--target android) in runtime_py", "runtime_py",
          "ours-android-int4", ours=True, int4=True),
    Entry("ours-litert-fp32", "ours: LiteRT fp32 (runtime_py)", "runtime_py", "ours-litert-fp32", ours=True),
    Entry("llama.cpp", "llama.cpp Q4_K_M (same GGUF)", "llama.cpp", "gguf", int4=True),
    Entry("og-int4", "onnxruntime-genai builder int4", "onnxruntime-genai", "og-int4", int4=True),
    Entry("og-int4-b128", "onnxruntime-genai builder int4 block 128", "onnxruntime-genai", "og-int4-b128", int4=True),
    Entry("litertlm-int8", "LiteRT-LM export_hf int8 (wi8_afp32)", "litert-lm", "litertlm-int8"),
    Entry("litertlm-int4", "LiteRT-LM export_hf int4 (wi4b32_afp32)", "litert-lm", "litertlm-int4", int4=True),
    Entry("transformers", "transformers fp32 eager", "transformers", "hf"),
)
