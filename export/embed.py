"""`gemma-export embed`: EmbeddingGemma vectors from a checkpoint (Hugging Face folder, GGUF) or an artifact (ONNX
folder, LiteRT artifact). Both go through runtime_py's Model.embed (task prompts, <bos> .. <eos>, padding,
Matryoshka truncation); a checkpoint's forward pass is the reference PyTorch model's."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from runtime_py.api import Model

from .converters.artifact import as_plain


class ReferenceBackend:
    """runtime_py's embedding backend contract over the reference model: embed(ids [B, T], mask [B, T]) -> [B, D]."""
    kind = "embedding"

    def __init__(self, loaded):
        self.model, self.context_length = loaded.model, loaded.config.max_position

    def embed(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()


def reference_embedder(loaded) -> Model:
    """A loaded checkpoint (export.models.checkpoints.LoadedModel) as a runtime_py Model; ValueError unless it is
    an embedding model with a tokenizer."""
    if loaded.config.embedding_head is None:
        raise ValueError(f"{loaded.source} is not an embedding model (EmbeddingGemma); `embed` needs one")
    if loaded.tokenizer is None:
        raise ValueError(f"{loaded.source}: no tokenizer; `embed` takes text")
    return Model(Path(loaded.source), ReferenceBackend(loaded), loaded.tokenizer, as_plain(loaded.config), None)


def open_embedder(source: str, artifact: bool, threads: int | None = None) -> Model:
    """An artifact through runtime_py, or a checkpoint through its reference model."""
    if artifact:
        import runtime_py
        return runtime_py.load(source, threads=threads)
    from .models.checkpoints import load_model
    return reference_embedder(load_model(source))
