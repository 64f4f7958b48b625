"""The artifact contract: the names and defaults that gemma-export's exporters write and runtime_py reads.

This is the lower layer's copy of every such fact; `export/` imports it from here and repeats none of it.
Standard library only (runtime_py never imports torch or `export`).
"""
from __future__ import annotations

# Default positions the KV caches hold (the exporters' --context; targets may override it).
DEFAULT_CONTEXT = 4096
# Default LiteRT prefill signature lengths: LiteRT-LM runs a prompt through the largest one that fits the
# remaining tokens (litert-community's Gemma 3 builds use 32/128/512/1280).
DEFAULT_PREFILL = (32, 128, 512)

# Layer types, as transformers writes them in config.json `layer_types` and our manifests' model config.
FULL_ATTENTION = "full_attention"          # attends to every earlier token; full-length cache
SLIDING_ATTENTION = "sliding_attention"    # attends to the last `sliding_window` tokens; ring-buffer cache
RECURRENT = "recurrent"                    # Griffin recurrent block (Conv1D + RG-LRU); fixed-size state

# Gemma's chat turns (its tokenizer's chat template); <bos> is not part of them.
START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"
# role as written in the prompt -> (text before the turn's content, text after it)
TURN_TEMPLATES = {role: (f"{START_OF_TURN}{role}\n", f"{END_OF_TURN}\n") for role in ("user", "model")}

# .litertlm system metadata key our bundler writes: the manifest's model config and LiteRT facts, as JSON.
CONFIG_KEY = "gemma_export_config"

# --- ONNX (onnxruntime-genai's decoder contract; genai_config.json names these patterns) --------------------
ONNX_PAST_NAMES = ("past_key_values.%d.key", "past_key_values.%d.value")
ONNX_PRESENT_NAMES = ("present.%d.key", "present.%d.value")
ONNX_PRESENT_PREFIX = "present_"           # a recurrent state's output: this prefix + its input name
# Logits at the last k positions only (0: all): our native graphs' optional input, and the required scalar input
# of `--target web` graphs (transformers.js's name, fed when a graph declares it)
LOGITS_TO_KEEP, NUM_LOGITS_TO_KEEP = "logits_to_keep", "num_logits_to_keep"

# --- EmbeddingGemma ONNX: input_ids, attention_mask -> these (the names transformers.js and onnx-community's
# EmbeddingGemma folders use): the pooled, dense-projected, L2-normalised vector [B, D], and the final-norm
# hidden states [B, T, d] that transformers.js's feature-extraction pipeline reads
SENTENCE_EMBEDDING, LAST_HIDDEN_STATE = "sentence_embedding", "last_hidden_state"
MODEL_FILE = "model_file"                  # manifest.json: the graph's path in the folder when not model.onnx

# --- vision-language ONNX folders (onnxruntime-genai's vision / embedding / decoder split) ---------------------
VISION_FILE, EMBEDDING_FILE = "vision.onnx", "embedding.onnx"
PIXEL_VALUES, IMAGE_FEATURES, INPUTS_EMBEDS = "pixel_values", "image_features", "inputs_embeds"
VISION_KEY = "vision"                      # manifest.json: how images become rows (kind, size, ids, normalisation)

# --- LiteRT signatures (LiteRT-LM's names) -------------------------------------------------------------------
PREFILL_DECODE_SECTION = "tf_lite_prefill_decode"  # a .litertlm section's model_type: the text model (these signatures)
DECODE_SIGNATURE = "decode"
PREFILL_PREFIX = "prefill_"                # prefill_{T}: T new tokens
EMBED_PREFIX = "embed_"                    # embed_{T}: an EmbeddingGemma sequence padded to T tokens
KV_CACHE_PREFIX = "kv_cache_"              # kv_cache_k_{i}, kv_cache_v_{i}
TOKENS, INPUT_POS = "tokens", "input_pos"  # int32 [1, T], int32 [T]: a text signature's inputs beside the caches
LOGITS = "logits"                          # float32 [1, T, V]: decode's output (T = 1) and a prefill's (below)
# What a text artifact's `prefill_{T}` signatures output as LOGITS, recorded as manifest.json's PREFILL_LOGITS:
#   PREFILL_ALL_ROWS (True)  every row [1, T, V] (`--target litert`: runtime_py's logits() reads a prompt in chunks)
#   PREFILL_NO_LOGITS (False) none (`--target android|ios` bundles: LiteRT-LM holds a prompt's last token back for
#                            `decode` and never reads prefill logits; readers take every position through decode)
#   PREFILL_LAST_ROW ("last") the last real row [1, 1, V] (vision-language graphs)
# Readers go by the signature's output shape, so artifacts of any of these kinds load.
PREFILL_LOGITS = "prefill_logits"
PREFILL_ALL_ROWS, PREFILL_NO_LOGITS, PREFILL_LAST_ROW = True, False, "last"

# --- recurrent state (RecurrentGemma), the same input names on both formats ---------------------------------
RG_LRU_STATE = "rg_lru_state_{i}"          # [B, lru_width] float32: the RG-LRU hidden state
CONV1D_STATE = "conv1d_state_{i}"          # [B, conv1d_width - 1, lru_width]: the Conv1D's last inputs
STATE_PREFIXES = tuple(name.split("{")[0] for name in (RG_LRU_STATE, CONV1D_STATE))


