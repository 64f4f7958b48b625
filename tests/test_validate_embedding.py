"""`validate` on EmbeddingGemma artifacts: cosine to the reference and top-10 retrieval overlap on the bundled
query/document set, per recipe of the web target (fp32, fp16, int8, int4, mixed, web, web-q8) on the tiny random model."""
from __future__ import annotations

import json

import numpy as np
import pytest

from export.cli import main
from export.converters.onnx import export_onnx_web
from export.models.checkpoints import load_model
from export.validate import validate
from export.validate_embedding import retrieval_set, top_k_overlap


def test_bundled_retrieval_set_is_20_queries_by_100_documents():
    queries, documents = retrieval_set()
    assert len(queries) == 20 and len(documents) == 100 and len(set(documents)) == 100


def test_top_k_overlap_counts_shared_documents():
    rng = np.random.default_rng(0)
    q, d = rng.standard_normal((5, 8)), rng.standard_normal((30, 8))
    assert (top_k_overlap(q, d, q, d) == 1).all()
    # an artifact whose document vectors are another's: count the overlap by hand
    d2 = rng.standard_normal((30, 8))
    for row, got in zip(q, top_k_overlap(q, d, q, d2)):
        ref = sorted(range(30), key=lambda j: -float(row @ d[j]))[:10]
        art = sorted(range(30), key=lambda j: -float(row @ d2[j]))[:10]
        assert got == len(set(ref) & set(art)) / 10


def test_fp32_web_artifact_keeps_every_top10(tiny_embedding_web, capsys):
    assert main(["validate", str(tiny_embedding_web.folder), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["passed"] and r["embedding_cosine"] >= 0.9999 and r["retrieval_top10_overlap"] == 1.0
    assert r["retrieval_queries"] == 20 and r["retrieval_documents"] == 100
    assert r["quantization"]["retrieval_top10_overlap_min"] == 1.0


@pytest.mark.parametrize("recipe", ["fp16", "int8", "int4", "mixed", "web", "web-q8"])
def test_recipes_report_cosine_and_overlap(tiny_embedding_web, tmp_path, recipe):
    loaded = load_model(tiny_embedding_web.hf.path)
    r = validate(export_onnx_web(loaded, tmp_path / recipe, recipe, 512), loaded=loaded)
    print(f"\n{recipe}: cosine min {r['embedding_cosine']:.6f} mean {r['embedding_cosine_mean']:.6f}, top-10 overlap "
          f"{r['retrieval_top10_overlap']:.3f} (min {r['retrieval_top10_overlap_min']:.1f})")
    assert r["conversion"]["passed"], r["conversion"]["failures"]       # the artifact computes its recipe
    assert 0 <= r["retrieval_top10_overlap_min"] <= r["retrieval_top10_overlap"] <= 1
    if recipe in ("fp16", "int8", "web", "web-q8"):                     # the goal for int8
        assert r["embedding_cosine"] >= 0.99 and r["quantization"]["passed"]
