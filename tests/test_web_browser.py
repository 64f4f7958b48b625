"""EmbeddingGemma's `--target web` folder in headless Chromium (Debian's chromium, one browser for the session:
the `chromium` fixture), through transformers.js's browser build (dist/transformers.min.js, as jsDelivr serves it)
with AutoTokenizer + AutoModel, every file from 127.0.0.1; every recipe on transformers.js's default onnxruntime-web
build, on the tiny model with odd sizes and texts past its window. References: transformers' Gemma3TextModel with
sentence-transformers' EmbeddingGemma of the same weights (conftest.st_reference) and onnxruntime in Python on the same ONNX file."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import runtime_py
from bench.browser import BrowserError
from export.converters.onnx import export_onnx_web
from export.models.checkpoints import load_model
from export.quantize.recipes import WEB_EMBEDDER_RECIPE
from test_web_embedder import TEXTS, cosines

# recipe -> (file transformers.js loads, the least cosine to sentence-transformers). fp32 and int8 (int8, the default:
# body and table; web-q8: the table): issue #20's goals. web, float16 weights computed in float32: float16's
# rounding (relative 2^-12 per weight) moves a tiny model's vectors by ~1e-6 (measured 4e-7), so 0.9999, the fp32
# goal, still holds with room. fp16, float16 activations too: measured 7e-7 here, but its error grows with the
# activations' size, which a tiny random model does not have: held to the fp16 recipe's conversion bound (0.999,
# export.quantize.recipes.HALF). int4 on 64-wide random rows: a sanity bound, reported (README).
RECIPES = {"web-q8": ("model_quantized.onnx", 0.99), "web": ("model_fp16.onnx", 0.9999),
           "int8": ("model_quantized.onnx", 0.99), "int4": ("model_q4.onnx", 0.9), "fp16": ("model_fp16.onnx", 0.999)}


def embed(chromium, folder, **args) -> dict:
    return chromium.run("/pages/embed.mjs", {"texts": TEXTS, **args}, mounts={"model": folder}, timeout=180)


def onnxruntime_vectors(path, ids: list[list[int]], accuracy_level: int | None = None) -> np.ndarray:
    """onnxruntime (Python, CPU) on the graph at `path`, padded batch; `accuracy_level` rewrites every MatMulNBits'
    (0: float activations, which is what onnxruntime-web's wasm kernels compute whatever the attribute says)."""
    model = onnx.load(str(path))
    if accuracy_level is not None:
        for node in model.graph.node:
            for a in node.attribute:
                if node.op_type == "MatMulNBits" and a.name == "accuracy_level":
                    a.i = accuracy_level
    width = max(map(len, ids))
    feed = {"input_ids": np.array([s + [0] * (width - len(s)) for s in ids]),
            "attention_mask": (np.arange(width)[None] < np.array([len(s) for s in ids])[:, None]).astype(np.int64)}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["sentence_embedding"], feed)[0]


@pytest.fixture(scope="module")
def expected(tiny_embedding_web, st_reference) -> np.ndarray:
    """sentence-transformers' vectors of TEXTS (one padded batch)."""
    return st_reference(tiny_embedding_web.hf.path).encode(TEXTS, batch_size=len(TEXTS))


@pytest.fixture(scope="module")
def odd(tmp_path_factory, st_reference):
    """The tiny EmbeddingGemma with odd sizes (test_litertlm_embedder's: d 42, 3 heads of 24, FFN 70, a 42 -> 106
    -> 42 head; window 8): its folder and sentence-transformers' vectors of TEXTS (one padded batch)."""
    from oracle import save_hf_folder
    from test_litertlm_embedder import DENSE, ODD
    path = tmp_path_factory.mktemp("odd-eg") / "hf"
    save_hf_folder("embeddinggemma", path, tokenizer=True, dense=DENSE, **ODD)
    return SimpleNamespace(path=path, expected=st_reference(path).encode(TEXTS, batch_size=len(TEXTS)))


