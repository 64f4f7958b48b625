"""Float recipes past protobuf's 2 GiB (export/converters/onnx/spill.py): under fp32 and fp16 a weight past
SPILL_BYTES goes to disk as the graph builder makes it and is moved into the graph's data file when saved. A real
2 GiB table is too heavy for the suite, so the limit is lowered until the tiny models' tables and projections
spill (the same code path; the measured run at gemma3-4b-vision's real table width is in the README). The
reference is the whole-graph path (the limit left alone, every weight in the graph): each saved graph, loaded
with its external data, must be the same message, float16 rounding included; the spilled fp32 folder answers as
transformers does; the build holds no spilled weight's bytes; no scratch file is left behind."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import vision_oracle as vo
from export.converters.onnx import export_onnx, spill
from export.converters.onnx.decoder import build_decoder
from export.converters.onnx.folder import save_model
from export.converters.onnx.stream import build_quantized
from export.models.checkpoints import load_model
from export.quantize.recipes import recipe
from oracle import hf_model
from runtime_py.onnx_backend import OnnxBackend

CONTEXT = 1024
LIMIT = 4096          # bytes: the tiny models' tables and projections spill, norms and small constants do not


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("spill_text")
    hf_model("gemma3", vocab_size=384, hidden_size=128, intermediate_size=256, head_dim=32).save_pretrained(root / "g3")
    return load_model(root / "g3")


def _loaded(path):
    """The graph with its external data read back in, where its bytes were kept made no difference."""
    proto = onnx.load(str(path))
    for t in proto.graph.initializer:
        t.ClearField("data_location")
        del t.external_data[:]
    return proto.SerializeToString()


def _both(loaded, root, name, monkeypatch, limit="SPILL_BYTES"):
    """limit: SPILL_BYTES (the tables and projections spill: each is past it) or HELD_BYTES (the weights spill
    once the graph holds that much)."""
    whole = export_onnx(loaded, root / f"{name}-whole", name, CONTEXT)
    monkeypatch.setattr(spill, limit, LIMIT)
    monkeypatch.setattr(spill, "MIN_SPILL_BYTES", 1024)
    spilled = export_onnx(loaded, root / f"{name}-spilled", name, CONTEXT)
    monkeypatch.undo()
    graphs = sorted(p.name for p in whole.glob("*.onnx"))
    assert graphs and sorted(p.name for p in spilled.glob("*.onnx")) == graphs
    assert not [p for p in spilled.iterdir() if p.name.startswith(".spill")]
    for g in ("model.onnx", "embedding.onnx"):
        if (whole / g).exists():
            assert not (whole / f"{g}.data").exists() and (spilled / f"{g}.data").stat().st_size > 0
            held = onnx.load(str(spilled / g), load_external_data=False).graph.initializer
            assert "model.embed_tokens.weight" in {t.name for t in held if t.data_location == onnx.TensorProto.EXTERNAL}
    for g in graphs:
        assert _loaded(spilled / g) == _loaded(whole / g), g
    return whole, spilled


@pytest.mark.parametrize("limit", ["SPILL_BYTES", "HELD_BYTES"])
@pytest.mark.parametrize("name", ["fp32", "fp16"])
def test_text_decoder_spilled_is_the_whole_graph(text_model, tmp_path, monkeypatch, name, limit):
    whole, spilled = _both(text_model, tmp_path, name, monkeypatch, limit)
    ids = [2, *range(40, 90)]
    assert np.array_equal(OnnxBackend(spilled).logits(ids), OnnxBackend(whole).logits(ids))


@pytest.mark.parametrize("name", ["fp32", "fp16"])
@pytest.mark.parametrize("arch", ["gemma3", "paligemma2"])
def test_vision_folder_spilled_is_the_whole_graph(tiny_vision, tmp_path, monkeypatch, arch, name):
    ref, loaded = tiny_vision(arch)
    whole, spilled = _both(loaded, tmp_path, name, monkeypatch)
    n = 1 if arch.startswith("paligemma") else 2
    ids, types = vo.prompt(arch, ref, images=n, seed=7)
    pix = vo.pixels(n, vo.image_size(ref), seed=7)
    a, b = OnnxBackend(whole), OnnxBackend(spilled)
    feats = b.encode_images(pix.numpy())
    got = b.logits(ids, feats)
    assert np.array_equal(got, a.logits(ids, a.encode_images(pix.numpy())))
    if name == "fp32":
        assert np.abs(got - vo.hf_logits(ref, ids, types, pix).numpy()).max() < 1e-4


def test_the_build_holds_no_spilled_bytes_and_save_removes_the_scratch(text_model, tmp_path, monkeypatch):
    monkeypatch.setattr(spill, "SPILL_BYTES", LIMIT)
    proto, _ = build_quantized(lambda packer: build_decoder(text_model.model, CONTEXT, None, packer),
                               recipe("fp32", "onnx"), scratch=tmp_path)
    big = [t for t in proto.graph.initializer if int(np.prod(t.dims)) * 4 > LIMIT]
    assert big and spill.spilled(proto) and all(not t.raw_data for t in big)
    assert all(len(t.raw_data) <= LIMIT for t in proto.graph.initializer)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".spill")]
    out = tmp_path / "out"
    out.mkdir()
    save_model(proto, out / "model.onnx")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".spill")]
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.onnx.data"]
