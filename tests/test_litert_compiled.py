"""runtime_py's LiteRT backend on the CompiledModel API (runtime_py.litert_compiled) against an independent
driver of the same .tflite: ai_edge_litert's Interpreter, whose signature runners take every cache in as an
array and give the updated one out (nothing shared between calls). The suite's tiny Gemma 3 artifact
(conftest.tiny_litert: sliding window 8, context 64) is decoded far past its window.
"""
from __future__ import annotations

import numpy as np
import pytest

import runtime_py
from runtime_py.contract import is_cache, kv_cache_names


class _Reference:
    """The Interpreter, driven the plain way: caches copied in and out of every call."""

    def __init__(self, path):
        from ai_edge_litert.interpreter import Interpreter
        self.it = Interpreter(model_path=str(path), num_threads=2)
        dec = self.it.get_signature_runner("decode").get_input_details()
        self.caches = {n: np.zeros(d["shape"], d["dtype"]) for n, d in dec.items() if is_cache(n)}

    def step(self, signature: str, ids: list[int], start: int, length: int) -> np.ndarray:
        tokens, pos = np.zeros((1, length), np.int32), np.zeros(length, np.int32)
        tokens[0, :len(ids)], pos[:len(ids)] = ids, np.arange(start, start + len(ids))
        out = self.it.get_signature_runner(signature)(tokens=tokens, input_pos=pos, **self.caches)
        self.caches = {n: out[n] for n in self.caches}
        return out["logits"][0, len(ids) - 1]


@pytest.fixture(scope="module")
def art(tiny_litert):
    return tiny_litert("gemma3")


def test_decode_far_past_the_window_equals_the_interpreter(art):
    """A 16-token prompt (prefill_8 twice, its last token through decode, as LiteRT-LM runs a prompt), then 45
    decode steps (the window of 8 wrapped five times): every step's logits equal the Interpreter's, and so do
    the caches the stepper holds."""
    backend = runtime_py.load(art.folder, threads=2).backend
    ids = np.random.default_rng(4).integers(0, 384, 61).tolist()
    ref, step = _Reference(art.folder / "model.tflite"), backend.stepper(61)
    ref.step("prefill_8", ids[:8], 0, 8), ref.step("prefill_8", ids[8:15], 8, 8)
    assert np.abs(step(ids[:16], 0) - ref.step("decode", ids[15:16], 15, 1)).max() < 1e-5
    for p in range(16, 61):
        assert np.abs(step([ids[p]], p) - ref.step("decode", [ids[p]], p, 1)).max() < 1e-5, p
    for name in backend.caches:
        assert np.abs(step.state.read(name) - ref.caches[name]).max() < 1e-5, name


def test_each_call_updates_the_stepper_buffers_in_place(art):
    """The caches are never copied between calls: the buffer a step reads its cache from is the one that holds
    the updated cache afterwards (one buffer per cache, no second one), and that buffer's new row equals the
    Interpreter's."""
    backend = runtime_py.load(art.folder, threads=2).backend
    ids = np.random.default_rng(5).integers(0, 384, 20).tolist()
    ref, step = _Reference(art.folder / "model.tflite"), backend.stepper(20)
    step(ids[:13], 0)
    ref.step("prefill_8", ids[:8], 0, 8), ref.step("prefill_8", ids[8:12], 8, 8), ref.step("decode", ids[12:13], 12, 1)
    k0, _ = kv_cache_names(0)
    before = dict(step.state.current)
    old = step.state.read(k0)
    assert not step.state.spare                     # KV caches only: no buffer to swap with
    step([ids[13]], 13)
    ref.step("decode", [ids[13]], 13, 1)
    assert all(step.state.current[n] is before[n] for n in backend.caches)
    new = step.state.read(k0)
    changed = np.flatnonzero(np.abs(new - old).reshape(-1, new.shape[-1]).max(-1))
    assert changed.size == new.shape[1]             # one slot per head written, the rest left as it was
    assert np.abs(new - ref.caches[k0]).max() < 1e-5


def test_steppers_and_logits_do_not_share_caches(art):
    """Two steppers interleaved with logits(): each continues on its own caches, equal to the Interpreter."""
    backend = runtime_py.load(art.folder, threads=2).backend
    ids = np.random.default_rng(6).integers(0, 384, 30).tolist()
    a, b = backend.stepper(30), backend.stepper(30)
    ra, rb = _Reference(art.folder / "model.tflite"), _Reference(art.folder / "model.tflite")
    a(ids[:9], 0), ra.step("prefill_8", ids[:8], 0, 8), ra.step("decode", ids[8:9], 8, 1)
    b(ids[:3], 0), rb.step("prefill_8", ids[:2], 0, 8), rb.step("decode", ids[2:3], 2, 1)
    backend.logits(ids[:20])
    for p in range(9, 25):
        assert np.abs(a([ids[p]], p) - ra.step("decode", [ids[p]], p, 1)).max() < 1e-5
        if p < 20:
            assert np.abs(b([ids[p - 6]], p - 6) - rb.step("decode", [ids[p - 6]], p - 6, 1)).max() < 1e-5


def test_a_model_litert_cannot_load_is_one_line_naming_its_file(tmp_path, capfd):
    """LiteRT's set-up log stays off stderr; its reason for refusing a file comes back in one line naming it."""
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"not a flatbuffer" * 8)
    with pytest.raises(ValueError) as e:
        runtime_py.load(bad)
    assert str(e.value).startswith(f"{bad}: ai_edge_litert cannot load it: ") and "\n" not in str(e.value)
    assert "TFL3" in str(e.value)                  # LiteRT's own words: the file's identifier is wrong
    assert "INFO" not in capfd.readouterr().err