@pytest.fixture(scope="module")
def web_folders(odd, tmp_path_factory):
    """recipe -> the odd model's `--target web` folder (the default recipe's by giving none)."""
    root = tmp_path_factory.mktemp("web-recipes")
    return {r: export_onnx_web(load_model(odd.path), root / r, None if r == WEB_EMBEDDER_RECIPE else r, 512)
            for r in RECIPES}


def test_the_page_is_cross_origin_isolated_and_offers_wasm32s_4_gib(chromium):
    seen = chromium.run("/pages/probe.mjs")
    assert seen["crossOriginIsolated"] is True           # the server's COOP/COEP headers: wasm threads available
    assert seen["wasm32MaxBytes"] == 4 << 30             # 65,536 pages of 64 KiB
    assert seen["webgpu"]["architecture"] == "swiftshader", seen["webgpu"]


def test_fp32_folder_in_the_browser_build_on_wasm_gives_the_reference(chromium, tiny_embedding_web, expected):
    got = embed(chromium, tiny_embedding_web.folder)
    model = runtime_py.load(tiny_embedding_web.folder)
    assert got["input_ids"] == [model.embedding_ids(t) for t in TEXTS]
    assert cosines(got["sentence_embedding"], expected).min() >= 0.9999
    np.testing.assert_allclose(got["sentence_embedding"], expected, atol=1e-5)


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_runs_on_transformers_js_default_build(chromium, web_folders, odd, recipe):
    """transformers.js's own choice of onnxruntime-web build (the asyncify one, which also carries WebGPU, and has
    no GatherBlockQuantized): the web table is read by plain Gather, so every recipe loads by the config's dtype and
    computes what onnxruntime does on the same file with float activations."""
    file, floor = RECIPES[recipe]
    folder = web_folders[recipe]
    path = folder / "onnx" / file
    assert path.is_file()
    assert "GatherBlockQuantized" not in {n.op_type for n in onnx.load(str(path)).graph.node}
    got = embed(chromium, folder)
    as_browser = onnxruntime_vectors(path, got["input_ids"], accuracy_level=0)
    np.testing.assert_allclose(got["sentence_embedding"], as_browser, atol=1e-5 if recipe != "fp16" else 2e-3)
    assert max(map(len, got["input_ids"])) > 8                          # past the sliding window
    to_st = cosines(got["sentence_embedding"], odd.expected)
    print(f"{recipe}: cosine to sentence-transformers in Chromium min {to_st.min():.7f} mean {to_st.mean():.7f}")
    assert to_st.min() >= floor


def test_webgpu_on_swiftshader_gives_the_reference(chromium, tiny_embedding_web, web_folders, expected, odd):
    got = embed(chromium, tiny_embedding_web.folder, device="webgpu")
    assert cosines(got["sentence_embedding"], expected).min() >= 0.9999
    # the default recipe (dtype q8; transformers.js refuses dtype fp16 on an adapter without shader-f16, as
    # SwiftShader's, whatever the graph computes in)
    default = web_folders[WEB_EMBEDDER_RECIPE]
    got = embed(chromium, default, device="webgpu")
    path = default / "onnx" / RECIPES[WEB_EMBEDDER_RECIPE][0]
    assert cosines(got["sentence_embedding"], onnxruntime_vectors(path, got["input_ids"], accuracy_level=0)).min() \
        >= 0.9999
    assert cosines(got["sentence_embedding"], odd.expected).min() >= RECIPES[WEB_EMBEDDER_RECIPE][1]
    q4 = embed(chromium, web_folders["int4"], device="webgpu")
    path = web_folders["int4"] / "onnx" / RECIPES["int4"][0]
    assert cosines(q4["sentence_embedding"], onnxruntime_vectors(path, q4["input_ids"], accuracy_level=0)).min() >= 0.9999
    with pytest.raises(BrowserError, match="does not support fp16"):
        embed(chromium, web_folders["web"], device="webgpu")
