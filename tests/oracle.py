"""The parity oracle, shared by every test file: tiny random transformers models of every architecture,
built offline from config objects and saved as Hugging Face folders (or written as GGUF files the way
llama.cpp writes them) for our loaders to read; the references run on them (transformers' greedy path,
the LiteRT-LM signature contract and round-to-nearest quantization derived from a transformers config
alone); the published parameter counts of the real checkpoints."""
from __future__ import annotations

import functools
import json

import gguf
import numpy as np
import torch
import transformers as tf
from gguf import GGMLQuantizationType as Q

GEMMA3_LAYERS = ["sliding_attention", "full_attention", "sliding_attention"]
# One tiny config per architecture. Windows are short so prompts run well past them.
TINY = {
    "gemma": ("GemmaForCausalLM", tf.GemmaConfig, dict(num_key_value_heads=1)),
    "gemma-mha": ("GemmaForCausalLM", tf.GemmaConfig, dict(num_key_value_heads=4)),
    "gemma2": ("Gemma2ForCausalLM", tf.Gemma2Config, dict(
        num_key_value_heads=2, sliding_window=8, query_pre_attn_scalar=24, attn_logit_softcapping=3.0,
        final_logit_softcapping=2.0, num_hidden_layers=4)),
    # Gemma 3: a global layer between sliding ones in three layers (its 5:1 pattern would take seven, and
    # LiteRT conversion time grows with the layers)
    "gemma3": ("Gemma3ForCausalLM", tf.Gemma3TextConfig, dict(
        num_key_value_heads=2, sliding_window=8, num_hidden_layers=3, layer_types=GEMMA3_LAYERS,
        query_pre_attn_scalar=16,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})),
    "embeddinggemma": ("Gemma3TextModel", tf.Gemma3TextConfig, dict(
        num_key_value_heads=1, sliding_window=8, num_hidden_layers=3, layer_types=GEMMA3_LAYERS,
        query_pre_attn_scalar=16, use_bidirectional_attention=True)),
    # Griffin: 2 x (recurrent, recurrent, attention); sqrt(48) is not a bfloat16, lru_width != hidden,
    # head_dim 32 (RoPE on 16 of them: GroupQueryAttention needs a multiple of 16).
    "recurrentgemma": ("RecurrentGemmaForCausalLM", tf.RecurrentGemmaConfig, dict(
        hidden_size=48, lru_width=32, head_dim=32, num_key_value_heads=1, attention_window_size=8,
        num_hidden_layers=6)),
}
COMMON = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
              num_attention_heads=4, head_dim=16, max_position_embeddings=512)
# The tiny causal models' LiteRT conversions (conftest.tiny_litert): chunks longer than the window (16 > 8)
# only matter with sliding layers, and each signature costs conversion time.
LITERT_PREFILL = {"gemma": (8,), "gemma-mha": (8,), "gemma2": (8, 16), "gemma3": (8, 16)}
LITERT_CONTEXT = 64

# Published counts of the real checkpoints (safetensors totals). Gemma 3 4B/12B/27B are the
# multimodal checkpoints' totals minus the SigLIP tower (416,866,032) and the projector
# (1152 * d + 1152): their text decoders are what the presets describe.
SIGLIP = 416_866_032
PUBLISHED_PARAMETERS = {
    "gemma-2b": 2_506_172_416,
    "gemma-7b": 8_537_680_896,
    "codegemma-2b": 2_506_172_416,
    "codegemma-7b": 8_537_680_896,
    "gemma2-2b": 2_614_341_888,
    "gemma2-9b": 9_241_705_984,
    "gemma2-27b": 27_227_128_320,
    "shieldgemma-2b": 2_614_341_888,
    "shieldgemma-9b": 9_241_705_984,
    "shieldgemma-27b": 27_227_128_320,
    "gemma3-270m": 268_098_176,
    "gemma3-1b": 999_885_952,
    "gemma3-4b": 4_300_079_472 - SIGLIP - (1152 * 2560 + 1152),
    "gemma3-12b": 12_187_325_040 - SIGLIP - (1152 * 3840 + 1152),
    "gemma3-27b": 27_432_406_640 - SIGLIP - (1152 * 5376 + 1152),
    "embeddinggemma-300m": 307_581_696,   # with the 768->3072->768 dense head
    # RecurrentGemma: transformers' RecurrentGemmaForCausalLM built from the published config.json
    # of google/recurrentgemma-2b and -9b (tests/test_presets.py); the 9B's bf16 shards (19.25 GB
    # with an untied copy of the 256000 x 4096 embedding) agree.
    "recurrentgemma-2b": 2_682_862_080,
    "recurrentgemma-9b": 8_579_977_216,
}


