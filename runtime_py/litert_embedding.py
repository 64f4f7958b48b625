"""EmbeddingGemma's LiteRT-LM embedding bundle run as LiteRT-LM's EmbeddingEngine runs it (contract:
runtime_py.contract, LITERT_EMBEDDING_FILES): each token's row from the embedder model, the rows into the
shortest text-encoder signature `encoder_{S}` with S >= n, `input_mask` 1 on the n real rows and 0 after, output 0
the embedding. Depends on ai_edge_litert and numpy only."""
from __future__ import annotations

import numpy as np

from .contract import (EMBEDDER_SECTION, EMBEDDINGS, ENCODER_PREFIX, INPUT_MASK, POOLED, TEXT_ENCODER_SECTION,
                       TOKEN_IDS)
from .litert_backend import _interpreter, padded_length


class LiteRTBundleEmbedder:
    """kind "embedding" over a bundle's embedder and text-encoder models ({section model type: bytes})."""

    kind = "embedding"

    def __init__(self, models: dict[str, bytes], threads: int | None, where: str):
        self.path = where
        missing = [s for s in (EMBEDDER_SECTION, TEXT_ENCODER_SECTION) if s not in models]
        if missing:
            raise ValueError(f"{where}: no {' / '.join(missing)} section (an embedding bundle has both)")
        self._keep = models                       # the interpreters read the buffers in place
        embedder = _interpreter(None, models[EMBEDDER_SECTION], threads, where)
        (name,) = embedder.get_signature_list()
        self.lookup = embedder.get_signature_runner(name)
        encoder = _interpreter(None, models[TEXT_ENCODER_SECTION], threads, where)
        self.signatures = {}                      # S -> (runner, its input details)
        for name in encoder.get_signature_list():
            if name.startswith(ENCODER_PREFIX):
                runner = encoder.get_signature_runner(name)
                inputs = runner.get_input_details()
                if EMBEDDINGS not in inputs:
                    raise ValueError(f"{where}: signature {name!r} has no {EMBEDDINGS!r} input ({list(inputs)})")
                self.signatures[int(inputs[EMBEDDINGS]["shape"][1])] = (runner, inputs)
        if not self.signatures:
            raise ValueError(f"{where}: the text encoder has no {ENCODER_PREFIX}* signature")
        self.signatures = dict(sorted(self.signatures.items()))
        self.context_length = max(self.signatures)
        self.vocab_size = None
        self._rows: dict[int, np.ndarray] = {}

    def row(self, token: int) -> np.ndarray:
        """The embedder's row of one token [d] (kept: the same token costs one lookup)."""
        if token not in self._rows:
            out = self.lookup(**{TOKEN_IDS: np.array([[token]], np.int32)})
            self._rows[token] = next(iter(out.values())).reshape(-1)
        return self._rows[token]

    def embed(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """ids, mask [B, T] (right-padded) -> [B, D] float32 (L2-normalised by the graph)."""
        out = []
        for row, m in zip(ids, mask):
            n = int(m.sum())
            runner, inputs = self.signatures[padded_length(self.signatures, n, self.path, ENCODER_PREFIX)]
            rows = np.zeros(inputs[EMBEDDINGS]["shape"], np.float32)
            rows[0, :n] = np.stack([self.row(int(t)) for t in row[:n]])
            feed = {EMBEDDINGS: rows}
            if INPUT_MASK in inputs:
                valid = np.zeros(inputs[INPUT_MASK]["shape"], np.float32)
                valid.reshape(-1)[:n] = 1.0
                feed[INPUT_MASK] = valid
            result = runner(**feed)
            out.append(np.asarray(result[POOLED if POOLED in result else next(iter(result))]).reshape(-1))
        return np.stack(out).astype(np.float32)

