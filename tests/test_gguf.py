"""The GGUF loader. Tiny GGUFs are written (oracle.py) the way llama.cpp's convert_hf_to_gguf.py writes
them (gguf-py's own tensor-name map, +1 on every norm weight, no q/k permutation, the same
metadata keys), some tensors Q8_0/F16. Two oracles: transformers' GGUF reader (gemma2, gemma3),
and the source transformers model itself (every family, unquantized files). Then the real
Gemma 3 270M GGUF against transformers reading the same file."""

import gguf
import numpy as np
import pytest
import torch
import transformers as tf
from gguf import GGMLQuantizationType as Q

from export.models import PRESETS, build_model, preset
from export.models.checkpoints.gguf_loader import load_gguf
from export.models.checkpoints.weights import CheckpointError, assign_weights

from oracle import ARCHS, gguf_tensors, hf_model, tokens, write_gguf, write_tiny

# Settings that transformers' GGUF reader cannot take from the file, chosen equal to its defaults
# (query_pre_attn_scalar 256 = head_dim, gemma2 softcaps 50/30) so both readers build the same model.
HF_READABLE = dict(head_dim=256, query_pre_attn_scalar=256)
# A GGUF of Gemma 3 carries no per-layer sliding pattern: both readers take llama.cpp's default (5 sliding
# layers per global one), so the source model has that pattern too, over 7 layers.
DEFAULT_PATTERN = dict(num_hidden_layers=7, layer_types=None)
T = 20   # the tiny sliding window is 8


def ours(path):
    ckpt = load_gguf(path)
    with torch.device("meta"):
        model = build_model(ckpt.config)
    return assign_weights(model, ckpt.dequantized(), str(path)).eval()


# --- tiny files: transformers' GGUF reader as the oracle --------------------------------------

@torch.no_grad()
@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_quantized_tiny_gguf_matches_transformers_gguf_reader(family, tmp_path):
    overrides = dict(HF_READABLE, attn_logit_softcapping=50.0, final_logit_softcapping=30.0) \
        if family == "gemma2" else dict(HF_READABLE, rope_parameters=None, **DEFAULT_PATTERN)
    src = hf_model(family, **overrides)
    write_tiny(tmp_path / "m.gguf", src, family, quantize=True)
    ref = tf.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32,
                                                  attn_implementation="eager").eval()
    ckpt = load_gguf(tmp_path / "m.gguf")
    assert {ckpt.raw(n)[0] for n in ckpt.tensor_names} == {Q.F32, Q.F16, Q.Q8_0}
    qtype, blocks, shape = ckpt.raw("model.layers.0.mlp.up_proj.weight")      # the stored Q8_0 blocks
    assert qtype == Q.Q8_0 and blocks.dtype == np.uint8 and shape == (96, 64)
    up = torch.from_numpy(gguf.quants.dequantize(blocks, qtype)).view(shape)
    assert torch.equal(up, ckpt.dequantized()["model.layers.0.mlp.up_proj.weight"])
    toks = tokens(T)
    got, _ = ours(tmp_path / "m.gguf")(toks, torch.arange(T))
    assert (got - ref(toks).logits).abs().max().item() < 1e-4
    # and the file really is quantized: the source model differs by the rounding
    assert (got - src(toks).logits).abs().max().item() > 1e-4


# --- tiny files: the source model as the oracle (settings transformers' reader ignores) --------

CAUSAL = {
    "gemma": {},                                        # ffn_norm is the pre-MLP post_attention_layernorm
    "gemma2": dict(query_pre_attn_scalar=16),           # llama.cpp scales by head_dim (16); softcaps 3/2
    "gemma3": DEFAULT_PATTERN,                          # linear rope scaling 8 on global layers
}


@torch.no_grad()
@pytest.mark.parametrize("family", CAUSAL)
def test_tiny_gguf_matches_source_model(family, tmp_path):
    src = hf_model(family, **CAUSAL[family])
    path = write_tiny(tmp_path / "m.gguf", src, family)
    toks = tokens(T)
    got, _ = ours(path)(toks, torch.arange(T))
    assert (got - src(toks).logits).abs().max().item() < 1e-4


@torch.no_grad()
def test_tiny_embeddinggemma_gguf_matches_source_model(tmp_path):
    src = hf_model("embeddinggemma", **DEFAULT_PATTERN)
    g = torch.Generator().manual_seed(5)
    dense = (torch.randn(128, 64, generator=g) * 0.1, torch.randn(64, 128, generator=g) * 0.1)
    path = write_tiny(tmp_path / "m.gguf", src, "embeddinggemma", dense)
    model = ours(path)
    toks = tokens(T)
    mask = torch.ones_like(toks)
    pooled = src(input_ids=toks, attention_mask=mask).last_hidden_state.mean(1)
    expected = torch.nn.functional.normalize(pooled @ dense[0].T @ dense[1].T, dim=-1)
    assert model.config.embedding_head.dense_dims == (128, 64)
    assert (model(toks, mask) - expected).abs().max().item() < 1e-5


# --- metadata: every published size ----------------------------------------------------------