def tokens(n: int, vocab: int = 160, seed: int = 1, batch: int = 1) -> torch.Tensor:
    """[batch, n] random token ids, the same for the same arguments."""
    return torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def genai_greedy(folder, prompt, max_length: int) -> list[int]:
    """The tokens onnxruntime-genai picks greedily after `prompt` ([1, T] ids) in the artifact `folder`, up to
    `max_length` tokens in all."""
    import onnxruntime_genai as og
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=max_length, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(np.asarray(prompt).astype(np.int32))
    got = []
    while not gen.is_done():
        gen.generate_next_token()
        got.append(int(gen.get_next_tokens()[0]))
    return got


def hf_greedy(ref, prompt, n: int) -> list[int]:
    """The `n` tokens transformers' model picks greedily after `prompt`, by its full forward re-run per
    token (not its `generate`, whose sliding caches disagree with its forward for tiny Gemma 2 models)."""
    seq = torch.as_tensor(prompt).reshape(1, -1)
    start = seq.shape[1]
    for _ in range(n):
        seq = torch.cat([seq, ref(seq).logits[:, -1:].argmax(-1)], 1)
    return seq[0, start:].tolist()


def litert_io(cfg, prefill_lengths, context: int) -> dict:
    """The signatures a LiteRT artifact of the transformers config `cfg` must have (LiteRT-LM's names:
    `tokens`, `input_pos`, `kv_cache_k_{i}` / `kv_cache_v_{i}` in and out, `logits`; RecurrentGemma's
    `rg_lru_state_{i}` / `conv1d_state_{i}` beside them): {signature: {"inputs"/"outputs": {name: shape}}}.
    Caches are [1, kv heads, slots, head dim], the window's slots on sliding layers, the context's on global
    ones; shapes from the config's own fields."""
    kinds = getattr(cfg, "layers_block_type", None) or getattr(cfg, "layer_types", None) \
        or ["full_attention"] * cfg.num_hidden_layers
    window = getattr(cfg, "attention_window_size", None) or getattr(cfg, "sliding_window", None)
    state = {}
    for i, kind in enumerate(kinds):
        if kind in ("recurrent", "linear_attention"):             # RecurrentGemma's RG-LRU blocks
            state[f"rg_lru_state_{i}"] = (1, cfg.lru_width)
            state[f"conv1d_state_{i}"] = (1, cfg.conv1d_width - 1, cfg.lru_width)
            continue
        slots = min(window, context) if kind in ("sliding_attention", "attention") else context
        for kv in "kv":
            state[f"kv_cache_{kv}_{i}"] = (1, cfg.num_key_value_heads, slots, cfg.head_dim)
    return {name: {"inputs": {"tokens": (1, t), "input_pos": (t,), **state},
                   "outputs": {"logits": (1, t, cfg.vocab_size), **state}}
            for name, t in [*((f"prefill_{t}", t) for t in prefill_lengths), ("decode", 1)]}


def matrix_parameters(model) -> tuple[int, int]:
    """(decoder linear weights, embedding table) parameter counts of a transformers model: what a recipe
    quantizes (the table is tied to the LM head and stored once)."""
    body = sum(m.weight.numel() for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and ".layers." in f".{n}")
    return body, model.get_input_embeddings().weight.numel()


