"""The memory-lean ONNX path (export/converters/onnx/stream.py): weights packed into MatMulNBits as the graph is
built, the tied table packed as it is read. The reference is onnxruntime's MatMulNBitsQuantizer run over the whole
float32 graph (quantize.quantize without a packer, what every export did before): the streamed graphs must be
the same bytes, for int4 and int8 blocks, padded blocks, per-weight plans with float16 weights, carried GGUF
blocks, the tied table as the head alone (vision decoder), as the lookup alone (embedding graph, EmbeddingGemma's
untied table) and as both (text decoder). The build itself must never hold a float MatMul weight past its node,
nor the table; a model whose decoder weights come from a lazy source exports the same folder; and graphs past
the inline limit go to external data and still run."""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch
from gguf import GGMLQuantizationType as Q

import vision_oracle as vo
from export.converters.onnx import export_onnx, folder as onnx_folder, stream
from export.converters.onnx.decoder import build_decoder
from export.converters.onnx.embedder import build_embedder
from export.converters.onnx.quantize import TABLE, quantize
from export.converters.onnx.stream import Packer, build_quantized
from export.converters.onnx.vision import build_embedding
from export.converters.onnx.vision_decoder import build_vision_decoder
from export.models.checkpoints import load_model
from export.quantize.recipes import planned, recipe
from oracle import gguf_tensors, hf_model, save_hf_folder, write_gguf
from runtime_py.onnx_backend import OnnxBackend

CONTEXT = 256
PLAN = {"model.layers.0.mlp.down_proj.weight": "fp16", "model.layers.1.self_attn.o_proj.weight": "int8",
        "model.layers.0.self_attn.q_proj.weight": "int4-b128", "model.layers.0.self_attn.k_proj.weight": "int4-b128",
        "model.layers.0.self_attn.v_proj.weight": "int4-b128", "model.embed_tokens.weight": "int8"}
