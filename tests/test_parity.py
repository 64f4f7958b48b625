"""Our reference models against transformers, for a tiny random model of every architecture,
loaded through our Hugging Face folder reader: full forward, cached decoding, chunked prefill,
all on sequences longer than the sliding window."""
import pytest
import torch

from export.models import EmbeddingHead, init_cache
from export.models.checkpoints import load_model

from oracle import TINY, hf_greedy, tokens

CAUSAL = [a for a in TINY if a != "embeddinggemma"]
T = 40   # the tiny sliding window is 8


@pytest.fixture(scope="module", params=CAUSAL)
def pair(request, tiny_hf):
    hf = tiny_hf(request.param)
    return hf.ref, load_model(hf.path).model


def _tokens(n, seed=1):
    return tokens(n, 160, seed)


@torch.no_grad()
def test_full_forward_matches_transformers(pair):
    ref, ours = pair
    toks = _tokens(T)
    expected = ref(toks).logits
    got, cache = ours(toks, torch.arange(T))
    assert cache is None
    assert (got - expected).abs().max().item() < 1e-4


@torch.no_grad()
@pytest.mark.parametrize("chunks", [[T], [1] * T, [5, 3, 12, 1, 19], [13, 27]])
def test_cached_decoding_equals_full_forward(pair, chunks):
    """Prefill and decode in pieces (some longer than the window) through the ring-buffer cache."""
    ref, ours = pair
    toks = _tokens(T)
    expected = ref(toks).logits
    cache, start, outs = init_cache(ours.config, T), 0, []
    for n in chunks:
        logits, cache = ours(toks[:, start:start + n], torch.arange(start, start + n), cache)
        outs.append(logits)
        start += n
    assert (torch.cat(outs, 1) - expected).abs().max().item() < 1e-4


def test_sliding_layers_keep_window_sized_caches(pair):
    """Sliding layers hold a window, global ones the whole context, recurrent ones a fixed state
    (RG-LRU in float32 even for a bfloat16 model, and the Conv1D's last K-1 inputs)."""
    _, ours = pair
    cfg = ours.config
    cache = init_cache(cfg, 500, dtype=torch.bfloat16)
    for t, entry in zip(cfg.layer_types, cache):
        if t.value == "recurrent":
            W = cfg.recurrent_width
            assert entry.rg_lru.shape == (1, W) and entry.rg_lru.dtype == torch.float32
            assert entry.conv1d.shape == (1, cfg.conv1d_width - 1, W) and entry.conv1d.dtype == torch.bfloat16
        else:
            assert entry.k.shape[2] == (cfg.sliding_window if t.value == "sliding_attention" else 500)


@torch.no_grad()
def test_greedy_generation_matches_transformers(pair):
    from export.models.generate import generate
    ref, ours = pair
    prompt = _tokens(12, seed=3)
    assert generate(ours, prompt[0].tolist(), 30) == hf_greedy(ref, prompt, 30)


@torch.no_grad()
def test_embeddinggemma_matches_transformers_and_sentence_transformers(tiny_hf, st_reference):
    import torch.nn.functional as F
    hf = tiny_hf("embeddinggemma", tokenizer=True)
    ref = hf.ref
    ours = load_model(hf.path).model
    toks = _tokens(T)
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, 29:] = 0                                   # second row padded
    toks = torch.cat([toks, _tokens(T, seed=2)])
    hidden = ref(input_ids=toks, attention_mask=mask).last_hidden_state
    assert (ours.model(toks, torch.arange(T), padding_mask=mask.bool())[0] - hidden)[mask.bool()].abs().max() < 1e-4
    # sentence-transformers' model of the same weights (its Pooling, Dense, Dense, Normalize) on the same ids
    expected = st_reference(hf.path)({"input_ids": toks, "attention_mask": mask})["sentence_embedding"]
    got = ours(toks, mask)
    assert (got - expected).abs().max() < 1e-5
    # Matryoshka: truncate, then re-normalise (tiny widths stand in for 768/512/256/128)
    ours.config = ours.config.replace(embedding_head=EmbeddingHead(ours.config.embedding_head.dense_dims, (64, 32)))
    assert torch.allclose(ours(toks, mask, dim=32), F.normalize(expected[:, :32], dim=-1), atol=1e-5)
    with pytest.raises(ValueError, match="Matryoshka"):
        ours(toks, mask, dim=48)
