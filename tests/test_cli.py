"""The command line: models, generate (checkpoint and artifact), export, bad input."""
import json

import pytest

from export.cli import main

from oracle import PUBLISHED_PARAMETERS


def test_models_json_lists_every_preset_with_its_published_count(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    from export.models.vision_presets import VISION_PRESETS
    text = [r for r in rows if "image_size" not in r]
    assert {r["name"]: r["parameters"] for r in text} == PUBLISHED_PARAMETERS
    # the vision presets' counts are held to transformers' models of their configs in tests/test_presets.py
    assert {r["name"] for r in rows if "image_size" in r} == set(VISION_PRESETS)


def test_generate_json_on_checkpoint_and_on_its_onnx_artifact_agree(tiny_hf, tmp_path, capsys):
    hf = tiny_hf("gemma3", tokenizer=True).path
    args = ["--prompt", "Yes, no, maybe.", "--max-new-tokens", "12", "--json"]     # no stop token within 12
    assert main(["generate", "--model", str(hf), *args]) == 0
    ref = json.loads(capsys.readouterr().out)
    assert main(["--target", "onnx", "--model", str(hf), "--out", str(tmp_path / "onnx"), "--context", "64"]) == 0
    capsys.readouterr()
    assert main(["generate", "--model", str(tmp_path / "onnx"), *args]) == 0
    art = json.loads(capsys.readouterr().out)
    assert len(ref["token_ids"]) == 12 and ref["token_ids"] == art["token_ids"] and ref["text"] == art["text"]


@pytest.mark.parametrize("argv, named", [
    (["generate", "--model", "/no/such/model", "--prompt", "x"], "/no/such/model"),
    (["generate", "--prompt", "x", "--top-p", "2"], "--top-p"),
    (["--target", "onnx", "--quant", "int3"], "--quant int3"),
])
def test_bad_input_is_one_clear_line(argv, named, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert named in err and "Traceback" not in err and err.count("\n") == 0


def test_generation_past_the_context_ends_cleanly_with_a_reason(tiny_hf, tmp_path, capsys):
    """--max-new-tokens beyond the context: the tokens that fit, finish_reason "context", on the reference model
    and on its artifact alike."""
    import shutil
    hf = tmp_path / "hf"
    shutil.copytree(tiny_hf("gemma3", tokenizer=True).path, hf)
    cfg = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": 40}))
    assert main(["--target", "onnx", "--model", str(hf), "--out", str(tmp_path / "onnx"), "--no-validate"]) == 0
    capsys.readouterr()
    for model in (hf, tmp_path / "onnx"):
        assert main(["generate", "--model", str(model), "--prompt", "Yes, no, maybe.", "--max-new-tokens", "1000",
                     "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["finish_reason"] == "context" and out["prompt_tokens"] + len(out["token_ids"]) == 40
