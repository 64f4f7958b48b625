"""Quantized vision-language `.litertlm` bundles (int8 / int4 decoder, int8 encoder; test_litert_vision.py has the
fp32 ones and the setting): tiny random Gemma 3 with widths divisible by 32 and the bundled 270M tokenizer, run
unchanged by the LiteRT-LM engine and by runtime_py; the zero padding row kept; a consumed model's export byte for
byte the kept one's; validate passes them and fails them against another model's weights."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import vision_oracle as vo
from export.converters.litert.bundle import BUNDLE, export_litertlm
from export.models.checkpoints import load_model
from litert_vision_common import CONTEXT, PREFILL, STEPS, TEXT, answer_text, chat_ids, engine_answer, sized_png


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    return sized_png(tmp_path_factory, vo.LITERT["image_size"])


@pytest.fixture(scope="module")
def float_graphs(tmp_path_factory):
    """(folder, {name: (file, quantized)}): the float32 .tflite files the first bundle's export converted, kept."""
    return tmp_path_factory.mktemp("float_graphs"), {}


@pytest.fixture(scope="module", params=["int8", "int4"])
def quantized(request, real_tokenizer_proto, tmp_path_factory, float_graphs):
    """(transformers model, the export folder) of the tiny Gemma 3 with widths divisible by 32 (int4 blocks) and
    the all-zero padding row transformers gives a random model, bundled with `recipe` (encoder: int8). The five
    conversions are the same float32 graphs for both recipes (quantized from disk afterwards): the second recipe's
    export copies the first one's instead of converting again; test_a_consumed_model_gives_the_same_bundle_and_is_freed
    converts for real and finds each bundle byte for byte."""
    import export.converters.litert.vision as vision
    ref = vo.build("gemma3-litert32")
    assert not ref.get_input_embeddings().weight[0].any()
    root = tmp_path_factory.mktemp(f"litert-{request.param}")
    loaded = load_model(vo.save_folder(ref, root / "hf", tokenizer=real_tokenizer_proto))
    kept, done = float_graphs
    convert, exporting = vision.convert_to_tflite, [True]

    def once(signatures, composites_of, into, name, r, flags=None):
        if not exporting:               # a module that imported it by name during the export: the real one again
            return convert(signatures, composites_of, into, name, r, flags)
        if name not in done:
            pending = convert(signatures, composites_of, into, name, r, flags)
            (written,) = [p for p in into.iterdir() if p.name in (name, f"{name}.f32")]
            shutil.copyfile(written, kept / written.name)
            done[name] = written.name, bool(pending)
        file, quantizes = done[name]
        if not (into / file).exists():
            shutil.copyfile(kept / file, into / file)
        return [(name, r)] if quantizes else []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vision, "convert_to_tflite", once)
        try:
            return ref, export_litertlm(loaded, root / "out", request.param, (PREFILL,), CONTEXT)
        finally:
            exporting.clear()


def test_quantized_bundles_load_run_and_keep_the_zero_row(quantized, png, tmp_path):
    """int8 / int4 decoder + int8 encoder: the engine answers with runtime_py's greedy text on the same bundle;
    the zero row, whose scale ai-edge-quantizer made 0 (XNNPACK refuses it) and the export made positive,
    still embeds to zeros and scores 0; the int8 encoder's rows within validate's bound of transformers'."""
    import runtime_py
    from export.validate_vision import VISION_FEATURE_ERROR, relative_rms
    ref, folder = quantized
    m = runtime_py.load(folder / BUNDLE)
    assert m.vision is not None and m.manifest["vision"]["quant"] == "int8"
    ids = chat_ids(m)
    got = answer_text(m, m.generate(ids, STEPS, images=[str(png)], stop_ids=()).token_ids)
    assert engine_answer(folder / BUNDLE, png, TEXT, tmp_path) == got and len(got) > 10
    assert not m.backend._embedder(token_ids=np.zeros((1, 1), np.int32))["embeddings"].any()
    assert m.backend.stepper(len(ids), features=m.image_features([str(png)]))(ids, 0)[0] == 0.0
    with torch.no_grad():
        rows = ref.model.get_image_features(pixel_values=torch.from_numpy(m.vision.pixels([str(png)])))
    rows = np.asarray(getattr(rows, "pooler_output", rows)).reshape(1, vo.LITERT["tokens"], -1)
    assert relative_rms(m.image_features([str(png)]), rows) < VISION_FEATURE_ERROR["int8"]


def test_a_consumed_model_gives_the_same_bundle_and_is_freed(quantized, tmp_path, monkeypatch):
    """consume=True (the CLI without --validate): the exporter frees the float model's weights before quantizing
    (all on the meta device afterwards, the language model's already while the vision encoder converts), and the
    bundle is byte for byte the one exported with the model kept."""
    import export.converters.litert.vision as vision
    _, folder = quantized
    recipe = json.loads((folder / "manifest.json").read_text())["recipe"]
    loaded = load_model(folder.parent / "hf")            # the same source: the bundle's uuid is derived from it
    lm, convert, seen = loaded.model.language_model, vision.convert_to_tflite, {}

    def spy(signatures, composites_of, into, name, r, flags=None):
        seen[name] = {p.device.type for p in lm.parameters()}
        return convert(signatures, composites_of, into, name, r, flags)
    monkeypatch.setattr(vision, "convert_to_tflite", spy)
    out = export_litertlm(loaded, tmp_path / "out", recipe, (PREFILL,), CONTEXT, consume=True)
    assert seen[vision.DECODER] == seen[vision.EMBEDDER] == {"cpu"} and seen[vision.ENCODER] == {"meta"}
    assert {t.device.type for t in (*loaded.model.parameters(), *loaded.model.buffers())} == {"meta"}
    assert (out / BUNDLE).read_bytes() == (folder / BUNDLE).read_bytes()


def test_validate_checks_a_quantized_litert_vision_bundle(quantized, real_tokenizer_proto, tmp_path):
    """validate on the quantized LiteRT vision exports: the encoder's rows against the reference's, each prompt's last
    logits and the teacher-forced decode steps against the simulated recipe, greedy tokens. Against another model's
    weights the same artifact fails."""
    from export.validate import validate
    ref, folder = quantized
    assert validate(folder)["passed"]
    other = vo.save_folder(vo.build("gemma3-litert32", seed=1), tmp_path / "other", tokenizer=real_tokenizer_proto)
    report = validate(folder, str(other))
    assert not report["passed"] and any("decode" in f for f in report["conversion"]["failures"])