def rtn(w: torch.Tensor, bits: int, block: int | None) -> torch.Tensor:
    """Symmetric round-to-nearest of `w` [rows, cols] per block of `block` columns (None: a whole row),
    as onnxruntime's MatMulNBits quantizer and llama.cpp's Q4_0 define it: the block's value of largest
    magnitude maps to -2^(bits-1) (MLAS q4_dq.cpp: scale = max / -8), the rest rounded to the steps
    -2^(bits-1) .. 2^(bits-1) - 1. Returns the dequantized values."""
    rows, cols = w.shape
    block = block or cols
    pad = -cols % block
    b = torch.nn.functional.pad(w.double(), (0, pad)).reshape(rows, -1, block)
    top = b.gather(-1, b.abs().argmax(-1, keepdim=True))
    scale = top / -(2 ** (bits - 1))
    q = torch.where(scale == 0, 0.0, b / torch.where(scale == 0, 1.0, scale)).round()
    q = q.clamp(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return (q * scale).reshape(rows, -1)[:, :cols].to(w.dtype)


@torch.no_grad()
def hf_rounded(model, weight_bits: int, block: int | None, embedding_bits: int, embedding_block: int | None,
               within: str = ""):
    """A copy of transformers' model with every decoder linear weight and the (tied) embedding table rounded
    as `rtn` does, computing in float32: what a weight-quantized artifact of it should compute, activations
    aside. within: only the linear layers whose name contains it (a vision-language model's `language_model`)."""
    import copy
    rounded = copy.deepcopy(model)
    for name, module in rounded.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}" and within in name:
            module.weight.copy_(rtn(module.weight, weight_bits, block))
    table = rounded.get_input_embeddings().weight
    table.copy_(rtn(table, embedding_bits, embedding_block))
    return rounded


# --- GGUF files as llama.cpp's convert_hf_to_gguf.py writes them ------------------------------------

ARCHS = {"gemma": gguf.MODEL_ARCH.GEMMA, "gemma2": gguf.MODEL_ARCH.GEMMA2, "gemma3": gguf.MODEL_ARCH.GEMMA3,
         "embeddinggemma": gguf.MODEL_ARCH.GEMMA_EMBEDDING}
# GGUF tensor kind -> stored type in the quantized tiny files (the rest stays F32, like norms)
QUANT = {"token_embd": Q.Q8_0, "attn_q": Q.Q8_0, "attn_k": Q.Q8_0, "attn_v": Q.F16,
         "ffn_gate": Q.Q8_0, "ffn_up": Q.Q8_0, "ffn_down": Q.Q8_0}


def gguf_tensors(model, family, dense=()) -> dict[str, np.ndarray]:
    """convert_hf_to_gguf.py's tensors: gguf-py names, `norm.weight` + 1, lm_head dropped."""
    names = gguf.get_tensor_name_map(ARCHS[family], model.config.num_hidden_layers)
    out = {}
    for hf_name, w in model.state_dict().items():
        if hf_name == "lm_head.weight":
            continue
        if family == "embeddinggemma":                     # Gemma3TextModel has no "model." prefix
            hf_name = "model." + hf_name
        w = w.float().numpy() + (1.0 if hf_name.endswith("norm.weight") else 0.0)
        out[names.get_name(hf_name.removesuffix(".weight")) + ".weight"] = w
    for i, w in enumerate(dense):
        out[f"dense_{i + 2}.weight"] = w.numpy()
    return out