# llama.cpp has no RecurrentGemma architecture: its checkpoints come as Hugging Face folders only
@pytest.mark.parametrize("name", [n for n in sorted(PRESETS) if PRESETS[n].family in ARCHS])
def test_metadata_of_every_preset_reads_back_as_the_preset(name, tmp_path):
    """The keys convert_hf_to_gguf.py writes for a published size, plus llama.cpp's defaults for
    what it omits (local rope base, sliding pattern, 27B attention scale), give back the preset."""
    p = preset(name)
    rope = dict(rope_theta=p.rope_base, rope_type="linear" if p.rope_scale != 1 else "default", factor=p.rope_scale)
    hp = dict(max_position_embeddings=p.max_position, hidden_size=p.hidden_size, num_hidden_layers=p.num_layers,
              intermediate_size=p.intermediate_size, num_attention_heads=p.num_heads,
              num_key_value_heads=p.num_kv_heads, rms_norm_eps=p.rms_eps, head_dim=p.head_dim,
              attn_logit_softcapping=p.attn_softcap, final_logit_softcapping=p.final_softcap,
              sliding_window=p.sliding_window, rope_parameters={"full_attention": rope})
    embed = {"token_embd.weight": np.zeros((8, p.hidden_size))}    # only its shape is read here
    config = load_gguf(write_gguf(tmp_path / "m.gguf", hp, p.family, embed)).config
    # the vocabulary is the toy one; eps went through float32; dense widths come from dense tensors;
    # Gemma 1 presets leave query_pre_attn_scalar unset (= head_dim)
    assert config.attn_scale == p.attn_scale
    assert config.replace(vocab_size=p.vocab_size, rms_eps=p.rms_eps, embedding_head=p.embedding_head,
                          query_pre_attn_scalar=p.query_pre_attn_scalar) == p


# --- errors -----------------------------------------------------------------------------------

@pytest.fixture()
def gemma3_tensors():
    src = hf_model("gemma3")
    return src.config.to_dict(), gguf_tensors(src, "gemma3")


@pytest.mark.parametrize("edit, named", [
    ({"blk.0.attn_gate.weight": np.zeros((64, 64))}, "blk.0.attn_gate.weight"),              # unknown kind
    ({"blk.7.attn_q.weight": np.zeros((64, 64))}, "model.layers.7.self_attn.q_proj.weight"),  # extra block
    ({"blk.1.ffn_up.weight": None}, "model.layers.1.mlp.up_proj.weight"),                     # missing
    ({"blk.0.ffn_gate.weight": np.zeros((96, 32))}, "model.layers.0.mlp.gate_proj.weight"),   # misshaped
    ({"output.weight": np.ones((160, 64))}, "output.weight"),                                 # untied head
])
def test_bad_tensors_are_named_with_the_file(gemma3_tensors, tmp_path, edit, named):
    hp, tensors = gemma3_tensors
    edited = {name: t for name, t in {**tensors, **edit}.items() if t is not None}
    path = write_gguf(tmp_path / "bad.gguf", hp, "gemma3", edited)
    with pytest.raises(CheckpointError) as e:
        ours(path)
    assert named in str(e.value) and str(path) in str(e.value)


def test_tied_head_copy_is_accepted(gemma3_tensors, tmp_path):
    hp, tensors = gemma3_tensors
    with_head = {**tensors, "output.weight": tensors["token_embd.weight"]}
    path = write_gguf(tmp_path / "m.gguf", hp, "gemma3", with_head)
    assert "model.embed_tokens.weight" in load_gguf(path).dequantized()


def test_unknown_architecture_is_named_with_the_file(gemma3_tensors, tmp_path):
    hp, tensors = gemma3_tensors
    path = write_gguf(tmp_path / "llama.gguf", hp, "gemma3", tensors, arch_name="llama")
    with pytest.raises(CheckpointError) as e:
        load_gguf(path)
    assert "'llama'" in str(e.value) and str(path) in str(e.value) and "gemma-embedding" in str(e.value)


def test_not_a_gguf_is_named(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 this is a zip file" * 10)
    with pytest.raises(CheckpointError, match=str(path)):
        load_gguf(path)


# --- the real Gemma 3 270M GGUF (slow: transformers takes ~40 s to read it) ------------------------

@torch.no_grad()
def test_real_gguf_matches_transformers(real_model, hf_real):
    """A random 300-token block seen twice (601 tokens > the 512 window): logits within 1e-3 of
    transformers, and the second copy predicted by induction (wrong rope/q-k layout breaks it)."""
    model, ref = real_model.model, hf_real
    block = tokens(300, vocab=30_000, seed=0)[0] + 1000
    toks = torch.cat([torch.tensor([model.config.bos_id]), block, block])[None]
    got, _ = model(toks, torch.arange(toks.shape[1]))
    diff = (got - ref(toks).logits).abs().max().item()
    accuracy = (got[0, 301:-1].argmax(-1) == block[1:]).float().mean().item()
    print(f"\nmax |logit diff| {diff:.2e} over {toks.shape[1]} tokens; induction accuracy {accuracy:.3f}")
    assert diff < 1e-3
    assert accuracy > 0.8
    assert model.config.sliding_window == ref.config.sliding_window == 512


@torch.no_grad()
def test_real_greedy_continuation_matches_transformers_through_the_cli(real_model, hf_real, cli):
    """`gemma-export generate --json` on the bundled model: 32 greedy tokens equal to transformers'."""
    prompt = [2, 818, 5279, 529, 7001, 563]                     # <bos>The capital of France is
    expected = hf_real.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False)[0, 6:].tolist()
    status, result = cli(["generate", "--prompt", "The capital of France is", "--max-new-tokens", "32"])
    print(f"\n{result['text']!r}")
    assert status == 0 and result["prompt_tokens"] == len(prompt)
    assert result["token_ids"] == expected
    assert "France" in result["text"]
