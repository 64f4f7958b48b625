"""`--target web` on EmbeddingGemma: the folder transformers.js 4.3.2 reads (onnx/model{suffix}.onnx per dtype,
config.json, tokenizer.json with <bos> ... <eos>, outputs sentence_embedding / last_hidden_state), run by
transformers.js itself in Node (tools/web, onnxruntime-node's bundled CPU binary), by onnxruntime in Python and by
runtime_py, against sentence-transformers' EmbeddingGemma built offline from the same weights (conftest.st_reference:
its `encode`, its tokenizer, its token embeddings)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest

import runtime_py
from export.converters.onnx import export_onnx, export_onnx_web
from export.models.checkpoints import load_model

WEB = Path(__file__).resolve().parents[1] / "tools" / "web"
# longer than the tiny sliding window (8 tokens), of different lengths (padding), one a task prompt
TEXTS = ["The quick brown fox jumps over the lazy dog while the old cat sleeps on the warm red carpet.",
         "Yes it is.",
         "task: search result | query: Is this a question? Hello world! The old dog sleeps on the carpet."]


def transformers_js(folder: Path, texts: list[str], dtype: str | None = None) -> dict:
    """{input_ids, sentence_embedding} from transformers.js (tools/web/embed.mjs) on `folder`."""
    node = shutil.which("node")
    assert node, "node is not installed: setup.sh --test needs Node.js (Debian: apt-get install nodejs npm)"
    assert (WEB / "node_modules" / "@huggingface" / "transformers").is_dir(), \
        "tools/web/node_modules is missing: run setup.sh --test (npm ci --ignore-scripts in tools/web)"
    run = subprocess.run([node, "embed.mjs", str(folder), *([dtype] if dtype else [])], cwd=WEB,
                         input=json.dumps(texts), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout)


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture(scope="module")
def tiny(tiny_embedding_web):
    return tiny_embedding_web.hf


@pytest.fixture(scope="module")
def st(tiny_embedding_web, st_reference):
    """sentence-transformers' model of the tiny weights; its vectors of TEXTS (one padded batch)."""
    model = st_reference(tiny_embedding_web.hf.path)
    return SimpleNamespace(model=model, vectors=model.encode(TEXTS, batch_size=len(TEXTS)))


@pytest.fixture(scope="module")
def web_fp32(tiny_embedding_web):
    return tiny_embedding_web.folder