def write_gguf(path, hp, family, tensors, quantize=False, arch_name=None, qtypes=None):
    """What convert_hf_to_gguf.py writes for `family` from config.json values `hp`, a toy
    vocabulary, and the tensors (if `quantize`: the types of `qtypes`, by tensor key, default QUANT)."""
    w = gguf.GGUFWriter(str(path), arch_name or gguf.MODEL_ARCH_NAMES[ARCHS[family]])
    w.add_context_length(hp["max_position_embeddings"])
    w.add_embedding_length(hp["hidden_size"])
    w.add_block_count(hp["num_hidden_layers"])
    w.add_feed_forward_length(hp["intermediate_size"])
    w.add_head_count(hp["num_attention_heads"])
    w.add_head_count_kv(hp["num_key_value_heads"])
    w.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    w.add_key_length(hp["head_dim"])
    w.add_value_length(hp["head_dim"])
    if family == "gemma2":
        w.add_attn_logit_softcapping(hp["attn_logit_softcapping"])
        w.add_final_logit_softcapping(hp["final_logit_softcapping"])
        w.add_sliding_window(hp["sliding_window"])
    if family in ("gemma3", "embeddinggemma"):
        rope = hp["rope_parameters"].get("full_attention", hp["rope_parameters"])
        w.add_rope_freq_base(rope["rope_theta"])
        if rope.get("rope_type") == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(rope["factor"])
        if hp.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(hp["final_logit_softcapping"])
        w.add_sliding_window(hp["sliding_window"])
    if family == "embeddinggemma":
        w.add_pooling_type(gguf.PoolingType.MEAN)
    vocab = len(tensors["token_embd.weight"])
    w.add_tokenizer_model("llama")
    w.add_token_list([f"<t{i}>" for i in range(vocab)])
    w.add_token_scores([0.0] * vocab)
    w.add_token_types([1] * vocab)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_pad_token_id(0)
    w.add_unk_token_id(3)
    w.add_add_space_prefix(False)
    for name, t in tensors.items():
        qtype = (qtypes or QUANT).get(name.split(".")[-2], Q.F32) if quantize else Q.F32
        if qtype == Q.F32:
            w.add_tensor(name, t.astype(np.float32))
        else:
            w.add_tensor(name, gguf.quants.quantize(t.astype(np.float32), qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_tiny(path, model, family, dense=(), **kw):
    """A tiny transformers model as llama.cpp converts it (to_dict() gives config.json's values)."""
    return write_gguf(path, model.config.to_dict(), family, gguf_tensors(model, family, dense), **kw)


# A small Gemma-like SentencePiece vocabulary, trained here: <pad>=0 <eos>=1 <bos>=2 <unk>=3.
CORPUS = ["The quick brown fox jumps over the lazy dog while the old cat sleeps on the warm red carpet.\n",
          "Yes, no, maybe. Is this a question? Yes it is. No it is not. Hello world!\n",
          "You are a policy expert trying to help determine whether a user prompt is in violation.\n"] * 20


@functools.cache
def tiny_tokenizer(symbols: tuple[str, ...] = ()) -> bytes:
    """Serialized SentencePiece BPE model (384 pieces) with Gemma's special ids and byte fallback; `symbols`:
    more user-defined pieces, after the usual ones (whose ids they leave as they are)."""
    import io

    import sentencepiece as spm
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=buf, vocab_size=384, model_type="bpe", pad_id=0, eos_id=1,
        bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>", "Yes", "No", "\n", *symbols], byte_fallback=True,
        add_dummy_prefix=False, normalization_rule_name="identity", remove_extra_whitespaces=False,
        hard_vocab_limit=False, minloglevel=2)
    return buf.getvalue()


def hf_config(arch: str, **overrides):
    name, cls, extra = TINY[arch]
    cfg = cls(**{**COMMON, **extra, **overrides}, architectures=[name])
    cfg._attn_implementation = "eager"
    return cfg


def hf_model(arch: str, seed: int = 0, **overrides):
    """A transformers model with every weight random (norm weights too, so (1 + w) is tested)."""
    cfg = hf_config(arch, **overrides)
    torch.manual_seed(seed)
    model = getattr(tf, TINY[arch][0])(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.5 if "norm" in name else 0.08)
    return model


def save_hf_folder(arch: str, path, seed: int = 0, dense=None, tokenizer: bool = False, **overrides):
    """Save a tiny model as an HF folder; EmbeddingGemma also gets sentence-transformers
    2_Dense/3_Dense folders with random weights (returned for the reference head). With
    `tokenizer`, the folder gets tokenizer.model and the vocabulary is the tokenizer's.
    `overrides`: config fields replacing the tiny ones."""
    from safetensors.torch import save_file
    proto = tiny_tokenizer() if tokenizer else None
    model = hf_model(arch, seed, **({"vocab_size": 384} if proto else {}), **overrides)
    model.save_pretrained(path)
    if proto:
        (path / "tokenizer.model").write_bytes(proto)
    denses = []
    if arch == "embeddinggemma":
        g = torch.Generator().manual_seed(seed + 1)
        dims = dense or (COMMON["hidden_size"], 128, COMMON["hidden_size"])
        for i, (a, b) in enumerate(zip(dims, dims[1:])):
            w = torch.randn(b, a, generator=g) * 0.1
            (path / f"{i + 2}_Dense").mkdir()
            save_file({"linear.weight": w}, str(path / f"{i + 2}_Dense" / "model.safetensors"))
            (path / f"{i + 2}_Dense" / "config.json").write_text(json.dumps(
                {"in_features": a, "out_features": b, "bias": False,
                 "activation_function": "torch.nn.modules.linear.Identity"}))
            denses.append(w)
    return model, denses
