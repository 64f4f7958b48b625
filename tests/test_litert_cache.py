"""runtime_py keeps XNNPACK's packed weights in one file per model (runtime_py.litert_cache) and maps it on later
loads: the logits stay those of ai_edge_litert's Interpreter on the same file (its own packing, no cache file),
a model rewritten at the same path gets a packing of its own (the old one removed), and with no cache folder
nothing is written."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as fb

from runtime_py.litert_backend import open_tflite
from runtime_py.litert_cache import CACHE_ENV
from test_litert_compiled import _Reference


@pytest.fixture(scope="module")
def art(tiny_litert):
    return tiny_litert("gemma3")


def _logits(path, ids):
    """Every position's logits of `ids` through runtime_py (prefill chunks, then decode steps)."""
    step = open_tflite(path, threads=2).stepper(len(ids))
    return np.stack([step(ids[:9], 0), *(step([t], p) for p, t in enumerate(ids[9:], 9))])


def _reference(path, ids):
    ref = _Reference(path)
    ref.step("prefill_8", ids[:8], 0, 8)
    return np.stack([ref.step("decode", [t], p, 1) for p, t in enumerate(ids[8:], 8)])


def _halve_largest_buffer(path):
    """Rewrite `path` with its largest constant (float32: the tied embedding table) halved: same shapes, other
    logits."""
    data = bytearray(path.read_bytes())
    model = fb.Model.GetRootAs(data, 0)
    biggest = max((model.Buffers(i) for i in range(model.BuffersLength())), key=lambda b: b.DataLength())
    biggest.DataAsNumpy().view(np.float32)[:] *= 0.5
    tmp = path.with_suffix(".new")
    tmp.write_bytes(bytes(data))
    tmp.replace(path)


def test_packed_weights_are_built_once_then_mapped(art, tmp_path, monkeypatch):
    """The first load leaves one finished cache file (no partial one) and the second maps it as it is; both
    give the Interpreter's logits."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    model = tmp_path / "m" / "model.tflite"
    model.parent.mkdir()
    shutil.copy(art.folder / "model.tflite", model)
    ids = np.random.default_rng(7).integers(0, 384, 20).tolist()
    want = _reference(model, ids)
    assert np.abs(_logits(model, ids) - want).max() < 1e-4
    files = sorted(cache.iterdir())
    assert [p.suffix for p in files] == [".xnnpack_cache", ".source"] and files[0].stat().st_size > 0
    before = files[0].stat()
    assert np.abs(_logits(model, ids) - want).max() < 1e-4
    assert sorted(cache.iterdir()) == files
    after = files[0].stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)


def test_a_model_rewritten_in_place_is_packed_anew(art, tmp_path, monkeypatch):
    """Another model at the same path never maps the first one's packing: its logits are the Interpreter's on
    the new file, not the old ones; the old packing is removed, another model's stays."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    model, other = tmp_path / "model.tflite", tmp_path / "other.tflite"
    shutil.copy(art.folder / "model.tflite", model)
    shutil.copy(art.folder / "model.tflite", other)
    ids = np.random.default_rng(8).integers(0, 384, 16).tolist()
    old = _logits(model, ids)
    _logits(other, ids[:9])
    first = {p.name for p in cache.glob("model.tflite.*")}
    _halve_largest_buffer(model)
    want = _reference(model, ids)
    assert np.abs(want - old).max() > 1e-2                    # the rewrite changed what the model computes
    assert np.abs(_logits(model, ids) - want).max() < 1e-4
    now = {p.name for p in cache.glob("model.tflite.*")}
    assert len(now) == 2 and not now & first                  # the new packing and its .source, the old gone
    assert len(list(cache.glob("other.tflite.*"))) == 2


def test_without_a_cache_folder_nothing_is_written(art, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, "")
    model = tmp_path / "model.tflite"
    shutil.copy(art.folder / "model.tflite", model)
    ids = np.random.default_rng(9).integers(0, 384, 12).tolist()
    assert np.abs(_logits(model, ids) - _reference(model, ids)).max() < 1e-4
    assert [p.name for p in tmp_path.iterdir()] == ["model.tflite"]
