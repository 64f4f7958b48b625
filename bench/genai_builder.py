"""onnxruntime-genai's own model builder, run in process: the peer ONNX exporter the benchmarks compare
with and the tests use as an independent reference."""
from __future__ import annotations

from runtime_py.contract import FULL_ATTENTION, SLIDING_ATTENTION


def run_genai_builder(hf_dir, out_dir, cache, precision: str | None = "fp32", extra_options: list[str] = (),
                      execution_provider: str = "cpu") -> None:
    """onnxruntime-genai's own model builder, in process: an independent ONNX exporter, for `execution_provider`
    (its `-e`; "webgpu" is its output made for the web). `precision` None: the builder's own choice. transformers 5
    nests Gemma 3's rope thetas in `rope_parameters`; the builder reads the flat fields (else KeyError
    'rope_type'), so its config loader is patched for the call (a config file cannot carry them: transformers
    rebuilds rope_parameters on load)."""
    import onnxruntime_genai.models  # noqa: F401  (puts the builder's folder on sys.path)
    import builder

    original = builder.AutoConfig

    class FlatRopeConfig:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            cfg = original.from_pretrained(*args, **kwargs)
            rope = getattr(cfg, "rope_parameters", None)
            if isinstance(rope, dict) and FULL_ATTENTION in rope:
                cfg.rope_theta = rope[FULL_ATTENTION]["rope_theta"]
                cfg.rope_local_base_freq = rope[SLIDING_ATTENTION]["rope_theta"]
                cfg.rope_parameters = {"rope_type": "default", "rope_theta": cfg.rope_theta}
            return cfg

    builder.AutoConfig = FlatRopeConfig
    try:
        extra = builder.parse_extra_options("", str(hf_dir), str(out_dir), precision, execution_provider,
                                            str(cache), list(extra_options))
        builder.create_model("", str(hf_dir), str(out_dir), precision, execution_provider, str(cache), **extra)
    finally:
        builder.AutoConfig = original
