"""runtime_py on ONNX artifacts, against independent references.

The causal artifact is a tiny random Gemma 3 (7 layers, window 8, a SentencePiece vocabulary trained here)
exported by onnxruntime-genai's own model builder; the references are transformers' repeated full forward
passes and onnxruntime-genai's generator on the same folder. The embedding artifact is a tiny mean-pool
graph written with onnx.helper, checked against numpy.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import sentencepiece as spm

import onnxruntime_genai as og
import torch
import transformers

import runtime_py
from runtime_py import Sampling, embedding_prompt, load, shieldgemma_prompt, truncate_embeddings

from bench.genai_builder import run_genai_builder
from oracle import tiny_tokenizer

WINDOW, LAYERS, KV, HEAD = 8, 7, 2, 16
EMBED_STD, SEED = 0.05, 2      # a seed whose greedy path has no near-ties (margins > 5e-3)
TEXT = "The quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def causal(tmp_path_factory):
    root = tmp_path_factory.mktemp("runtime_onnx")
    proto = tiny_tokenizer()
    vocab = spm.SentencePieceProcessor(model_proto=proto).get_piece_size()
    hf_dir, out = root / "hf", root / "onnx"
    hf_dir.mkdir()
    (hf_dir / "tokenizer.model").write_bytes(proto)
    transformers.GemmaTokenizer.from_pretrained(hf_dir).save_pretrained(hf_dir)   # the builder wants one
    cfg = transformers.Gemma3TextConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=LAYERS, num_attention_heads=4,
        num_key_value_heads=KV, head_dim=HEAD, sliding_window=WINDOW, max_position_embeddings=512,
        query_pre_attn_scalar=16, architectures=["Gemma3ForCausalLM"], bos_token_id=2, eos_token_id=1,
        pad_token_id=0)
    cfg._attn_implementation = "eager"
    torch.manual_seed(SEED)
    hf = transformers.Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.normal_(0.0, EMBED_STD if "embed" in name else 0.3)
    hf.save_pretrained(hf_dir)
    run_genai_builder(hf_dir, out, root / "cache")
    (out / "tokenizer.model").write_bytes(proto)
    model = load(out, threads=2)
    prompt = model.tokenizer.encode(TEXT)
    assert len(prompt) > WINDOW
    return SimpleNamespace(folder=out, hf=hf, model=model, tok=model.tokenizer, prompt=prompt)


@torch.no_grad()
def hf_logits(hf, ids) -> np.ndarray:
    return hf(torch.tensor([ids]), use_cache=False).logits[0].float().numpy()     # [T, V]


@torch.no_grad()
def hf_greedy(hf, ids, n) -> list[int]:
    """Greedy by repeated full forward passes (no cache, no .generate)."""
    ids = list(ids)
    for _ in range(n):
        ids.append(int(hf_logits(hf, ids)[-1].argmax()))
    return ids


@pytest.fixture(scope="module")
def reference(causal):
    seq = hf_greedy(causal.hf, causal.prompt, 40)
    logits = hf_logits(causal.hf, seq)
    top2 = np.sort(logits[len(causal.prompt) - 1:], axis=-1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0]).min() > 1e-3, "near-tie on the reference greedy path: choose another SEED"
    return SimpleNamespace(seq=seq, new=seq[len(causal.prompt):], logits=logits)


# ---- causal LM ----

def test_greedy_matches_transformers_past_the_window(causal, reference):
    gen = causal.model.generate(causal.prompt, 40, stop_ids=())
    assert len(causal.prompt) + 40 > 5 * WINDOW
    assert gen.token_ids == reference.new
    assert gen.prompt_tokens == len(causal.prompt) and gen.finish_reason == "length"
    assert gen.timings.prefill_tokens == len(causal.prompt) and gen.timings.decode_tokens == 40


def test_logits_every_position_match_transformers(causal, reference):
    got = causal.model.logits(reference.seq)
    assert got.shape == reference.logits.shape == (len(reference.seq), causal.model.config["vocab_size"])
    np.testing.assert_allclose(got, reference.logits, atol=1e-4, rtol=0)


def test_stepper_chunks_and_window_sized_caches(causal, reference):
    """Teacher-forced steps of mixed sizes (prefill split in chunks of 4) vs transformers; sliding caches
    stay [1, kv, W, D] while global ones grow with the sequence."""
    backend = causal.model.backend
    sliding = {i for i, t in enumerate(causal.model.config["layer_types"]) if t == "sliding_attention"}
    assert sliding and len(sliding) < LAYERS
    step = backend.stepper(len(reference.seq), prefill_chunk=4)
    pos = 0
    for n in [11, 1, 1, 9, 1, 13, 1, 3, 1, 1]:
        last = step(reference.seq[pos:pos + n], pos)
        pos += n
        np.testing.assert_allclose(last, reference.logits[pos - 1], atol=1e-4, rtol=0)
        shapes = step.cache_shapes()
        for layer in range(LAYERS):
            for kv in ("key", "value"):
                want = WINDOW if layer in sliding else pos
                assert shapes[f"past_key_values.{layer}.{kv}"] == (1, KV, want, HEAD)


def plain_onnxruntime_steps(folder: Path, ids: list[int], prompt_len: int) -> np.ndarray:
    """The genai contract driven the plainest way: onnxruntime's default session options, `session.run` with
    numpy inputs, each call's present.* fed back as the next call's past (zeros of the window on sliding layers,
    empty on global ones). The prompt in one call, then one token per call. -> last-position logits [steps, V]."""
    import onnxruntime as ort
    config = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
    session = ort.InferenceSession(str(folder / config["filename"]), providers=["CPUExecutionProvider"])
    sliding = set(config["sliding_window"]["layers"])
    window = config["sliding_window"]["window_size"]
    past = {}
    for i in range(config["num_hidden_layers"]):
        for kind in ("key", "value"):
            rows = window if i in sliding else 0
            past[f"past_key_values.{i}.{kind}"] = np.zeros((1, config["num_key_value_heads"], rows,
                                                            config["head_size"]), np.float32)
    names = [o.name for o in session.get_outputs()]
    out, start = [], 0
    for end in [prompt_len, *range(prompt_len + 1, len(ids) + 1)]:
        feed = {"input_ids": np.array([ids[start:end]], np.int64), "attention_mask": np.ones((1, end), np.int64),
                **past}
        results = dict(zip(names, session.run(names, feed)))
        past = {k: results[k.replace("past_key_values", "present")] for k in past}
        out.append(results["logits"][0, -1])
        start = end
    return np.stack(out)


def test_decode_steps_equal_plain_onnxruntime_past_the_window(causal, reference):
    """runtime_py's decode steps (caches bound once as past and present, token, mask and logits in buffers
    bound by address, no memory pattern) give the logits onnxruntime gives without any of that, step for step
    to 5 * the window."""
    seq, n = reference.seq, len(causal.prompt)
    assert len(seq) > 5 * WINDOW
    want = plain_onnxruntime_steps(causal.folder, seq, n)
    step = causal.model.backend.stepper(len(seq))
    got = [step(seq[:n], 0)] + [step([seq[pos]], pos) for pos in range(n, len(seq))]
    np.testing.assert_allclose(np.stack(got), want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(want, reference.logits[n - 1:], atol=1e-4, rtol=0)    # and both are the model's


def test_onnxruntime_genai_generator_agrees(causal):
    model = og.Model(str(causal.folder))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(causal.prompt) + 40)
    gen = og.Generator(model, params)
    gen.append_tokens(np.array(causal.prompt, dtype=np.int32))
    while not gen.is_done():
        gen.generate_next_token()
    theirs = [int(t) for t in gen.get_sequence(0)][len(causal.prompt):]
    ours = causal.model.generate(causal.prompt, 40, stop_ids=()).token_ids
    assert len(theirs) == 40 or theirs[-1] == causal.tok.eos_id     # genai stops at (and keeps) <eos>
    assert ours[:len(theirs)] == theirs


def test_streaming_text_chat_and_context_limit(causal):
    model, tok = causal.model, causal.tok
    pieces = []
    gen = model.generate(TEXT, 30, stop_ids=(), on_text=pieces.append)
    assert "".join(pieces) == gen.text == tok.decode(gen.token_ids)
    assert gen.prompt_tokens == len(causal.prompt)          # a str prompt gets <bos>
    messages = [{"role": "user", "content": "Is this a question?"}]
    chat = model.chat(messages, 12, stop_ids=())
    assert chat.token_ids == model.generate(tok.chat_prompt(messages), 12, stop_ids=()).token_ids
    full = model.generate(causal.prompt, 10_000, stop_ids=())
    assert full.finish_reason == "context" and len(causal.prompt) + len(full.token_ids) == 512
    sampled = [model.generate(causal.prompt, 20, Sampling(temperature=1.0, top_k=50, seed=7)).token_ids
               for _ in range(2)]
    assert sampled[0] == sampled[1]
    first = model.generate(causal.prompt, 40, stop_ids=())
    stop = first.token_ids[5]
    cut = model.generate(causal.prompt, 40, stop_ids=[stop])
    assert cut.finish_reason == "stop" and cut.token_ids == first.token_ids[:first.token_ids.index(stop)]


def test_stepper_misuse_is_reported(causal):
    backend = causal.model.backend
    step = backend.stepper(20)
    step(causal.prompt, 0)
    with pytest.raises(ValueError, match="cache holds"):
        step([5], 3)
    with pytest.raises(ValueError, match="max_len 20"):
        step(list(range(4, 30)), len(causal.prompt))
    with pytest.raises(ValueError, match="context length 512"):
        backend.stepper(513)
    with pytest.raises(ValueError, match="out of range"):
        causal.model.generate([2, 10_000], 3)
    with pytest.raises(ValueError, match="embed"):
        causal.model.embed("hi")


# ---- ShieldGemma ----

def test_shieldgemma_prompts_follow_the_official_template():
    policy = '"No Harassment": The prompt shall not contain harassment.'
    assert shieldgemma_prompt("Hi?", policy) == (
        "You are a policy expert trying to help determine whether a user prompt is in violation of the defined "
        "safety policies.\n\n<start_of_turn>\nHuman Question: Hi?\n<end_of_turn>\n\n"
        "Our safety principle is defined in the below:\n\n* " + policy + "\n\n===\n\n"
        "Does the human question violate the above principle? Your answer must start with 'Yes' or 'No'. "
        "And then walk through step by step to be sure we answer correctly.\n\n")
    assert shieldgemma_prompt("Hi?", "* " + policy + "\n", response="Go away.") == (
        "You are a policy expert trying to help determine whether an AI response to a prompt is in violation "
        "of the defined safety policies.\n\n<start_of_turn>\nHuman Question: Hi?\n<end_of_turn>\n"
        "<start_of_turn>\nChatbot Response: Go away.\n<end_of_turn>\n\n"
        "Our safety principle is defined in the below:\n\n* " + policy + "\n\n===\n\n"
        "Does the Chatbot Response violate the above principle? Your answer must  start with 'Yes' or 'No'. "
        "And then walk through step by step to be sure we answer correctly.\n\n")


def test_classify_is_softmax_over_yes_and_no(causal):
    tok, model = causal.tok, causal.model
    yes, no = tok.id_of("Yes"), tok.id_of("No")
    assert tok.encode("Yes", add_bos=False) == [yes] and tok.encode("No", add_bos=False) == [no] and yes != no
    for response in (None, "No it is not."):
        p = model.classify("Is this a question?", "No rude words.", response)
        ids = tok.encode(shieldgemma_prompt("Is this a question?", "No rude words.", response))
        assert ids[0] == tok.bos_id
        last = model.logits(ids)[-1].astype(np.float64)
        want = np.exp(last[yes]) / (np.exp(last[yes]) + np.exp(last[no]))
        assert 0.0 < p < 1.0 and p == pytest.approx(want, abs=1e-6)


# ---- embeddings ----

EMB_DIM = 16


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    """A mean-pool + L2-normalise graph over a random table, with a manifest marking it EmbeddingGemma-like."""
    from onnx import TensorProto, helper, numpy_helper, save

    folder = tmp_path_factory.mktemp("embedding")
    proto = tiny_tokenizer()
    vocab = spm.SentencePieceProcessor(model_proto=proto).get_piece_size()
    table = np.random.default_rng(0).standard_normal((vocab, EMB_DIM)).astype(np.float32)
    one = numpy_helper.from_array(np.array([1], np.int64), "axis1")
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["h"]),                  # [B, T, D]
             helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),  # [B, T]
             helper.make_node("Unsqueeze", ["m", "minus1"], ["m3"]),                     # [B, T, 1]
             helper.make_node("Mul", ["h", "m3"], ["hm"]),
             helper.make_node("ReduceSum", ["hm", "axis1"], ["s"], keepdims=0),          # [B, D]
             helper.make_node("ReduceSum", ["m3", "axis1"], ["n"], keepdims=0),          # [B, 1]
             helper.make_node("Div", ["s", "n"], ["mean"]),
             helper.make_node("LpNormalization", ["mean"], ["sentence_embedding"], axis=-1, p=2)]
    graph = helper.make_graph(
        nodes, "tiny_embedder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "T"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["B", "T"])],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["B", EMB_DIM])],
        [numpy_helper.from_array(table, "table"), one,
         numpy_helper.from_array(np.array([-1], np.int64), "minus1")])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / "model.onnx"))
    (folder / "tokenizer.model").write_bytes(proto)
    config = {"family": "gemma3", "vocab_size": vocab, "hidden_size": EMB_DIM, "max_position": 64,
              "bidirectional": True, "bos_id": 2, "eos_id": 1, "pad_id": 0,
              "embedding_head": {"dense_dims": [EMB_DIM, EMB_DIM], "matryoshka_dims": [16, 8, 4]}}
    (folder / "manifest.json").write_text(json.dumps(
        {"target": "onnx", "recipe": "test", "source": "test", "config": config}))
    model = load(folder)
    return SimpleNamespace(model=model, table=table, tok=model.tokenizer)


def _reference_embedding(e, text: str) -> np.ndarray:
    ids = e.tok.encode(text) + [e.tok.eos_id]
    v = e.table[ids].mean(0)
    return v / np.linalg.norm(v)


def test_embed_matches_numpy_with_padding_and_matryoshka(embedder):
    model = embedder.model
    assert model.kind == "embedding"
    texts = ["Hello world!", "The quick brown fox jumps over the lazy dog while the old cat sleeps.", "No"]
    full = model.embed(texts)                                    # one right-padded batch
    assert full.shape == (3, EMB_DIM)
    for row, text in zip(full, texts):
        np.testing.assert_allclose(row, _reference_embedding(embedder, text), atol=1e-5)
    single = model.embed(texts[1])
    assert single.shape == (EMB_DIM,)
    np.testing.assert_allclose(single, full[1], atol=1e-6)
    small = model.embed(texts, dim=8)
    want = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(small, want, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(small, axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="dim 5"):
        model.embed(texts, dim=5)
    assert model.embedding_ids("Hi")[-1] == embedder.tok.eos_id
    long = model.embedding_ids("Hello world! " * 100)
    assert len(long) == 64 and long[0] == embedder.tok.bos_id and long[-1] == embedder.tok.eos_id
    with pytest.raises(ValueError, match="generate"):
        model.generate("hi")


def test_embedding_task_prompts(embedder):
    assert embedding_prompt(None) == ""
    assert embedding_prompt("query") == "task: search result | query: "
    assert embedding_prompt("document") == "title: none | text: "
    for task in ("question answering", "fact checking", "code retrieval", "classification", "clustering",
                 "sentence similarity", "summarization"):
        assert embedding_prompt(task) == f"task: {task} | query: "
    assert embedding_prompt("question_answering") == "task: question answering | query: "
    # the published prompts (google/embeddinggemma-300m's config_sentence_transformers.json) by our task names
    from bench.st_reference import PROMPTS
    for name, task in {"query": "query", "document": "document", "Retrieval-query": "query",
                       "Retrieval-document": "document", "STS": "sentence similarity", "Clustering": "clustering",
                       "Summarization": "summarization", "Classification": "classification",
                       "InstructionRetrieval": "code retrieval"}.items():
        assert embedding_prompt(task) == PROMPTS[name], name
    with pytest.raises(ValueError, match="unknown embedding task"):
        embedding_prompt("translation")
    model = embedder.model
    np.testing.assert_allclose(model.embed("Hello", task="query"),
                               model.embed("task: search result | query: Hello"), atol=1e-6)
    np.testing.assert_allclose(model.embed("Hello", task="document"),
                               _reference_embedding(embedder, "title: none | text: Hello"), atol=1e-5)
    x = np.array([[3.0, 4.0, 12.0]], np.float32)
    np.testing.assert_allclose(truncate_embeddings(x, 2), [[0.6, 0.8]], atol=1e-6)


# ---- folders ----

def test_bad_artifacts_name_the_file_at_fault(causal, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="not a gemma-export artifact folder"):
        load(empty)
    no_graph = tmp_path / "no_graph"
    no_graph.mkdir()
    shutil.copy(causal.folder / "genai_config.json", no_graph)
    with pytest.raises(FileNotFoundError, match=r"no_graph/model\.onnx"):
        load(no_graph)
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"garbage/model\.onnx: onnxruntime cannot load"):
        load(garbage)
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.onnx", "model.onnx.data"):
        shutil.copy(causal.folder / name, bare)
    with pytest.raises(FileNotFoundError, match=r"bare/genai_config\.json"):
        load(bare)
    config = json.loads((causal.folder / "genai_config.json").read_text())
    config["model"]["decoder"]["num_hidden_layers"] = LAYERS + 1
    (bare / "genai_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"missing \['past_key_values\.{LAYERS}\.key'"):
        load(bare)
    (bare / "genai_config.json").write_text("{")
    with pytest.raises(ValueError, match=r"genai_config\.json: not readable JSON"):
        load(bare)
    shutil.copy(causal.folder / "genai_config.json", bare)         # a valid folder without tokenizer.model
    model = load(bare / "model.onnx")
    assert model.tokenizer is None and len(model.generate(causal.prompt, 3, stop_ids=()).token_ids) == 3
    with pytest.raises(FileNotFoundError, match=r"bare/tokenizer\.model"):
        model.generate("text")
    (bare / "manifest.json").write_text("[1]")
    with pytest.raises(ValueError, match=r"manifest\.json: expected a JSON object"):
        load(bare)
    (tmp_path / "model.litertlm").write_bytes(b"")
    with pytest.raises(ValueError, match=r"model\.litertlm.*LITERTLM magic"):
        load(tmp_path / "model.litertlm")
    lite = tmp_path / "lite"
    lite.mkdir()
    (lite / "model.tflite").write_bytes(b"")
    with pytest.raises(ValueError, match=r"lite/model\.tflite: ai_edge_litert cannot load it"):
        load(lite)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown artifact"):
        load(tmp_path / "notes.txt")


def test_runtime_imports_no_torch_transformers_or_export():
    """runtime_py runs where torch does not; onnxruntime is loaded only when an ONNX artifact is opened."""
    code = ("import sys, runtime_py; "
            "assert 'onnxruntime' not in sys.modules, 'import runtime_py loaded onnxruntime'; "
            "import runtime_py.onnx_backend; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'export')]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr + done.stdout
    assert set(runtime_py.__all__) >= {"load", "Model", "Generation", "Sampling"}
