"""genai_config.json: what onnxruntime-genai (and runtime_py) read to drive the decoder graph.

Families onnxruntime-genai has no model type for (RecurrentGemma: its recurrent state is outside
its KV-cache model) get the same description with `type` null, extended by `kv_layers` (the
layers with KV caches) and `states` ([input, output] name pairs fed back between calls); it is
stored in manifest.json as `runtime_config` for runtime_py instead of a genai_config.json that
onnxruntime-genai would try and fail to run."""
from __future__ import annotations

from runtime_py.contract import ONNX_PAST_NAMES, ONNX_PRESENT_NAMES

from ...models.config import GemmaConfig, LayerType
from .griffin import state_names

GENAI_TYPES = {"gemma": "gemma", "gemma2": "gemma2", "gemma3": "gemma3_text"}


def genai_supported(c: GemmaConfig) -> bool:
    return c.family in GENAI_TYPES


def genai_config(c: GemmaConfig, context_length: int, filename: str = "model.onnx", window_caches: bool = True) -> dict:
    """window_caches: sliding layers keep window-sized caches (the native graph); False: every cache grows (the web
    graph, whose sliding layers mask by GroupQueryAttention's local_window_size)."""
    decoder = {
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
        "filename": filename,
        "head_size": c.head_dim,
        "hidden_size": c.hidden_size,
        "num_attention_heads": c.num_heads,
        "num_hidden_layers": c.num_layers,
        "num_key_value_heads": c.num_kv_heads,
        "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                   "past_key_names": ONNX_PAST_NAMES[0], "past_value_names": ONNX_PAST_NAMES[1]},
        "outputs": {"logits": "logits", "present_key_names": ONNX_PRESENT_NAMES[0],
                    "present_value_names": ONNX_PRESENT_NAMES[1]},
    }
    local = [i for i, t in enumerate(c.layer_types) if t is LayerType.LOCAL]
    if local and window_caches:
        decoder["sliding_window"] = {"window_size": c.sliding_window, "slide_key_value_cache": False,
                                     "slide_inputs": False, "layers": local, "cache_slack": 0}
    recurrent = [i for i, t in enumerate(c.layer_types) if t is LayerType.RECURRENT]
    if recurrent:
        decoder["kv_layers"] = [i for i in range(c.num_layers) if i not in recurrent]
        decoder["states"] = [list(pair) for pair in state_names(recurrent)]
    return {
        "model": {"bos_token_id": c.bos_id, "eos_token_id": c.eos_id, "pad_token_id": c.pad_id,
                  "context_length": context_length, "vocab_size": c.vocab_size, "type": GENAI_TYPES.get(c.family),
                  "decoder": decoder},
        "search": {"do_sample": False, "max_length": context_length, "min_length": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": True, "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 1, "top_p": 1.0, "early_stopping": True,
                   "length_penalty": 1.0, "diversity_penalty": 0.0, "no_repeat_ngram_size": 0},
    }
