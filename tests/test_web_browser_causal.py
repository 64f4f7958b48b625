"""Causal Gemma's `--target web` folder in headless Chromium (the session's `chromium` fixture), on a tiny random
Gemma 3 (sliding window 8) and a prompt three windows long: transformers.js's browser build
(`AutoModelForCausalLM.generate`, greedy) on wasm, and onnxruntime-web's WebGPU build (SwiftShader: correctness
only) fed as transformers.js feeds it (tools/web/pages/ort_generate.mjs). References: transformers' own greedy
generate on the same weights; onnxruntime (Python) on the same graph for the default recipe. And the example chat
page (`gemma-export serve-web`) driven as a user would, its screenshot kept in out/test-artifacts/. And the peer
bench.browser_decode runs beside ours, onnxruntime-genai's builder output, driven on the same page as its own runtime
drives it."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

import runtime_py

from bench.genai_builder import run_genai_builder
from bench.web_decode import native
from bench.web_graphs import graph_of
from export.converters.onnx import export_onnx_web
from export.models.checkpoints import load_model
from export.quantize.recipes import WEB_RECIPE
from export.serve_web import make_server, url_of
from oracle import genai_greedy

PROMPT = [2] + [(13 * i + 5) % 380 + 3 for i in range(23)]        # 24 tokens: 3 sliding windows
NEW = 10
ARTIFACTS = Path(__file__).resolve().parents[1] / "out" / "test-artifacts"


@pytest.fixture(scope="module")
def gemma3(tiny_hf):
    return tiny_hf("gemma3", tokenizer=True)


@pytest.fixture(scope="module")
def folders(gemma3, tmp_path_factory):
    root = tmp_path_factory.mktemp("web-browser-causal")
    return {r: export_onnx_web(load_model(gemma3.path), root / r, r, 512) for r in ("fp32", WEB_RECIPE)}


@pytest.fixture(scope="module")
def expected(gemma3) -> list[int]:
    with torch.no_grad():
        out = gemma3.ref.generate(torch.tensor([PROMPT]), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
    return out[0, len(PROMPT):].tolist()


def graph_file(folder) -> str:
    return json.loads((folder / "manifest.json").read_text())["model_file"]


def test_transformers_js_browser_build_greedy_equals_transformers_on_wasm(chromium, folders, expected):
    got = chromium.run("/pages/generate.mjs", {"ids": PROMPT, "max_new_tokens": NEW}, mounts={"model": folders["fp32"]},
                       timeout=180)
    assert got["input_ids"] == PROMPT and got["new_ids"] == expected


def test_default_web_recipe_in_the_browser_equals_onnxruntime_on_its_graph(chromium, folders):
    folder = folders[WEB_RECIPE]
    got = chromium.run("/pages/generate.mjs", {"ids": PROMPT, "max_new_tokens": NEW}, mounts={"model": folder},
                       timeout=180)                              # transformers.js's default build, the config's dtype
    assert got["new_ids"] == native(folder / graph_file(folder), PROMPT, NEW - 1, 1)["tokens"]


def test_onnxruntime_web_webgpu_creates_the_session_and_gives_the_same_tokens(chromium, folders, expected):
    got = chromium.run("/pages/ort_generate.mjs", {"file": graph_file(folders["fp32"]), "ids": PROMPT, "steps": NEW,
                                                   "ep": "webgpu"}, mounts={"model": folders["fp32"]}, timeout=300)
    assert got["tokens"] == expected


def test_example_chat_page_replies_in_the_browser(chromium, folders):
    folder = folders[WEB_RECIPE]
    server = make_server(folder, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "serve-web-chat.png"
    shot.unlink(missing_ok=True)
    try:
        got = chromium.run("/pages/chat_reply.mjs", {"text": "Hello there"}, page=url_of(server) + "?max_new_tokens=8",
                           screenshot=shot, timeout=180)
    finally:
        server.shutdown()
        server.server_close()
    prompt = runtime_py.load(folder).tokenizer.chat_ids([{"role": "user", "content": "Hello there"}])
    ids = got["reply"]["ids"]
    assert 0 < len(ids) <= 8 and ids == native(folder / graph_file(folder), prompt, len(ids) - 1, 1)["tokens"]
    assert got["shown"] == got["reply"]["text"] and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_onnxruntime_genai_builder_output_on_the_page_gives_onnxruntime_genais_own_tokens(chromium, gemma3, tmp_path):
    """bench.web_graphs' first caches for the builder's graph (its sliding layers' window-long cache, external data
    beside it): the native loop and the browser's wasm give what onnxruntime-genai's runtime generates."""
    out = tmp_path / "og"
    run_genai_builder(gemma3.path, out, tmp_path / "cache", precision="fp32")
    graph = graph_of(out)
    assert graph["maker"] == "onnxruntime-genai" and graph["external"] and any(n for _, n, _ in graph["caches"].values())
    expected = genai_greedy(out, [PROMPT], len(PROMPT) + NEW)
    assert len(expected) == NEW
    assert native(out / graph["file"], PROMPT, NEW - 1, 1, graph["caches"])["tokens"] == expected
    got = chromium.run("/pages/ort_generate.mjs", {**{k: graph[k] for k in ("file", "external", "caches")},
                                                   "ids": PROMPT, "steps": NEW}, mounts={"model": out}, timeout=180)
    assert got["tokens"] == expected
