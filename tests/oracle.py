"""The parity oracle: tiny random transformers models of every architecture, built offline from
config objects, and saved as Hugging Face folders for our loader to read."""
from __future__ import annotations

import json

import torch
import transformers as tf

# One tiny config per architecture. Windows are short so prompts run well past them.
TINY = {
    "gemma": ("GemmaForCausalLM", tf.GemmaConfig, dict(num_key_value_heads=1)),
    "gemma-mha": ("GemmaForCausalLM", tf.GemmaConfig, dict(num_key_value_heads=4)),
    "gemma2": ("Gemma2ForCausalLM", tf.Gemma2Config, dict(
        num_key_value_heads=2, sliding_window=8, query_pre_attn_scalar=24, attn_logit_softcapping=3.0,
        final_logit_softcapping=2.0, num_hidden_layers=4)),
    "gemma3": ("Gemma3ForCausalLM", tf.Gemma3TextConfig, dict(
        num_key_value_heads=2, sliding_window=8, num_hidden_layers=7, query_pre_attn_scalar=16,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})),
    "embeddinggemma": ("Gemma3TextModel", tf.Gemma3TextConfig, dict(
        num_key_value_heads=1, sliding_window=8, num_hidden_layers=7, query_pre_attn_scalar=16,
        use_bidirectional_attention=True)),
    # Griffin: 2 x (recurrent, recurrent, attention); sqrt(48) is not a bfloat16, lru_width != hidden,
    # head_dim 32 (RoPE on 16 of them: GroupQueryAttention needs a multiple of 16).
    "recurrentgemma": ("RecurrentGemmaForCausalLM", tf.RecurrentGemmaConfig, dict(
        hidden_size=48, lru_width=32, head_dim=32, num_key_value_heads=1, attention_window_size=8,
        num_hidden_layers=6)),
}
COMMON = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
              num_attention_heads=4, head_dim=16, max_position_embeddings=512)


# A small Gemma-like SentencePiece vocabulary, trained here: <pad>=0 <eos>=1 <bos>=2 <unk>=3.
CORPUS = ["The quick brown fox jumps over the lazy dog while the old cat sleeps on the warm red carpet.\n",
          "Yes, no, maybe. Is this a question? Yes it is. No it is not. Hello world!\n",
          "You are a policy expert trying to help determine whether a user prompt is in violation.\n"] * 20


def tiny_tokenizer() -> bytes:
    """Serialized SentencePiece BPE model (384 pieces) with Gemma's special ids and byte fallback."""
    import io

    import sentencepiece as spm
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=buf, vocab_size=384, model_type="bpe", pad_id=0, eos_id=1,
        bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>", "Yes", "No", "\n"], byte_fallback=True,
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
