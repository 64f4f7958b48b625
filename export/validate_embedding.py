"""`validate` on an embedding artifact (EmbeddingGemma): its vectors against the reference model's on the same
token ids (runtime_py's tokenization, task prompts included), on the bundled validation text's paragraphs and on
the bundled retrieval set (export/data/retrieval.json: 20 queries x 100 documents, written for this tool):

- quantization (reported): cosine to the float reference (min and mean over every text) and the top-10 retrieval
  overlap, |top-10 of the reference's ranking of the 100 documents ∩ the artifact's| / 10 per query (mean, min);
- conversion (the gate): the minimum cosine to the reference with the recipe simulated (export.quantize.simulate)."""
from __future__ import annotations

import json
from importlib import resources

import numpy as np

from .embed import reference_embedder

TOP_K = 10
PARAGRAPH_CHARS = 400          # validation-text paragraphs, cut to this many characters
PARAGRAPHS = 8


def retrieval_set() -> tuple[list[str], list[str]]:
    """(queries, documents) of the bundled retrieval set."""
    data = json.loads(resources.files("export.data").joinpath("retrieval.json").read_text(encoding="utf-8"))
    return data["queries"], data["documents"]


def top_k_overlap(ref_q: np.ndarray, ref_d: np.ndarray, art_q: np.ndarray, art_d: np.ndarray,
                  k: int = TOP_K) -> np.ndarray:
    """Per query: the share of the reference's k best documents (by dot product of unit vectors) that the
    artifact's k best hold too."""
    def best(q, d):
        return np.argsort(-(q.astype(np.float64) @ d.astype(np.float64).T), axis=-1, kind="stable")[:, :k]
    ref, art = best(ref_q, ref_d), best(art_q, art_d)
    return np.array([len(set(r) & set(a)) / k for r, a in zip(ref, art)])


def _vectors(model, paragraphs: list[str], queries: list[str], documents: list[str]):
    """(all texts' vectors stacked, query vectors, document vectors) of one runtime_py Model."""
    p = model.embed(paragraphs)
    q = model.embed(queries, task="query")
    d = model.embed(documents, task="document")
    return np.concatenate([p, q, d]), q, d


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)


def embedding_figures(art, ref_loaded, sim, paragraphs: list[str]) -> tuple[dict, dict]:
    """art: the artifact (runtime_py Model); ref_loaded: the reference LoadedModel; sim: its model with the recipe
    simulated (the model itself for a float recipe). -> (quantization figures, conversion figures)."""
    import dataclasses
    paragraphs = [t[:PARAGRAPH_CHARS] for t in paragraphs if t.strip()][:PARAGRAPHS]
    queries, documents = retrieval_set()
    got, got_q, got_d = _vectors(art, paragraphs, queries, documents)
    ref, ref_q, ref_d = _vectors(reference_embedder(ref_loaded), paragraphs, queries, documents)
    cos = _cosines(got, ref)
    overlap = top_k_overlap(ref_q, ref_d, got_q, got_d)
    figures = {"embedding_cosine": float(cos.min()), "embedding_cosine_mean": float(cos.mean()),
               "retrieval_top10_overlap": float(overlap.mean()), "retrieval_top10_overlap_min": float(overlap.min()),
               "texts": len(got), "retrieval_queries": len(queries), "retrieval_documents": len(documents)}
    if sim is ref_loaded.model:
        sim_cos = cos
    else:
        simulated = reference_embedder(dataclasses.replace(ref_loaded, model=sim))
        sim_cos = _cosines(got, _vectors(simulated, paragraphs, queries, documents)[0])
    return figures, {"embeddings": {"embedding_cosine": float(sim_cos.min())}}