# every matrix Q4_0, the table Q8_0: carried under int4 (body) and int8 / mixed (table)
QTYPES = {k: Q.Q4_0 for k in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
QTYPES["token_embd"] = Q.Q8_0


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> LoadedModel: Gemma 3 (widths multiples of 128), Gemma 2 (width 80: padded blocks), a GGUF with
    stored Q4_0 / Q8_0 blocks, EmbeddingGemma."""
    root = tmp_path_factory.mktemp("stream")
    hf_model("gemma3", vocab_size=384, hidden_size=128, intermediate_size=256, head_dim=32).save_pretrained(root / "g3")
    hf_model("gemma2", vocab_size=384, hidden_size=80, intermediate_size=144, head_dim=16).save_pretrained(root / "g2")
    src = hf_model("gemma3", intermediate_size=128)
    write_gguf(root / "q.gguf", src.config.to_dict(), "gemma3", gguf_tensors(src, "gemma3"), quantize=True, qtypes=QTYPES)
    save_hf_folder("embeddinggemma", root / "emb")
    return {n: load_model(root / p) for n, p in (("gemma3", "g3"), ("gemma2", "g2"), ("gguf", "q.gguf"),
                                                 ("embedder", "emb"))}


def _same(build, r, stored=None):
    """build(packer) -> float graph; the streamed result against the whole-graph pass, byte for byte."""
    want, want_carried = quantize(build(None), r, stored)
    got, got_carried = build_quantized(build, r, stored)
    assert got.SerializeToString() == want.SerializeToString()
    assert got_carried == want_carried
    return got, got_carried


def _recipe(name):
    return planned(PLAN, "onnx") if name == "plan" else recipe(name, "onnx")


@pytest.mark.parametrize("name", ["int4", "int8", "int8-wo", "int4-b128", "mixed", "plan"])
def test_text_decoder_streamed_is_the_whole_graph_pass(models, name):
    m = models["gemma3"]
    got, _ = _same(lambda p: build_decoder(m.model, CONTEXT, None, p), _recipe(name))
    kinds = [n.op_type for n in got.graph.node]
    assert "MatMulNBits" in kinds and "GatherBlockQuantized" in kinds
    halves = [t.name for t in got.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert len(halves) == kinds.count("MatMul") == (name == "plan")     # the plan's float16 weight


def test_padded_blocks_streamed(models):
    m = models["gemma2"]
    _same(lambda p: build_decoder(m.model, CONTEXT, None, p), recipe("int4", "onnx"))


@pytest.mark.parametrize("name", ["int4", "int8", "mixed"])
def test_carried_gguf_blocks_streamed(models, name):
    m = models["gguf"]
    _, carried = _same(lambda p: build_decoder(m.model, CONTEXT, None, p), recipe(name, "onnx"), m.stored)
    assert carried["carried"]                  # the stored blocks did go in


def test_untied_table_streamed(models):
    m = models["embedder"]
    _same(lambda p: build_embedder(m.model, None, p), recipe("int4", "onnx"))


@pytest.mark.parametrize("arch", ["gemma3", "paligemma2"])
@pytest.mark.parametrize("name", ["int4", "int8"])
def test_vision_decoder_and_embedding_streamed(tiny_vision, arch, name):
    """The decoder on inputs_embeds holds the table as its head only, the embedding graph as its lookup only."""
    _, loaded = tiny_vision(arch)
    r = recipe(name, "onnx")
    _same(lambda p: build_vision_decoder(loaded.model, 1024, None, p), r)
    emb, _ = _same(lambda p: build_embedding(loaded.model, None, p), r)
    assert [n.op_type for n in emb.graph.node if n.domain == "com.microsoft"] == ["GatherBlockQuantized"]


@pytest.mark.parametrize("name", ["int4", "int8"])
def test_packing_a_few_columns_at_a_time_is_the_same(models, tiny_vision, monkeypatch, name):
    """stream.COLUMNS output columns (the table's rows) are packed at a time: a tiny model's in several pieces."""
    monkeypatch.setattr(stream, "COLUMNS", 96)
    m = models["gemma3"]
    _same(lambda p: build_decoder(m.model, CONTEXT, None, p), recipe(name, "onnx"))
    _, loaded = tiny_vision("gemma3")
    _same(lambda p: build_vision_decoder(loaded.model, 1024, None, p), recipe(name, "onnx"))


def test_the_build_holds_no_float_matmul_weight_nor_the_table(models):
    m = models["gemma3"]
    r = recipe("int4", "onnx")
    packer = Packer(r)
    built = build_decoder(m.model, CONTEXT, None, packer)      # before quantize(): what the build held
    inits = {t.name: t for t in built.graph.initializer}
    assert TABLE not in inits and packer.head is not None
    for node in built.graph.node:
        assert not (node.op_type == "MatMul" and node.input[1] in inits), node.name
    c = m.config
    biggest = max(int(np.prod(t.dims)) for t in inits.values() if t.data_type == onnx.TensorProto.FLOAT)
    assert biggest < c.hidden_size * c.intermediate_size       # norms and RoPE tables only


def test_lazy_decoder_weights_export_the_same_folder(tiny_vision, tmp_path):
    """LoadedModel.weights: the language model left on the meta device, its weights read by name from a mapping
    (bench/vision_shapes.py's random source): every file as from the model itself."""
    _, loaded = tiny_vision("gemma3")
    want = export_onnx(loaded, tmp_path / "model", "int4", 1024)
    with torch.device("meta"):
        meta = type(loaded.model.language_model)(loaded.config.text)
    model = type(loaded.model)(loaded.config)
    model.load_state_dict(loaded.model.state_dict())
    model.language_model = meta
    lazy = dataclasses.replace(loaded, model=model.eval(), weights=dict(loaded.model.language_model.state_dict()))
    got = export_onnx(lazy, tmp_path / "lazy", "int4", 1024)
    files = sorted(p.name for p in want.iterdir())
    assert sorted(p.name for p in got.iterdir()) == files
    for f in files:
        assert (got / f).read_bytes() == (want / f).read_bytes(), f


def test_packed_graphs_past_the_inline_limit_go_to_external_data(tiny_vision, tmp_path, monkeypatch):
    ref, loaded = tiny_vision("gemma3")
    inline = export_onnx(loaded, tmp_path / "inline", "int4", 1024)
    monkeypatch.setattr(onnx_folder, "MAX_INLINE_BYTES", 0)
    external = export_onnx(loaded, tmp_path / "external", "int4", 1024)
    for f in ("model.onnx", "embedding.onnx"):
        assert not (inline / f"{f}.data").exists() and (external / f"{f}.data").stat().st_size > 0
        proto = onnx.load(str(external / f), load_external_data=False)
        assert all(not t.raw_data for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    ids, _ = vo.prompt("gemma3", ref, images=2, seed=3)
    pix = vo.pixels(2, vo.image_size(ref), seed=3)
    a, b = OnnxBackend(inline), OnnxBackend(external)
    feats = a.encode_images(pix.numpy())
    assert np.array_equal(a.logits(ids, feats), b.logits(ids, feats))
