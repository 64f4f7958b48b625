"""`gemma-export --target X`: the target table, the pipeline's summary and report, a failed validation,
and byte-identical re-runs (ONNX and .litertlm) on tiny models."""
import contextlib
import dataclasses
import hashlib
import json

import pytest

from export.cli import main
from export.quantize.recipes import RECIPES, Thresholds, recipe, web_recipe

from oracle import save_hf_folder

# The deployment profiles as the README documents them (format, bundle, default recipe, context, prefill
# lengths; None where it states none).
DOCUMENTED = {
    "android": ("litert", "litertlm", "int4", 4096, [32, 128, 512]),
    "ios": ("litert", "litertlm", "int4", 4096, [32, 128, 512]),
    "web": ("onnx", "onnx-web", "web", 2048, None),
    "desktop": ("onnx", "onnx-folder", "fp16", 8192, None),
    "litert": ("litert", "tflite-folder", "fp32", None, [32, 128, 512]),
    "onnx": ("onnx", "onnx-folder", "fp32", None, None),
}


def _digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def hf(tiny_hf):
    return tiny_hf("gemma3", tokenizer=True).path


def test_targets_lists_every_documented_profile(capsys):
    assert main(["targets", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows.keys() == DOCUMENTED.keys()
    for name, documented in DOCUMENTED.items():
        row = rows[name]
        listed = (row["format"], row["bundle"], row["recipe"], row["context"], row["prefill"])
        assert all(d is None or d == x for d, x in zip(documented, listed)), (name, listed)
        # every default is a recipe its format (the web target: its own recipes, web_recipe) can build
        web_recipe(row["recipe"]) if name == "web" else recipe(row["recipe"], row["format"])


def test_onnx_targets_run_the_pipeline_and_rerun_byte_identical(hf, tmp_path, capsys):
    args = ["--model", str(hf), "--quant", "fp32", "--context", "384", "--json"]
    assert main(["--target", "web", "--out", str(tmp_path / "a"), *args]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["target"] == "web" and s["recipe"] == "fp32" and s["context"] == 384
    assert s["validation"]["passed"] and s["validation"]["top1_agreement"] >= RECIPES["fp32"].thresholds.min_top1_agreement
    assert s["validation"]["conversion"]["passed"] and s["validation"]["quantization"]["passed"]
    on_disk = {p.relative_to(tmp_path / "a").as_posix(): p.stat().st_size for p in (tmp_path / "a").rglob("*")
               if p.is_file() and p.name != "manifest.json"}      # the web folder keeps its graph under onnx/
    assert s["files"] == on_disk and s["bytes"] == sum(on_disk.values())
    assert json.loads((tmp_path / "a.report.json").read_text()) == s
    md = (tmp_path / "a.report.md").read_text()
    assert "PASSED" in md and "conversion    passed" in md and "quantization  passed" in md
    assert main(["--target", "web", "--out", str(tmp_path / "b"), "--no-validate", *args]) == 0
    assert json.loads(capsys.readouterr().out)["validation"] is None
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")


def test_a_failed_validation_keeps_the_artifact_and_exits_1(hf, tmp_path, capsys, monkeypatch):
    impossible = dataclasses.replace(RECIPES["fp32"], thresholds=Thresholds(max_abs_logit_diff=-1.0))
    monkeypatch.setitem(RECIPES, "fp32", impossible)
    assert main(["--target", "onnx", "--model", str(hf), "--out", str(tmp_path / "x"), "--context", "384"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "conversion    FAILED" in out and "max |logit diff|" in out
    assert str(tmp_path / "x.report.md") in out
    assert (tmp_path / "x" / "model.onnx").exists() and (tmp_path / "x.report.json").exists()


def test_the_pipeline_loads_the_checkpoint_once(hf, tmp_path, capsys, monkeypatch):
    import export.models.checkpoints as checkpoints
    import export.validate as validate_module
    calls, real = [], checkpoints.load_model
    counting = lambda *a, **k: calls.append(a) or real(*a, **k)  # noqa: E731
    monkeypatch.setattr(checkpoints, "load_model", counting)
    monkeypatch.setattr(validate_module, "load_model", counting)
    assert main(["--target", "onnx", "--model", str(hf), "--out", str(tmp_path / "x"), "--context", "384",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["validation"]["passed"] and len(calls) == 1


def test_a_user_bar_fails_the_quantization_check_and_exits_1(hf, tmp_path, capsys):
    args = ["--target", "onnx", "--model", str(hf), "--out", str(tmp_path / "x"), "--context", "384", "--json"]
    assert main([*args, "--quant", "int8", "--min-top1", "1.0", "--max-kl", "0"]) == 1
    v = json.loads(capsys.readouterr().out)["validation"]
    assert v["conversion"]["passed"] and not v["quantization"]["passed"] and not v["passed"]
    assert v["quantization"]["bar"]["min_top1_agreement"] == 1.0 and v["quantization"]["bar"]["max_kl_divergence"] == 0


@pytest.mark.parametrize("argv, named", [
    (["--target", "web", "--prefill", "16"], "--prefill"),
    (["--target", "watch"], "--target"),
    (["--target", "onnx", "--min-top1", "1.5"], "--min-top1"),
    (["--target", "onnx", "--max-kl", "-1"], "--max-kl"),
])
def test_bad_pipeline_flags(argv, named, hf, capsys):
    with pytest.raises(SystemExit) if "watch" in argv else contextlib.nullcontext():   # argparse choices exit
        assert main([*argv, "--model", str(hf)]) == 2
    assert named in capsys.readouterr().err


def test_android_with_an_fp32_override_builds_a_validated_litertlm_twice_byte_identical(tmp_path, capfd):
    # Two conversions, whose time grows with the layers: a Gemma 3 of two (one sliding, one global).
    save_hf_folder("gemma3", tmp_path / "hf", tokenizer=True, num_hidden_layers=2,
                   layer_types=["sliding_attention", "full_attention"])
    # capfd: standard output at the file-descriptor level, where litert-torch's C++ side writes too: JSON only
    args = ["--model", str(tmp_path / "hf"), "--quant", "fp32", "--context", "320", "--prefill", "32", "--json"]
    assert main(["--target", "android", "--out", str(tmp_path / "a"), *args]) == 0
    out = capfd.readouterr().out
    s = json.loads(out)
    assert s["bundle"] == "litertlm" and s["prefill"] == [32] and s["context"] == 320 and s["validation"]["passed"]
    assert set(s["files"]) == {"model.litertlm", "tokenizer.model"}
    assert main(["--target", "android", "--out", str(tmp_path / "b"), "--no-validate", *args]) == 0
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")


def test_onnx_export_is_the_same_bytes_in_other_processes(hf, tmp_path):
    """Python's string hashes are seeded per process (a set's order with them): two processes, two seeds."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-m", "export.cli", "--target", "onnx", "--model", str(hf), "--quant", "int4",
                        "--context", "384", "--no-validate", "--out", str(tmp_path / seed)], env=env, check=True,
                       capture_output=True, cwd=Path(__file__).parents[1])
    assert _digests(tmp_path / "1") == _digests(tmp_path / "2")
