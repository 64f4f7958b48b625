"""EmbeddingGemma as a LiteRT model (signatures embed_{T}) against sentence-transformers' model of the same weights
(conftest.st_reference) on the same token ids, run through runtime_py: cosine >= 0.9999 in fp32, padded and
unpadded rows."""
import numpy as np
import torch

import runtime_py
from export.converters.litert import export_litert
from export.models.checkpoints import load_model


@torch.no_grad()
def test_embeddinggemma_tflite_matches_the_reference_head(tiny_hf, st_reference, tmp_path):
    hf = tiny_hf("embeddinggemma", tokenizer=True)
    st = st_reference(hf.path)
    out = export_litert(load_model(hf.path), tmp_path / "litert", prefill_lengths=(16, 48))
    m = runtime_py.load(out)
    assert m.kind == "embedding"
    vocab = st[0].auto_model.config.vocab_size
    lengths = [5, 16, 40]                          # padded into embed_16, exactly embed_16, padded into embed_48
    seqs = [torch.randint(4, vocab, (n,), generator=torch.Generator().manual_seed(n)) for n in lengths]
    ids = np.zeros((len(seqs), 40), np.int64)
    mask = np.zeros_like(ids)
    for r, s in enumerate(seqs):
        ids[r, :len(s)], mask[r, :len(s)] = s.numpy(), 1
    got = m.backend.embed(ids, mask)
    for r, s in enumerate(seqs):
        one = {"input_ids": s[None], "attention_mask": torch.ones(1, len(s), dtype=torch.long)}   # no padding at all
        expected = st(one)["sentence_embedding"][0].numpy()
        assert np.abs(got[r] - expected).max() < 1e-5
        assert float(got[r] @ expected) > 0.9999
    assert m.embed("the quick brown fox").shape == (st.get_sentence_embedding_dimension(),)
    # the .tflite alone (no manifest, no tokenizer beside it), as another tool would hand it over
    bare = tmp_path / "bare" / "model.tflite"
    bare.parent.mkdir()
    bare.write_bytes((out / "model.tflite").read_bytes())
    alone = runtime_py.load(bare)
    assert alone.kind == "embedding" and alone.manifest is None
    assert np.abs(alone.backend.embed(ids, mask) - got).max() == 0
