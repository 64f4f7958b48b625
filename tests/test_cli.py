"""The command line: models, generate (checkpoint and artifact), export, bad input."""
import json

import pytest

from export.cli import main
from export.models import PRESETS, count_parameters

from oracle import save_hf_folder


def test_models_json_lists_every_preset_with_its_count(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["parameters"] for r in rows} == {n: count_parameters(c) for n, c in PRESETS.items()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    save_hf_folder("gemma3", root / "hf", tokenizer=True)
    return root


def test_generate_json_on_checkpoint_and_on_its_onnx_artifact_agree(tiny, capsys):
    args = ["--prompt", "The quick brown fox", "--max-new-tokens", "12", "--json"]
    assert main(["generate", "--model", str(tiny / "hf"), *args]) == 0
    ref = json.loads(capsys.readouterr().out)
    assert main(["--target", "onnx", "--model", str(tiny / "hf"), "--out", str(tiny / "onnx"), "--context", "64"]) == 0
    capsys.readouterr()
    assert main(["generate", "--model", str(tiny / "onnx"), *args]) == 0
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
