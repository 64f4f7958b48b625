"""`--target web` on causal Gemma (issue #21): the folder transformers.js 4.3.2 loads with AutoModelForCausalLM
(tools/web/generate.mjs, Node, onnxruntime-node), whose graph onnxruntime-web's wasm build runs
(tools/web/ortweb_run.mjs, the browser's wasm code in Node), with caches that start empty and grow. Checked against
transformers' model (greedy tokens past the sliding window), onnxruntime (Python) on the same graph, runtime_py and
`validate` on the same folder; tiny random Gemma 3 and Gemma 2 (sliding window 8)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import runtime_py
from export.converters.onnx import export_onnx, export_onnx_web
from export.models.checkpoints import load_model

WEB = Path(__file__).resolve().parents[1] / "tools" / "web"
PROMPT = [2] + [(7 * i + 11) % 380 + 3 for i in range(29)]        # 30 tokens, past the 8-token window
NEW = 12


def node_script(script: str, *args, stdin: dict) -> dict:
    node = shutil.which("node")
    assert node, "node is not installed: setup.sh --test needs Node.js (Debian: apt-get install nodejs npm)"
    assert (WEB / "node_modules" / "@huggingface" / "transformers").is_dir(), \
        "tools/web/node_modules is missing: run setup.sh --test (npm ci --ignore-scripts in tools/web)"
    run = subprocess.run([node, script, *map(str, args)], cwd=WEB, input=json.dumps(stdin), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def folders(tiny_hf, tmp_path_factory):
    """{(arch, recipe): folder} of tiny_hf(arch, tokenizer=True), exported on first use."""
    built, root = {}, tmp_path_factory.mktemp("web-causal")

    def get(arch: str, recipe: str):
        if (arch, recipe) not in built:
            hf = tiny_hf(arch, tokenizer=True)
            built[arch, recipe] = export_onnx_web(load_model(hf.path), root / f"{arch}-{recipe}", recipe, 512)
        return built[arch, recipe]
    return get


def graph_file(folder: Path) -> Path:
    return folder / json.loads((folder / "manifest.json").read_text())["model_file"]


@torch.no_grad()
def transformers_greedy(ref, ids: list[int], n: int) -> list[int]:
    out = ref.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("recipe,name,dtype,weights", [
    ("web", "model_fp16.onnx", "fp16", {onnx.TensorProto.FLOAT16}),
    ("web-q8", "model_quantized.onnx", "q8", {onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8})])
def test_layout_and_graph_use_only_what_the_web_builds_run(folders, tiny_hf, recipe, name, dtype, weights):
    out = folders("gemma3", recipe)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["config.json", "generation_config.json", "manifest.json", f"onnx/{name}",
                     "tokenizer.json", "tokenizer.model", "tokenizer_config.json"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["architectures"] == ["Gemma3ForCausalLM"]
    assert config["transformers.js_config"] == {"dtype": dtype}
    import transformers as tf
    ref = tiny_hf("gemma3", tokenizer=True).ref
    ours = tf.Gemma3TextConfig(**{k: v for k, v in config.items() if k != "transformers.js_config"})
    for key in ("hidden_size", "num_hidden_layers", "layer_types", "sliding_window", "head_dim", "num_key_value_heads",
                "query_pre_attn_scalar", "vocab_size", "rope_parameters", "final_logit_softcapping"):
        assert getattr(ours, key) == getattr(ref.config, key), key
    assert "chat_template" in json.loads((out / "tokenizer_config.json").read_text())
    model = onnx.load(str(graph_file(out)))
    ops = {n.op_type for n in model.graph.node}
    assert "GatherBlockQuantized" not in ops and "MatMulNBits" not in ops
    assert "GroupQueryAttention" in ops and (recipe != "web-q8" or {"MatMulInteger", "DynamicQuantizeLinear"} <= ops)
    for n in model.graph.node:
        if n.op_type == "GroupQueryAttention":
            assert "sliding_window_cache" not in {a.name for a in n.attribute}
    names = [i.name for i in model.graph.input]
    assert names[:2] == ["input_ids", "attention_mask"] and "num_logits_to_keep" in names
    assert all(i.name != "num_logits_to_keep" for i in model.graph.initializer)
    # float16 weights (int8 table): the formats measured fastest per byte on onnxruntime-web's wasm build
    assert {t.data_type for t in model.graph.initializer if len(t.dims) == 2 and "_cache_" not in t.name} == weights


@pytest.mark.parametrize("arch", ["gemma3", "gemma2", "gemma"])
def test_transformers_js_greedy_equals_transformers_past_the_window(folders, tiny_hf, arch):
    out = folders(arch, "fp32")
    got = node_script("generate.mjs", out, NEW, stdin={"ids": PROMPT})
    assert got["new_ids"] == transformers_greedy(tiny_hf(arch, tokenizer=True).ref, PROMPT, NEW)
    # runtime_py runs the same folder (every cache grows: manifest runtime_config) to the same logits
    ref = tiny_hf(arch, tokenizer=True).ref
    with torch.no_grad():
        expected = ref(torch.tensor([PROMPT])).logits[0].numpy()
    np.testing.assert_allclose(runtime_py.load(out).logits(PROMPT), expected, atol=2e-5)


@pytest.mark.parametrize("recipe", ["web", "web-q8", "int4"])
def test_transformers_js_quantized_equals_runtime_py_on_the_same_folder(folders, recipe):
    out = folders("gemma3", recipe)
    got = node_script("generate.mjs", out, NEW, stdin={"ids": PROMPT})         # dtype from config.json
    ours = runtime_py.load(out).generate(PROMPT, NEW, stop_ids=[])
    assert got["new_ids"] == ours.token_ids


@pytest.mark.parametrize("recipe", ["fp32", "web", "web-q8"])
def test_onnxruntime_web_wasm_matches_onnxruntime(folders, recipe):
    """The graph on onnxruntime-web's wasm build (Node) against onnxruntime (Python), as transformers.js drives it:
    every prompt position's logits, then greedy one-token steps through the grown caches."""
    out = folders("gemma3", recipe)
    web = node_script("ortweb_run.mjs", graph_file(out), 1, 6, 0, stdin={"ids": PROMPT})
    s = ort.InferenceSession(str(graph_file(out)), providers=["CPUExecutionProvider"])
    kv = [i for i in s.get_inputs() if i.name.startswith("past_key_values.")]
    past = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for i in kv}
    ids, rows, tokens = PROMPT, [], []
    for step in range(7):
        total = len(PROMPT) + step
        outs = s.run(None, {"input_ids": np.array([ids]), "attention_mask": np.ones((1, total), np.int64),
                            "num_logits_to_keep": np.array(0 if step == 0 else 1), **past})
        named = dict(zip([o.name for o in s.get_outputs()], outs))
        past = {i.name: named[i.name.replace("past_key_values.", "present.")] for i in kv}
        rows.append(named["logits"][0])
        tokens.append(int(named["logits"][0, -1].argmax()))
        ids = tokens[-1:]
    np.testing.assert_allclose(np.array(web["prefill_logits"]), rows[0], atol=1e-4)
    np.testing.assert_allclose(np.array(web["step_logits"]), np.concatenate(rows[1:]), atol=1e-4)
    assert web["tokens"] == tokens


