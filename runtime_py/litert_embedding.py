"""EmbeddingGemma's LiteRT backends (kind "embedding"): LiteRTBundleEmbedder runs LiteRT-LM's embedding bundle as its
EmbeddingEngine does (contract: runtime_py.contract, LITERT_EMBEDDING_FILES): each token's row from the embedder
model, the rows into the shortest text-encoder signature `encoder_{S}` with S >= n, `input_mask` 1 on the n real rows
and 0 after, output 0 the embedding; LiteRTEmbedder runs our `embed_{T}` .tflite. Both take compiled models built by
runtime_py.litert_backend (LiteRT CompiledModels, run through litert_compiled.Signature)."""
from __future__ import annotations

import numpy as np

from .contract import (EMBED_PREFIX, EMBEDDER_SECTION, EMBEDDINGS, ENCODER_PREFIX, INPUT_MASK, POOLED,
                       TEXT_ENCODER_SECTION, TOKEN_IDS, signature_length)
from .litert_compiled import Signature


class LiteRTBundleEmbedder:
    """kind "embedding" over a bundle's embedder and text-encoder models ({section model type: CompiledModel})."""

    kind = "embedding"

    def __init__(self, models: dict, where: str):
        self.path = where
        missing = [s for s in (EMBEDDER_SECTION, TEXT_ENCODER_SECTION) if s not in models]
        if missing:
            raise ValueError(f"{where}: no {' / '.join(missing)} section (an embedding bundle has both)")
        embedder = models[EMBEDDER_SECTION]
        (name,) = embedder.get_signature_list()
        self.lookup = Signature(embedder, name)
        encoder = models[TEXT_ENCODER_SECTION]
        self.signatures = {}                      # S -> (runner, its input details)
        for name in encoder.get_signature_list():
            if name.startswith(ENCODER_PREFIX):
                runner = Signature(encoder, name)
                inputs = runner.inputs
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


class LiteRTEmbedder:
    """kind "embedding": an EmbeddingGemma .tflite with signatures `embed_{T}` (inputs tokens, mask int32
    [1, T]; output embeddings [1, D]). A sequence of n tokens runs through the shortest T >= n, padded."""

    kind = "embedding"

    def __init__(self, model, path: str):
        self.model, self.path = model, path
        sigs = {signature_length(n): Signature(model, n)
                for n in model.get_signature_list() if n.startswith(EMBED_PREFIX)}
        self.signatures = dict(sorted(sigs.items()))              # T -> runner
        self.context_length = max(self.signatures)
        self.vocab_size = None

    def embed(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """ids, mask [B, T] (right-padded) -> [B, D] float32, L2-normalised by the graph."""
        rows = []
        for row, m in zip(ids, mask):
            n = int(m.sum())
            t = padded_length(self.signatures, n, self.path, EMBED_PREFIX)
            tokens, valid = np.zeros((1, t), np.int32), np.zeros((1, t), np.int32)
            tokens[0, :n], valid[0, :n] = row[:n], 1
            rows.append(self.signatures[t](tokens=tokens, mask=valid)["embeddings"][0])
        return np.stack(rows).astype(np.float32)


def padded_length(lengths, n: int, where: str, prefix: str) -> int:
    """The shortest signature length >= n of `lengths` (ascending) that a sequence of n tokens is padded to."""
    t = next((t for t in lengths if t >= n), None)
    if t is None:
        raise ValueError(f"{where}: {n} tokens exceed the longest signature {prefix}{max(lengths)}")
    return t
