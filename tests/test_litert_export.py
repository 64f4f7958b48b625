"""LiteRT artifacts of every causal architecture against transformers, run with ai_edge_litert's
Interpreter the way LiteRT-LM drives them: a prompt longer than the sliding window prefilled in
chunks (short chunks padded with token 0 / position 0), then decoded token by token with the caches
fed back. Also: signature and tensor names, window-sized sliding caches, the ops in the graph."""
import json

import numpy as np
import pytest
import torch

from export.converters.litert import export_litert
from export.converters.litert.graph import cache_readers, signature_ops
from export.models.checkpoints import load_model
from runtime_py.contract import KV_CACHE_PREFIX, parse_kv_cache_name

from oracle import LITERT_CONTEXT as CONTEXT
from oracle import LITERT_PREFILL, hf_greedy, litert_io, save_hf_folder, tokens

# RecurrentGemma (recurrent states beside the caches) is tested in test_recurrentgemma_export.py.
CAUSAL = list(LITERT_PREFILL)
VOCAB = 384                      # save_hf_folder(tokenizer=True)


@pytest.fixture(scope="module", params=CAUSAL)
def artifact(request, tiny_litert):
    from ai_edge_litert.interpreter import Interpreter
    art = tiny_litert(request.param)
    loaded = load_model(art.hf)
    return art.ref, loaded, art.folder, Interpreter(model_path=str(art.folder / "model.tflite")), art.prefill


def _tokens(n, seed=1):
    return tokens(n, VOCAB, seed)


class Runner:
    """Drives the signatures like LiteRT-LM: chunks padded to the signature length with zeros."""

    def __init__(self, interpreter, prefill_lengths):
        self.it, self.lengths = interpreter, sorted(prefill_lengths)
        dec = interpreter.get_signature_runner("decode").get_input_details()
        self.caches = {n: np.zeros(d["shape"], np.float32) for n, d in dec.items() if n.startswith("kv_cache")}
        self.pos = 0

    def run(self, signature, ids):
        length = 1 if signature == "decode" else int(signature.split("_")[1])
        n = len(ids)
        tokens = np.zeros((1, length), np.int32)
        tokens[0, :n] = ids
        input_pos = np.zeros(length, np.int32)
        input_pos[:n] = np.arange(self.pos, self.pos + n)
        res = self.it.get_signature_runner(signature)(tokens=tokens, input_pos=input_pos, **self.caches)
        self.caches = {k: v for k, v in res.items() if k.startswith("kv_cache")}
        self.pos += n
        return res["logits"][0, :n]

    def prefill(self, ids):
        """The smallest prefill signature that fits, else the largest and the rest after it."""
        fit = [t for t in self.lengths if t >= len(ids)]
        t = fit[0] if fit else self.lengths[-1]
        head = self.run(f"prefill_{t}", ids[:t])
        return head if len(ids) <= t else np.concatenate([head, self.prefill(ids[t:])])