def test_layout_is_what_transformers_js_reads(web_fp32, st):
    files = sorted(p.relative_to(web_fp32).as_posix() for p in web_fp32.rglob("*") if p.is_file())
    assert files == ["config.json", "manifest.json", "onnx/model.onnx", "tokenizer.json", "tokenizer.model",
                     "tokenizer_config.json"]
    config = json.loads((web_fp32 / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["transformers.js_config"] == {"dtype": "fp32"}
    # transformers reads the same config.json as the model it was exported from
    import transformers as tf
    ours = tf.Gemma3TextConfig(**{k: v for k, v in config.items() if k != "transformers.js_config"})
    for key in ("hidden_size", "num_hidden_layers", "layer_types", "sliding_window", "head_dim",
                "num_key_value_heads", "query_pre_attn_scalar", "use_bidirectional_attention", "vocab_size"):
        assert getattr(ours, key) == getattr(st.model[0].auto_model.config, key), key
    session = ort.InferenceSession(str(web_fp32 / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert {o.name for o in session.get_outputs()} == {"sentence_embedding", "last_hidden_state"}


def test_transformers_js_onnxruntime_and_runtime_py_match_the_reference(web_fp32, st):
    got = transformers_js(web_fp32, TEXTS)
    model = runtime_py.load(web_fp32)
    # transformers.js tokenizes with our tokenizer.json as runtime_py does with the SentencePiece model, and as
    # sentence-transformers' GemmaTokenizer does
    assert got["input_ids"] == [model.embedding_ids(t) for t in TEXTS] == st.model.tokenizer(TEXTS)["input_ids"]
    expected = st.vectors
    assert cosines(got["sentence_embedding"], expected).min() >= 0.9999
    np.testing.assert_allclose(got["sentence_embedding"], expected, atol=1e-5)
    assert cosines(model.embed(TEXTS), expected).min() >= 0.9999
    # onnxruntime (Python) on the graph, padded batch: both outputs
    width = max(map(len, got["input_ids"]))
    ids = np.array([s + [0] * (width - len(s)) for s in got["input_ids"]])
    mask = (np.arange(width)[None] < np.array([len(s) for s in got["input_ids"]])[:, None]).astype(np.int64)
    session = ort.InferenceSession(str(web_fp32 / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    emb, hidden = session.run(["sentence_embedding", "last_hidden_state"], {"input_ids": ids, "attention_mask": mask})
    assert cosines(emb, expected).min() >= 0.9999
    tokens = st.model.encode(TEXTS, output_value="token_embeddings")            # [n, d] per text, unpadded
    assert max(np.abs(hidden[i, :len(t)] - t.numpy()).max() for i, t in enumerate(tokens)) < 1e-4


@pytest.mark.parametrize("recipe,name,floor", [("int4", "model_q4.onnx", 0.9), ("int8", "model_quantized.onnx", 0.99)])
def test_quantized_file_names_load_by_dtype(tiny, st, tmp_path, recipe, name, floor):
    """The q4 / q8 files load by the config's dtype and by an explicit one; int8 holds cosine 0.99 to
    sentence-transformers, int4 (random tiny weights: two blocks of 32 per row) is printed, its floor a sanity
    bound only."""
    out = export_onnx_web(load_model(tiny.path), tmp_path / recipe, recipe, 512)
    assert (out / "onnx" / name).is_file() and not (out / "onnx" / "model.onnx").exists()
    dtype = json.loads((out / "config.json").read_text())["transformers.js_config"]["dtype"]
    got = transformers_js(out, TEXTS)                       # no dtype: the config's picks the file
    explicit = transformers_js(out, TEXTS[:1], dtype)
    ours = runtime_py.load(out).embed(TEXTS)
    assert cosines(got["sentence_embedding"], ours).min() >= 0.9999
    assert cosines(explicit["sentence_embedding"], ours[:1]).min() >= 0.9999
    to_st = cosines(got["sentence_embedding"], st.vectors)
    print(f"{recipe}: cosine to sentence-transformers min {to_st.min():.5f} mean {to_st.mean():.5f}")
    assert to_st.min() >= floor and cosines(ours, st.vectors).min() >= floor


def test_external_data_is_named_as_transformers_js_loads_it(tiny, st, tmp_path, monkeypatch):
    import export.converters.onnx.folder as folder
    monkeypatch.setattr(folder, "MAX_INLINE_BYTES", 0)       # as a real-size graph: weights beside it
    out = export_onnx_web(load_model(tiny.path), tmp_path / "ext", "fp32", 512)
    assert (out / "onnx" / "model.onnx_data").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["transformers.js_config"]["use_external_data_format"] == {"model.onnx": 1}
    got = transformers_js(out, TEXTS[:2])
    assert cosines(got["sentence_embedding"], st.vectors[:2]).min() >= 0.9999


def test_plain_onnx_target_has_the_same_outputs(tiny, st, tmp_path):
    out = export_onnx(load_model(tiny.path), tmp_path / "onnx", "fp32", 512)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert {o.name for o in session.get_outputs()} == {"sentence_embedding", "last_hidden_state"}
    assert json.loads((out / "tokenizer_config.json").read_text())["add_eos_token"] is True
    assert cosines(runtime_py.load(out).embed(TEXTS), st.vectors).min() >= 0.9999


def test_web_target_refuses_a_recipe_without_a_transformers_js_file_name(tiny, tmp_path):
    from export.converters.onnx.web_folder import DTYPES
    assert set(DTYPES) >= {"fp32", "fp16", "int8", "int4", "mixed"}
    with pytest.raises(ValueError, match="--quant nope"):
        export_onnx_web(load_model(tiny.path), tmp_path / "x", "nope", 512)
    assert not (tmp_path / "x").exists()


def test_web_target_default_is_the_embedding_recipe(tiny, st, tmp_path, capsys):
    """`--target web` without --quant builds EmbeddingGemma's own default (the target row's embedding_recipe: int8
    body, int8 table read by Gather), which passes validation and holds the int8 goal."""
    from export.cli import main
    from export.quantize.recipes import WEB_EMBEDDER_RECIPE
    from export.targets import target
    assert target("web").embedding_recipe == WEB_EMBEDDER_RECIPE != target("web").recipe
    out = tmp_path / "default"
    assert main(["--target", "web", "--model", str(tiny.path), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["recipe"] == WEB_EMBEDDER_RECIPE and summary["validation"]["passed"]
    assert set(summary["files"]) >= {"onnx/model_quantized.onnx", "config.json"}
    assert json.loads((out / "config.json").read_text())["transformers.js_config"]["dtype"] == "q8"
    got = transformers_js(out, TEXTS)
    assert cosines(got["sentence_embedding"], st.vectors).min() >= 0.99
    assert cosines(got["sentence_embedding"], runtime_py.load(out).embed(TEXTS)).min() >= 0.9999