def prefill_signature(length: int) -> str:
    return f"{PREFILL_PREFIX}{length}"


def embed_signature(length: int) -> str:
    return f"{EMBED_PREFIX}{length}"


def signature_length(name: str) -> int:
    """T of `prefill_{T}` / `embed_{T}` / `encoder_{T}`."""
    return int(name.rsplit("_", 1)[1])


def kv_cache_names(layer: int) -> tuple[str, str]:
    """The LiteRT key and value cache names of a layer."""
    return f"{KV_CACHE_PREFIX}k_{layer}", f"{KV_CACHE_PREFIX}v_{layer}"


def parse_kv_cache_name(name: str) -> tuple[str, int]:
    """kv_cache_{k|v}_{i} -> ("k" | "v", i)."""
    kind, layer = name[len(KV_CACHE_PREFIX):].split("_")
    return kind, int(layer)


def state_names(layer: int) -> tuple[str, str]:
    """A recurrent layer's state inputs (rg_lru_state_{i}, conv1d_state_{i})."""
    return RG_LRU_STATE.format(i=layer), CONV1D_STATE.format(i=layer)


def is_cache(name: str) -> bool:
    """A LiteRT tensor carried from one call to the next: a KV cache or a recurrent state."""
    return name.startswith((KV_CACHE_PREFIX, *STATE_PREFIXES))

# --- vision-language LiteRT (LiteRT-LM 0.18's vision sections; README "LiteRT vision bundles") ---------------
# section model_type (the .litertlm section's `model_type` item) -> the .tflite file of an artifact folder
LITERT_VISION_FILES = {PREFILL_DECODE_SECTION: "model.tflite", "tf_lite_embedder": "embedder.tflite",
                       "tf_lite_vision_encoder": "vision_encoder.tflite",
                       "tf_lite_vision_adapter": "vision_adapter.tflite",
                       "tf_lite_end_of_vision": "end_of_vision.tflite"}
EMBEDDINGS, ATTENTION_MASK = "embeddings", "mask"  # the decoder's inputs beside input_pos and the caches
TOKEN_IDS = "token_ids"                    # the embedder's input, int32 [1, 1] -> embeddings [1, 1, d]
IMAGES, FEATURES, MM_EMBEDDING = "images", "features", "mm_embedding"   # encoder in/out, adapter out
# LiteRT-LM's attention mask values: 0 where a key is visible; masked keys far below any score
MASK_VISIBLE, MASK_HIDDEN = 0.0, -0.7 * 3.4028234663852886e38
# how image rows see each other (the executor metadata's attention mask type; our facts' `attention_mask`):
# Gemma 3: each contiguous run of image rows both ways; PaliGemma: the whole prefill chunk both ways
VISION_BIDIRECTIONAL, BIDIRECTIONAL = "vision_bidirectional", "bidirectional"

# --- EmbeddingGemma as LiteRT-LM 0.18's embedding bundle (embedding_litert_compiled_model_executor.cc) -------
# section model_type -> the .tflite file of an artifact folder: the embedder (TOKEN_IDS -> EMBEDDINGS, one row)
# and the text encoder, whose signatures `encoder_{S}` take EMBEDDINGS [1, S, d] and INPUT_MASK f32 [1, S]
# (1 = a real row; the engine fills it) and output first the pooled, dense, L2-normalised POOLED [1, D]
LITERT_EMBEDDING_FILES = {"tf_lite_embedder": "embedder.tflite", "tf_lite_text_encoder": "text_encoder.tflite"}
EMBEDDER_SECTION, TEXT_ENCODER_SECTION = LITERT_EMBEDDING_FILES
ENCODER_PREFIX, INPUT_MASK, POOLED = "encoder_", "input_mask", "embedding"


def encoder_signature(length: int) -> str:
    return f"{ENCODER_PREFIX}{length}"


# --- sparse autoencoders (Gemma Scope) carried by an artifact, one per `--sae`, numbered n = 0, 1, ... ---------
DEFAULT_SAE_K = 16                         # features per token an artifact emits (export --sae-k)
SAE_KEY = "sae"                            # manifest.json: [{site, layer, hook, width, d_in, k, encoder, decoder}]
SAE_VALUES = "sae_{n}_topk_values"         # output [B, T, k] float32: the k largest JumpReLU activations
SAE_INDICES = "sae_{n}_topk_indices"       # output [B, T, k]: their feature ids (ONNX int64, LiteRT int32)
SAE_STEER = "sae_{n}_steer"                # optional input [d_in] float32 (default zeros), added at the site
SAE_DECODER = "sae_{n}_decoder.npy"        # W_dec [width, d_in] float32: the rows steering is built from
# LiteRT: the SAE outputs and steering inputs live in signatures of their own beside prefill_{T} / decode (same
# caches, same weights): LiteRT-LM takes every signature named prefill* as a prefill runner, and would run the
# encoder on every token and feed the steering input whatever its own buffer holds (README)
SAE_PREFILL_PREFIX, SAE_DECODE_SIGNATURE = "sae_prefill_", "sae_decode"


def sae_prefill_signature(length: int) -> str:
    return f"{SAE_PREFILL_PREFIX}{length}"
