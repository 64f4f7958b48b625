"""`gemma-export embed` on an EmbeddingGemma checkpoint and on its artifact: the same vectors, the task prompts,
Matryoshka widths, bad --task / --dim / model refused with one line (exit 2, nothing on stdout)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import torch
import pytest

from export.cli import main
from test_web_embedder import cosines

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hello world! Yes it is."]


def _embed(capsys, *argv) -> dict:
    assert main(["embed", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_checkpoint_and_artifact_give_the_reference_vectors_with_the_task_prompt(tiny_embedding_web, st_reference,
                                                                                  capsys):
    """sentence-transformers' vectors with the published prompts (its prompt_name "query"; a document's title
    written into its prompt)."""
    hf, folder = tiny_embedding_web.hf, tiny_embedding_web.folder
    st = st_reference(hf.path)
    ckpt = _embed(capsys, "--model", str(hf.path), "--task", "query", *TEXTS)
    art = _embed(capsys, "--model", str(folder), "--task", "query", *TEXTS)
    assert ckpt["prompt"] == "task: search result | query: " and ckpt["dim"] == 64
    expected = st.encode(TEXTS, prompt_name="query")
    assert cosines(ckpt["embeddings"], expected).min() >= 0.9999
    assert cosines(art["embeddings"], expected).min() >= 0.9999
    doc = _embed(capsys, "--model", str(folder), "--task", "document", "--title", "Foxes", TEXTS[0])
    assert doc["prompt"] == "title: Foxes | text: "
    assert cosines(doc["embeddings"], st.encode(TEXTS[:1], prompt="title: Foxes | text: ")).min() >= 0.9999


def test_matryoshka_dim_truncates_then_renormalises(tiny_embedding_web, tmp_path, capsys):
    folder = tmp_path / "web"
    shutil.copytree(tiny_embedding_web.folder, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["config"]["embedding_head"]["matryoshka_dims"] = [64, 32, 16]    # tiny stand-ins for 768/512/...
    (folder / "manifest.json").write_text(json.dumps(manifest))
    full = np.array(_embed(capsys, "--model", str(folder), *TEXTS)["embeddings"])
    short = np.array(_embed(capsys, "--model", str(folder), "--dim", "16", *TEXTS)["embeddings"])
    expected = full[:, :16] / np.linalg.norm(full[:, :16], axis=-1, keepdims=True)
    np.testing.assert_allclose(short, expected, atol=1e-6)
    assert main(["embed", "--model", str(folder), "--dim", "24", "x"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "dim 24" in captured.err and "[64, 32, 16]" in captured.err


@pytest.mark.parametrize("argv, named", [
    (["--task", "translation", "x"], "'translation'"),
    (["--dim", "0", "x"], "--dim 0"),
    (["--dim", "4096", "x"], "dim 4096"),
    (["--task", "query", "--title", "T", "x"], "title"),
])
def test_bad_task_or_dim_is_one_line(tiny_embedding_web, argv, named, capsys):
    assert main(["embed", "--model", str(tiny_embedding_web.folder), *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and named in captured.err and captured.err.strip().count("\n") == 0


def test_a_causal_model_is_refused(tiny_hf, capsys):
    path = tiny_hf("gemma3", tokenizer=True).path
    assert main(["embed", "--model", str(path), "x"]) == 2
    assert "not an embedding model" in capsys.readouterr().err


@torch.no_grad()
def test_gguf_checkpoint(tmp_path, capsys):
    """A GGUF EmbeddingGemma as llama.cpp writes it (toy vocabulary): the reference model's vectors on the ids of
    the GGUF's own tokenizer, <bos> .. <eos>, with the document prompt."""
    from oracle import hf_model, write_tiny
    # a GGUF carries no per-layer sliding pattern: llama.cpp's default (5 sliding per global), over 7 layers
    src = hf_model("embeddinggemma", num_hidden_layers=7, layer_types=None)
    g = torch.Generator().manual_seed(5)
    dense = (torch.randn(128, 64, generator=g) * 0.1, torch.randn(64, 128, generator=g) * 0.1)
    path = write_tiny(tmp_path / "m.gguf", src, "embeddinggemma", dense)
    got = _embed(capsys, "--model", str(path), "--task", "document", TEXTS[0])
    from export.models.checkpoints import load_model
    tok = load_model(path).tokenizer
    ids = torch.tensor([tok.encode("title: none | text: " + TEXTS[0]) + [tok.eos_id]])
    pooled = src(input_ids=ids).last_hidden_state.mean(1)
    expected = torch.nn.functional.normalize(pooled @ dense[0].T @ dense[1].T, dim=-1).numpy()
    assert got["tokens"] == [ids.shape[1]] and cosines(got["embeddings"], expected).min() >= 0.9999


def test_gguf_embedder_default_folder_names_its_recipe(tmp_path, monkeypatch):
    """`--target web` on a GGUF EmbeddingGemma with no --quant / --out: the default folder names the recipe the run
    builds (the embedder's own default), not the causal target's, whose name the run guessed before reading the file."""
    from oracle import hf_model, write_tiny
    from export.quantize.recipes import WEB_EMBEDDER_RECIPE
    src = hf_model("embeddinggemma", num_hidden_layers=2, layer_types=None)
    g = torch.Generator().manual_seed(6)
    dense = (torch.randn(128, 64, generator=g) * 0.1, torch.randn(64, 128, generator=g) * 0.1)
    path = write_tiny(tmp_path / "m.gguf", src, "embeddinggemma", dense)
    monkeypatch.chdir(tmp_path)
    assert main(["--target", "web", "--model", str(path), "--no-validate"]) == 0
    made = [p.name for p in (tmp_path / "out").iterdir() if p.is_dir()]
    assert made == [f"m-web-{WEB_EMBEDDER_RECIPE}"]
    manifest = json.loads((tmp_path / "out" / made[0] / "manifest.json").read_text())
    assert manifest["recipe"] == WEB_EMBEDDER_RECIPE
