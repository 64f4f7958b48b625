"""sentence-transformers' EmbeddingGemma built offline from a Hugging Face folder of EmbeddingGemma's weights: the
reference the embedding tests and the embedding bench compare every artifact to (`SentenceTransformer.encode`).

The folder is laid out as Google's conversion writes google/embeddinggemma-300m (transformers'
models/gemma3/convert_gemma3_weights.py, its embedding variant): modules Transformer (Gemma3TextModel),
Pooling (mean), Dense, Dense (bias-free, Identity), Normalize; a GemmaTokenizer from the SentencePiece model that
adds <bos> and <eos> and pads on the right; the task prompts of its config_sentence_transformers.json.

The input folder holds config.json, the model's safetensors, tokenizer.model and 2_Dense / 3_Dense (each
config.json + model.safetensors with `linear.weight`, as sentence-transformers saves a Dense module)."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

# config_sentence_transformers.json's prompts (convert_gemma3_weights.py, task_prompts)
PROMPTS = {
    "query": "task: search result | query: ",
    "document": "title: none | text: ",
    "BitextMining": "task: search result | query: ",
    "Clustering": "task: clustering | query: ",
    "Classification": "task: classification | query: ",
    "InstructionRetrieval": "task: code retrieval | query: ",
    "MultilabelClassification": "task: classification | query: ",
    "PairClassification": "task: sentence similarity | query: ",
    "Reranking": "task: search result | query: ",
    "Retrieval": "task: search result | query: ",
    "Retrieval-query": "task: search result | query: ",
    "Retrieval-document": "title: none | text: ",
    "STS": "task: sentence similarity | query: ",
    "Summarization": "task: summarization | query: ",
}
DENSE_FOLDERS = ("2_Dense", "3_Dense")


def write_sentence_transformer(folder: Path, out: Path) -> Path:
    """The sentence-transformers folder of the EmbeddingGemma weights in `folder`, saved to `out` (float32)."""
    import torch
    from safetensors.torch import load_file
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer
    from transformers import GemmaTokenizer
    from transformers.tokenization_utils_sentencepiece import SentencePieceExtractor

    folder, out = Path(folder), Path(out)
    config = json.loads((folder / "config.json").read_text())
    vocab, _, merges = SentencePieceExtractor(str(folder / "tokenizer.model")).extract()
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=True,
                               padding_side="right")
    with tempfile.TemporaryDirectory() as tok:
        tokenizer.save_pretrained(tok)
        transformer = Transformer(str(folder), tokenizer_name_or_path=tok,
                                  model_kwargs={"dtype": torch.float32, "local_files_only": True},
                                  max_seq_length=config["max_position_embeddings"])
    denses = []
    for sub in DENSE_FOLDERS:
        cfg = json.loads((folder / sub / "config.json").read_text())
        weight = load_file(str(folder / sub / "model.safetensors"))["linear.weight"].float()
        denses.append(Dense(cfg["in_features"], cfg["out_features"], bias=False, activation_function=None,
                            init_weight=torch.nn.Parameter(weight)))
    model = SentenceTransformer(modules=[transformer, Pooling(config["hidden_size"], pooling_mode="mean"),
                                         *denses, Normalize()], prompts=PROMPTS, device="cpu")
    model.save_pretrained(str(out))
    shutil.copyfile(folder / "tokenizer.model", out / "tokenizer.model")     # as the published folder has it
    return out


def load_sentence_transformer(out: Path):
    """The saved folder, loaded back as an app would load google/embeddinggemma-300m (offline, CPU)."""
    from sentence_transformers import SentenceTransformer
    return SentenceTransformer(str(out), device="cpu", local_files_only=True)
