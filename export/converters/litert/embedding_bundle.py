"""`--target android|ios` for EmbeddingGemma: a `.litertlm` in the layout LiteRT-LM 0.18's EmbeddingEngine runs
(runtime/core/embedding_engine_impl.cc, runtime/executor/embedding_litert_compiled_model_executor.cc):

  tf_lite_embedder      token_ids int32 [1, 1] -> embeddings [1, 1, d]: the scaled token embedding (the engine
                        looks each token up and writes the rows into the encoder's `embeddings` buffer)
  tf_lite_text_encoder  signatures encoder_{S}, S ascending: embeddings f32 [1, S, d] and input_mask f32 [1, S]
                        (the engine writes 1 for its n rows, 0 after; it picks the shortest S >= n) ->
                        output 0: the mean-pooled (over the real rows only), dense, L2-normalised embedding [1, D]
  EmbeddingMetadata     bos / eos token ids (the engine inserts them around the text) and the generic model type
  SentencePiece tokenizer, and our facts in the system metadata (runtime_py reads the bundle without guessing)

The rows after the n real ones hold whatever the engine's buffer held: the encoder replaces them by zeros
before anything reads them, keeps them out of every attention as keys and out of the pool."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from runtime_py.contract import EMBEDDINGS, INPUT_MASK, LITERT_EMBEDDING_FILES, POOLED, encoder_signature

from ..artifact import import_record, staged_dir, write_manifest
from .vision import convert_to_tflite, quantize_pending

EMBEDDER, TEXT_ENCODER = LITERT_EMBEDDING_FILES.values()
KIND = "embedding_bundle"             # manifest.json `kind` of the artifact folder this module writes


class TextEncoder(nn.Module):
    """embeddings [1, S, d], input_mask [1, S] (1 = real row) -> {POOLED: [1, D]}: GemmaEmbedder past its lookup."""

    def __init__(self, embedder: nn.Module):
        super().__init__()
        self.embedder = embedder

    def forward(self, embeddings, input_mask):
        valid = input_mask > 0.5
        rows = torch.where(valid[..., None], embeddings, torch.zeros((), dtype=embeddings.dtype))
        positions = torch.arange(embeddings.shape[1])
        h, _ = self.embedder.model(None, positions, None, padding_mask=valid, embeds=rows)
        return {POOLED: self.embedder.head(h, valid)}


def encoder_lengths(config, lengths) -> list[int]:
    """The encoder's signature lengths: `lengths` (default export.converters.litert.embedder.DEFAULT_LENGTHS)
    capped by the model's context."""
    from .embedder import DEFAULT_LENGTHS
    out = sorted({min(int(t), config.max_position) for t in (lengths or DEFAULT_LENGTHS)})
    if out[0] < 1:
        raise ValueError(f"--prefill {','.join(map(str, out))}: each encoder length must be at least 1")
    return out


def check_blocks(model: nn.Module, r, source) -> None:
    """Refuse, before minutes of conversion, a recipe whose blocks do not divide the input width of a matmul (the
    body's) or of the embedding table's rows: ai-edge-quantizer would stop on it after the conversion."""
    widths = {"matmul": {m.in_features for m in model.modules() if isinstance(m, nn.Linear)},
              "embedding table": {model.model.embed_tokens.embedding_dim}}
    for what, lay in (("matmul", r.layout("", table=False)), ("embedding table", r.layout("", table=True))):
        bad = sorted(w for w in widths[what] if lay is not None and lay.block and w % lay.block)
        if bad:
            raise ValueError(f"--quant {r.name}: its blocks of {lay.block} do not divide the {what} input width "
                             f"{', '.join(map(str, bad))} of {source}; use a per-channel recipe (int8, int8-wo)")


def export_embedding_litert(loaded, out: str | Path, r, lengths=None) -> Path:
    """The artifact folder a bundle is built from: embedder.tflite, text_encoder.tflite (both with recipe `r`),
    tokenizer.model, manifest.json."""
    from . import LOW_MEMORY_FLAGS
    from .vision_graphs import Embedder, embedder_sample
    c = loaded.config
    lengths = encoder_lengths(c, lengths)
    if loaded.tokenizer is None:
        raise ValueError(f"{loaded.source}: a .litertlm bundle needs the model's tokenizer (tokenizer.model)")
    model = loaded.model.eval()
    check_blocks(model, r, loaded.source)
    encoder = [(encoder_signature(t), TextEncoder(model),
                {EMBEDDINGS: torch.zeros(1, t, c.hidden_size), INPUT_MASK: torch.ones(1, t)}) for t in lengths]
    with staged_dir(out) as tmp:
        pending = convert_to_tflite(encoder, model, tmp, TEXT_ENCODER, r, LOW_MEMORY_FLAGS)
        pending += convert_to_tflite([("embedder", Embedder(model), embedder_sample())], model, tmp, EMBEDDER, r,
                                     LOW_MEMORY_FLAGS)
        quantize_pending(tmp, pending)
        loaded.tokenizer.save(tmp / "tokenizer.model")
        write_manifest(tmp, source=str(loaded.source), config=c, recipe=r, target="litert", extra={
            **import_record(loaded, {}), "kind": KIND, "context_length": lengths[-1], "sequence_lengths": lengths,
            "signatures": [encoder_signature(t) for t in lengths]})
    return Path(out)


def embedding_metadata(config: dict, tokenizer_proto: bytes):
    """The EmbeddingMetadata proto: the tokenizer's <bos> / <eos> (the config's if it defines none), generic type."""
    import sentencepiece as spm
    from litert_lm_builder.runtime.proto import embedding_metadata_pb2

    sp = spm.SentencePieceProcessor(model_proto=tokenizer_proto)
    bos = sp.bos_id() if sp.bos_id() >= 0 else config.get("bos_id")
    eos = sp.eos_id() if sp.eos_id() >= 0 else config.get("eos_id")
    if bos is None or eos is None:
        raise ValueError("the tokenizer defines no <bos>/<eos> id and the config names none")
    meta = embedding_metadata_pb2.EmbeddingMetadata()
    meta.embedding_model_type.generic_model.SetInParent()
    meta.bos_token.token_ids.ids.append(int(bos))
    meta.eos_token.token_ids.ids.append(int(eos))
    return meta


def build_embedding_litertlm(folder: Path, out_file: Path, manifest: dict) -> Path:
    """Bundle a folder export_embedding_litert wrote into `out_file`."""
    from .bundle import system_metadata, write_litertlm
    tok = folder / "tokenizer.model"
    models = [(section, folder / name) for section, name in LITERT_EMBEDDING_FILES.items()]
    for _, path in models + [(None, tok)]:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (an embedding .litertlm bundle needs the artifact's "
                                    f"{', '.join(LITERT_EMBEDDING_FILES.values())} and tokenizer.model)")
    config = manifest.get("config") or {}
    facts = {"config": config, "context_length": manifest.get("context_length"), "kind": KIND,
             "sequence_lengths": manifest.get("sequence_lengths"), "recipe": manifest.get("recipe"),
             "source": manifest.get("source")}
    write_litertlm(out_file, system_metadata(facts), tok, models,
                   embedding=embedding_metadata(config, tok.read_bytes()))
    return out_file

