"""`--target web` on EmbeddingGemma: the folder transformers.js 4.x loads with `AutoModel.from_pretrained` (read
from @huggingface/transformers 4.3.2's dist/transformers.node.mjs; README "EmbeddingGemma on the web"):

- `config.json` with model_type `gemma3_text` (transformers.js maps it to Gemma3Model, one `model` session fed
  the graph inputs it names: input_ids, attention_mask) and a `transformers.js_config` naming the dtype of the
  one graph written (so that loading without a dtype picks it) and, when its weights live beside it, how many
  external-data files there are;
- `onnx/model{suffix}.onnx`, the suffix by dtype (DEFAULT_DTYPE_SUFFIX_MAPPING: fp32 none, fp16 `_fp16`, q8
  `_quantized`, q4 `_q4`), external data in `model{suffix}.onnx_data`;
- `tokenizer.json` + `tokenizer_config.json` (<bos> text <eos>, as EmbeddingGemma's tokenizer);
- outputs `sentence_embedding` (read as `model(inputs).sentence_embedding`) and `last_hidden_state` (what its
  feature-extraction pipeline pools: the transformer alone, without the dense head).
tokenizer.model and manifest.json (`model_file` names the graph) let runtime_py and `validate` run it.

Causal LMs (Gemma 1/2/3 text) get the folder transformers.js loads with `AutoModelForCausalLM` /
`pipeline("text-generation")`: config.json with the model_type transformers.js maps to GemmaForCausalLM /
Gemma2ForCausalLM / Gemma3ForCausalLM (a DecoderOnly model: one `model` session, caches made empty from the graph's
input metadata, past length read from the first cache), generation_config.json (its stop ids: <eos> and
<end_of_turn>), the chat template in tokenizer_config.json, the graph of decoder.py's web variant; manifest.json
carries the decoder description runtime_py reads (`runtime_config`: every cache grows, none is window-sized)."""
from __future__ import annotations

import json
from pathlib import Path

from runtime_py.contract import MODEL_FILE
from runtime_py.vision_prompts import GEMMA3_CHAT_TEMPLATE

from .folder import save_model

# our recipe -> transformers.js dtype (the file-name suffix it loads); int4 / mixed / int4-b128 keep int4
# MatMulNBits weights (q4), int8 / int8-wo int8 ones (q8, the wasm default)
DTYPES = {"fp32": "fp32", "fp16": "fp16", "int8": "q8", "int8-wo": "q8", "int4": "q4", "int4-b128": "q4",
          "mixed": "q4", "web": "fp16", "web-q8": "q8"}
# causal families transformers.js 4.x runs: family -> (config.json model_type, architecture)
CAUSAL_TYPES = {"gemma": ("gemma", "GemmaForCausalLM"), "gemma2": ("gemma2", "Gemma2ForCausalLM"),
                "gemma3": ("gemma3_text", "Gemma3ForCausalLM")}
SUFFIXES = {"fp32": "", "fp16": "_fp16", "q8": "_quantized", "q4": "_q4"}
WEB_LAYOUT = "transformers.js"
SUBFOLDER = "onnx"


def web_dtype(recipe_name: str) -> str:
    if recipe_name not in DTYPES:
        raise ValueError(f"--quant {recipe_name}: --target web has no transformers.js dtype for it; "
                         f"choose one of {', '.join(DTYPES)}")
    return DTYPES[recipe_name]


def hf_config(c, dtype: str, external: int) -> dict:
    """config.json as transformers writes it (EmbeddingGemma: Gemma3TextConfig, bidirectional; a causal LM: its
    family's CausalLM config) plus the transformers.js section."""
    graph = f"model{SUFFIXES[dtype]}.onnx"
    causal = c.embedding_head is None
    model_type, arch = CAUSAL_TYPES[c.family] if causal else ("gemma3_text", "Gemma3TextModel")
    cfg = {"architectures": [arch], "model_type": model_type, "vocab_size": c.vocab_size,
           "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
           "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
           "num_key_value_heads": c.num_kv_heads, "head_dim": c.head_dim, "rms_norm_eps": c.rms_eps,
           "max_position_embeddings": c.max_position, "layer_types": [t.value for t in c.layer_types],
           "sliding_window": c.sliding_window, "query_pre_attn_scalar": c.query_pre_attn_scalar,
           "rope_theta": c.rope_base, "rope_local_base_freq": c.rope_local_base,
           "hidden_activation": "gelu_pytorch_tanh", "hidden_act": "gelu_pytorch_tanh",
           "attn_logit_softcapping": c.attn_softcap, "final_logit_softcapping": c.final_softcap,
           "bos_token_id": c.bos_id, "eos_token_id": c.eos_id, "pad_token_id": c.pad_id, "torch_dtype": "float32",
           "transformers.js_config": {"dtype": dtype, **({"use_external_data_format": {graph: external}}
                                                         if external else {})}}
    if not causal:
        cfg["use_bidirectional_attention"] = True
    if c.rope_scale != 1.0:
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": c.rope_scale}
    return cfg


def causal_family(c) -> None:
    """Refuse, before any work, a causal model transformers.js has no class for."""
    if c.family not in CAUSAL_TYPES:
        raise ValueError(f"--target web: transformers.js has no causal LM class for {c.family}; web folders are "
                         f"written for {', '.join(CAUSAL_TYPES)} text models and EmbeddingGemma")


def generation_config(c, stop_ids) -> dict:
    """generation_config.json: transformers.js stops at any of `eos_token_id`."""
    return {"bos_token_id": c.bos_id, "eos_token_id": list(stop_ids) or [c.eos_id], "pad_token_id": c.pad_id}


def write_web_folder(proto, tmp: Path, c, recipe_name: str, stop_ids=()) -> dict:
    """The graph under onnx/ and config.json (a causal LM's: generation_config.json too, with `stop_ids`) into the
    staging folder `tmp`; -> manifest entries."""
    dtype = web_dtype(recipe_name)
    name = f"model{SUFFIXES[dtype]}.onnx"
    (tmp / SUBFOLDER).mkdir()
    path = tmp / SUBFOLDER / name
    save_model(proto, path, data_suffix="_data")
    external = int((tmp / SUBFOLDER / f"{name}_data").exists())
    (tmp / "config.json").write_text(json.dumps(hf_config(c, dtype, external), indent=2) + "\n")
    if c.embedding_head is None:
        (tmp / "generation_config.json").write_text(json.dumps(generation_config(c, stop_ids), indent=2) + "\n")
    return {MODEL_FILE: f"{SUBFOLDER}/{name}", "layout": WEB_LAYOUT, "transformers_js_dtype": dtype}


def chat_template(c) -> str | None:
    """The chat template transformers.js applies (`apply_chat_template`): Gemma's turns, as google/gemma-3-*-it's
    tokenizer_config.json writes them; none for an embedding model."""
    return GEMMA3_CHAT_TEMPLATE if c.embedding_head is None else None
