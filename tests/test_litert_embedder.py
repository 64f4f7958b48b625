"""EmbeddingGemma as a LiteRT model (signatures embed_{T}) against transformers' Gemma3TextModel with the
sentence-transformers head, run through runtime_py: cosine >= 0.9999 in fp32, padded and unpadded rows."""
import numpy as np
import torch
import torch.nn.functional as F

import runtime_py
from export.converters.litert import export_litert
from export.models.checkpoints import load_model


@torch.no_grad()
def test_embeddinggemma_tflite_matches_the_reference_head(tiny_hf, tmp_path):
    hf = tiny_hf("embeddinggemma", tokenizer=True)
    ref, denses = hf.ref, hf.denses
    out = export_litert(load_model(hf.path), tmp_path / "litert", prefill_lengths=(16, 48))
    m = runtime_py.load(out)
    assert m.kind == "embedding"
    vocab = ref.config.vocab_size
    lengths = [5, 16, 40]                          # padded into embed_16, exactly embed_16, padded into embed_48
    seqs = [torch.randint(4, vocab, (n,), generator=torch.Generator().manual_seed(n)) for n in lengths]
    ids = np.zeros((len(seqs), 40), np.int64)
    mask = np.zeros_like(ids)
    for r, s in enumerate(seqs):
        ids[r, :len(s)], mask[r, :len(s)] = s.numpy(), 1
    got = m.backend.embed(ids, mask)
    for r, s in enumerate(seqs):
        hidden = ref(input_ids=s[None]).last_hidden_state                     # [1, n, d], no padding at all
        expected = F.normalize(hidden.mean(1) @ denses[0].T @ denses[1].T, dim=-1)[0].numpy()
        assert np.abs(got[r] - expected).max() < 1e-5
        assert float(got[r] @ expected) > 0.9999
    assert m.embed("the quick brown fox").shape == (denses[1].shape[0],)
    # the .tflite alone (no manifest, no tokenizer beside it), as another tool would hand it over
    bare = tmp_path / "bare" / "model.tflite"
    bare.parent.mkdir()
    bare.write_bytes((out / "model.tflite").read_bytes())
    alone = runtime_py.load(bare)
    assert alone.kind == "embedding" and alone.manifest is None
    assert np.abs(alone.backend.embed(ids, mask) - got).max() == 0