def test_signatures_names_and_shapes(artifact):
    """Names and shapes as LiteRT-LM's contract and transformers' config of the model say (oracle.litert_io:
    sliding caches hold the window, global ones the context)."""
    ref, loaded, out, it, lengths = artifact
    want = litert_io(ref.config, lengths, CONTEXT)
    assert set(it.get_signature_list()) == set(want) == {f"prefill_{t}" for t in lengths} | {"decode"}
    for name, io in want.items():
        runner = it.get_signature_runner(name)
        inputs, outputs = runner.get_input_details(), runner.get_output_details()
        assert {k: tuple(v["shape"]) for k, v in inputs.items()} == io["inputs"]
        assert {k: tuple(v["shape"]) for k, v in outputs.items()} == io["outputs"]
        assert inputs["tokens"]["dtype"] == inputs["input_pos"]["dtype"] == np.int32
        assert all(v["dtype"] == np.float32 for k, v in {**inputs, **outputs}.items() if k.startswith("kv_cache"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["target"], manifest["recipe"], manifest["context_length"]) == ("litert", "fp32", CONTEXT)
    assert manifest["prefill_lengths"] == list(lengths)
    assert set(manifest["files"]) == {"model.tflite", "tokenizer.model"}
    assert manifest["files"]["model.tflite"]["bytes"] == (out / "model.tflite").stat().st_size
    assert (out / "tokenizer.model").read_bytes() == (loaded.source / "tokenizer.model").read_bytes()


def test_graph_has_composites_and_no_scatter(artifact):
    _, loaded, out, it, lengths = artifact
    c = loaded.config
    norms_per_layer = (4 if c.sandwich_norms else 2) + (2 if c.qk_norm else 0)
    ops = signature_ops(out / "model.tflite")
    assert set(ops) == {f"prefill_{t}" for t in lengths} | {"decode"}
    for name, counts in ops.items():      # decode attends without the composite (test_decode_reads_caches_in_place)
        assert counts["STABLEHLO_COMPOSITE:odml.scaled_dot_product_attention"] == (name != "decode") * c.num_layers
        assert counts["STABLEHLO_COMPOSITE:odml.rms_norm"] == c.num_layers * norms_per_layer + 1
        assert not [op for op in counts if "SCATTER" in op]
        assert counts["FULLY_CONNECTED"] > 0 and counts["EMBEDDING_LOOKUP"] == 1
    # decode writes one slot per cache in place, and neither gathers nor concatenates whole caches
    assert ops["decode"]["DYNAMIC_UPDATE_SLICE"] == 2 * c.num_layers
    assert ops["decode"]["GATHER_ND"] == 0
    assert ops["decode"]["CONCATENATION"] < ops[f"prefill_{lengths[0]}"]["CONCATENATION"] - c.num_layers
    interpreter_ops = {op["op_name"] for op in it._get_ops_details()}
    assert "STABLEHLO_COMPOSITE" in interpreter_ops and not any("SCATTER" in op for op in interpreter_ops)


def test_decode_reads_caches_in_place(artifact):
    """decode writes one slot of each KV cache and attends straight over the written cache: a cache's only readers
    are its DYNAMIC_UPDATE_SLICE and one BATCH_MATMUL (K contracted on its last axis, adj_y; V on its slots). A
    RESHAPE, TRANSPOSE, CONCATENATION or FULLY_CONNECTED of a cache would be copied or packed whole by XNNPACK
    every step (README, the decode step in LiteRT-LM)."""
    ref, _, out, _, lengths = artifact
    caches = [n for n in litert_io(ref.config, lengths, CONTEXT)["decode"]["inputs"] if n.startswith(KV_CACHE_PREFIX)]
    assert len(caches) == 2 * ref.config.num_hidden_layers
    want = [(op, n) for n in caches for op in
            ("DYNAMIC_UPDATE_SLICE", "BATCH_MATMUL:adj_y" if parse_kv_cache_name(n)[0] == "k" else "BATCH_MATMUL")]
    assert sorted(cache_readers(out / "model.tflite", "decode")) == sorted(want)


@torch.no_grad()
def test_chunked_prefill_and_decode_match_transformers(artifact):
    ref, _, _, it, lengths = artifact
    toks = _tokens(40)
    expected = ref(toks).logits[0].numpy()
    run, got = Runner(it, lengths), []
    # full and padded chunks, chunks longer than the window (prefill_16), decode steps in between
    for n in [16, 5, "decode", 9, 1, "decode", 3] + ["decode"] * 4:
        if n == "decode":
            got.append(run.run("decode", toks[0, run.pos:run.pos + 1].numpy()))
        else:
            got.append(run.prefill(toks[0, run.pos:run.pos + n].numpy()))
    assert run.pos == toks.shape[1]
    assert np.abs(np.concatenate(got) - expected).max() < 1e-4


def test_greedy_decoding_matches_transformers(artifact):
    ref, _, _, it, lengths = artifact
    prompt = _tokens(11, seed=3)
    run = Runner(it, lengths)
    logits = run.prefill(prompt[0].numpy())[-1]
    got = []
    for _ in range(24):
        got.append(int(logits.argmax()))
        logits = run.run("decode", [got[-1]])[-1]
    assert got == hf_greedy(ref, prompt, 24)


def test_rejects_what_it_cannot_export(tmp_path):
    save_hf_folder("gemma3", tmp_path / "hf")
    loaded = load_model(tmp_path / "hf")
    with pytest.raises(ValueError, match="fp16 is not supported for --target litert; supported: fp32, int8"):
        export_litert(loaded, tmp_path / "a", recipe="fp16")
    with pytest.raises(ValueError, match="prefill lengths"):
        export_litert(loaded, tmp_path / "b", prefill_lengths=(8, 128), cache_length=64)
    with pytest.raises(ValueError, match="context"):
        export_litert(loaded, tmp_path / "c", cache_length=100_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_export_failing_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    import export.converters.litert as litert_target
    save_hf_folder("gemma", tmp_path / "hf")
    monkeypatch.setattr(litert_target, "convert", lambda *a, **k: object())

    def broken(edge, path):
        path.write_bytes(b"half a model")
        raise OSError("disk full")
    monkeypatch.setattr(litert_target, "save_model", broken)
    with pytest.raises(OSError, match="disk full"):
        export_litert(load_model(tmp_path / "hf"), tmp_path / "litert", cache_length=64, prefill_lengths=(8,))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