@pytest.mark.parametrize("recipe", ["web", "web-q8", "int4"])
def test_validate_runs_the_web_folder(folders, tiny_hf, recipe):
    from export.validate import validate
    report = validate(folders("gemma3", recipe), str(tiny_hf("gemma3", tokenizer=True).path))
    assert report["conversion"]["passed"], report["conversion"]
    assert report["recipe"] == recipe


def test_web_table_is_the_simulated_rounding_and_activations():
    """web_table's int8 rows against export.quantize.simulate's MatMulNBits rule (tested against onnxruntime), and
    simulate's per-tensor activations against onnxruntime's DynamicQuantizeLinear."""
    from onnx import helper

    from export.converters.onnx.web_table import quantize_rows
    from export.quantize.simulate import dql_activations, mlas_values
    w = np.random.default_rng(0).standard_normal((64, 48)).astype(np.float32)
    codes, scales = quantize_rows(w)
    np.testing.assert_array_equal(codes * scales[:, None], mlas_values(torch.from_numpy(w), 8, None).numpy())
    x = (np.random.default_rng(1).standard_normal((5, 48)) * 3 + 0.7).astype(np.float32)
    g = helper.make_graph([helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
                           helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], "dql",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [5, 48])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [5, 48])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    (y,) = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(dql_activations(torch.from_numpy(x)).numpy(), y, atol=1e-6)


def test_web_recipe_is_refused_elsewhere_and_web_refuses_recurrent(tiny_hf, tmp_path):
    loaded = load_model(tiny_hf("gemma3", tokenizer=True).path)
    with pytest.raises(ValueError, match="--quant web is not supported for --target onnx"):
        export_onnx(loaded, tmp_path / "x", "web", 512)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="--target web: transformers.js has no causal LM class for recurrentgemma"):
        export_onnx_web(load_model(tiny_hf("recurrentgemma").path), tmp_path / "y", "fp32", 512)
    assert not (tmp_path / "y").exists()


def test_chat_template_gives_runtime_pys_chat_prompt(folders):
    """transformers.js renders tokenizer_config.json's chat template to the ids runtime_py's Gemma turns give."""
    out = folders("gemma3", "fp32")
    chat = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Hi"},
            {"role": "user", "content": "Tell me a story"}]
    got = node_script("generate.mjs", out, 1, stdin={"chat": chat})
    assert got["input_ids"] == runtime_py.load(out).tokenizer.chat_ids(chat)
