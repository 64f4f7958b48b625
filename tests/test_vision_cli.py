"""The command line with vision-language models: `generate --image` on a checkpoint (the reference) and on its
artifact give the same tokens; `export --vision-quant` writes and validates; what cannot be done is refused with
one line and exit 2, nothing written."""
from __future__ import annotations

import contextlib
import io
import json

import pytest

from export.cli import main
from export.data.images import bundled_images

IMAGE = str(bundled_images()[0]["file"])


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def exported(tiny_vision, tmp_path_factory):
    _, loaded = tiny_vision("gemma3")
    out = tmp_path_factory.mktemp("vision_cli") / "gemma3-int4"
    status, text, _ = _run(["export", "--target", "onnx", "--model", str(loaded.source), "--quant", "int4",
                            "--vision-quant", "fp16", "--out", str(out), "--json"])
    return loaded, out, status, json.loads(text)


def test_export_with_vision_quant_validates(exported):
    _, out, status, summary = exported
    assert status == 0 and summary["validation"]["passed"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["vision"]["quant"] == "fp16" and {"vision.onnx", "embedding.onnx"} <= set(summary["files"])


@pytest.mark.parametrize("chat", [False, True])
def test_generate_with_image_on_checkpoint_and_artifact(tiny_vision, exported, tmp_path, chat):
    loaded, _, _, _ = exported
    from export.converters.onnx import export_onnx
    folder = export_onnx(loaded, tmp_path / "fp32", "fp32", 1024)
    second = str(bundled_images()[1]["file"])        # --image repeats: one per <start_of_image>, in order
    args = ["generate", "--prompt", "Describe <start_of_image> and <start_of_image>." if not chat else "Describe this.",
            "--image", IMAGE, *(["--image", second] if not chat else []), "--max-new-tokens", "6", "--json",
            *(["--chat"] if chat else [])]
    s1, ref, _ = _run([*args, "--model", str(loaded.source)])
    s2, art, _ = _run([*args, "--model", str(folder)])
    assert s1 == s2 == 0
    assert json.loads(ref)["token_ids"] == json.loads(art)["token_ids"]
    assert json.loads(ref)["prompt_tokens"] == json.loads(art)["prompt_tokens"] > 16 * (1 if chat else 2)


def test_refusals(exported, tmp_path):
    loaded, _, _, _ = exported
    # a tokenizer without Gemma 3's image marker pieces (LiteRT-LM splices images by them): refused after loading,
    # before any conversion (the progress line of the load step comes first)
    status, _, err = _run(["export", "--target", "android", "--model", str(loaded.source), "--out", str(tmp_path / "a")])
    assert status == 2 and err.strip().splitlines()[-1].endswith(
        "the tokenizer's <start_of_image> is id None, the model's is 390; LiteRT-LM finds the image markers by their "
        "pieces"), err
    # no transformers.js layout for them: refused once the model is read
    status, _, err = _run(["export", "--target", "web", "--model", str(loaded.source), "--out", str(tmp_path / "w")])
    assert status == 2 and err.strip().splitlines()[-1] == \
        "error: --target web: vision-language models have no web layout yet", err
    cases = [
        (["export", "--target", "onnx", "--model", str(loaded.source), "--quant", "auto", "--min-top1", "0.9",
          "--out", str(tmp_path / "b")], "not for vision-language models"),
        (["export", "--target", "onnx", "--vision-quant", "int8", "--out", str(tmp_path / "c")], "text model"),
        (["generate", "--prompt", "hi", "--image", IMAGE], "text model; it takes no images"),
    ]
    for argv, message in cases:
        status, _, err = _run(argv)
        assert status == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not any(tmp_path.iterdir())


def test_desktop_export_is_fp16_and_validates(exported, tmp_path):
    """--target desktop's default recipe, fp16, on a vision model: a float16 decoder and vision graph, validated."""
    loaded, _, _, _ = exported
    out = tmp_path / "desktop"
    status, text, err = _run(["export", "--target", "desktop", "--model", str(loaded.source), "--out", str(out),
                              "--json"])
    assert status == 0, err
    summary, manifest = json.loads(text), json.loads((out / "manifest.json").read_text())
    assert summary["validation"]["passed"] and manifest["vision"]["quant"] == "fp16"
    assert manifest["recipe"] == "fp16"


def test_android_export_frees_the_float_model_and_validates_from_the_checkpoint(real_tokenizer_proto, tmp_path,
                                                                                monkeypatch):
    """`export --target android` of a vision model: the LiteRT exporter frees the float model before quantizing
    (what lets gemma3-4b convert in 24 GB, README), so the validation (on by default) is handed no model, reads the
    checkpoint again, and passes."""
    import export.validate as validation
    import vision_oracle as vo
    hf = vo.save_folder(vo.build("gemma3-litert32"), tmp_path / "hf", tokenizer=real_tokenizer_proto)
    given, validate = [], validation.validate

    def spy(folder, *args, loaded=None, **kwargs):
        given.append(loaded)
        return validate(folder, *args, loaded=loaded, **kwargs)
    monkeypatch.setattr(validation, "validate", spy)
    status, text, err = _run(["export", "--target", "android", "--model", str(hf), "--quant", "int8", "--prefill",
                              "64", "--context", "128", "--out", str(tmp_path / "out"), "--json"])
    assert status == 0, err
    assert json.loads(text)["validation"]["passed"] and given == [None]
