"""EmbeddingGemma as a LiteRT model: one signature `embed_{T}` per padded sequence length,

  inputs   tokens int32 [1, T], mask int32 [1, T] (1 = token, 0 = padding)
  outputs  embeddings float32 [1, D] (mean pooling, the dense head, L2-normalised)

converted by litert-torch from our reference GemmaEmbedder, with the same composites as the
causal LM. A runtime pads a sequence of n tokens to the shortest T >= n."""
from __future__ import annotations

import torch
from torch import nn

from runtime_py.contract import embed_signature

DEFAULT_LENGTHS = (128, 512, 2048)


class EmbedSignature(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor):
        return {"embeddings": self.model(tokens, mask)}


def convert_embedder(model: nn.Module, lengths, composites: bool = True, **flags):
    import litert_torch

    from . import LOW_MEMORY_FLAGS, stdout_to_stderr
    from .composites import marked_composites

    model = model.eval()
    converter = litert_torch.Converter()
    with torch.no_grad(), marked_composites(model, composites):
        for t in sorted(lengths):
            sample = {"tokens": torch.zeros(1, t, dtype=torch.int32), "mask": torch.ones(1, t, dtype=torch.int32)}
            converter.signature(embed_signature(t), EmbedSignature(model).eval(), sample_kwargs=sample)
        with stdout_to_stderr():
            return converter.convert(**{**LOW_MEMORY_FLAGS, **flags})
