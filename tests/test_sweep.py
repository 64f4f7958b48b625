"""`gemma-export sweep` on a local Ray (one per session, conftest.ray_local) with tiny models: a 2 x 2 x 2 plan
runs every cell, a re-run reuses them all, failed cells are reported while the rest finish, Ray never runs more
cells at once than the node's memory holds, and each cell's artifact and figures are the plain CLI's."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from export.cli import main

TINY = ("gemma3", "gemma")
PLAN = """
models = ["gemma3", {path = "gemma", memory_gb = 3.0},
          {path = "broken", recipes = ["fp32"], targets = ["onnx"]},
          {path = "gemma3", name = "huge", memory_gb = 100000, recipes = ["fp32"], targets = ["onnx"]}]
recipes = ["fp32", "int8"]
targets = ["onnx", "web"]
context = 384
[profile]
host = true
runs = 1
prompt_lengths = [16]
decode_tokens = 8
spin = false
"""


def _run(argv, capsys):
    status = main([*argv, "--json"])
    return status, json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def plan(tiny_hf, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    for arch in TINY:
        shutil.copytree(tiny_hf(arch, tokenizer=True).path, root / arch)
    shutil.copytree(root / "gemma3", root / "broken")
    weights = root / "broken" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])          # the cell made to fail: a torn checkpoint
    (root / "plan.toml").write_text(PLAN)
    return root / "plan.toml"


@pytest.fixture(scope="module")
def first(plan, ray_local):
    from export.sweep.plan import load_plan
    from export.sweep.runner import sweep
    out = plan.parent / "out"
    return out, sweep(load_plan(plan), out)


def _by_name(summary):
    return {r["cell"]["name"]: r for r in summary["cells"]}


def test_every_cell_runs_and_failures_are_reported_while_the_rest_finish(first):
    out, s = first
    cells = _by_name(s)
    good = {f"{m}-{t}-{r}" for m in TINY for t in ("onnx", "web") for r in ("fp32", "int8")}
    assert set(cells) == good | {"broken-onnx-fp32", "huge-onnx-fp32"}
    for name in good:
        r = cells[name]
        assert r["status"] == "ok", (name, r["error"])
        assert r["validation"]["passed"] and r["profile"]["host"]["decode_tok_s"] > 0
        manifest = json.loads((out / name / "manifest.json").read_text())
        assert {n: f["sha256"] for n, f in manifest["files"].items()} == r["sha256"]
    assert cells["broken-onnx-fp32"]["status"] == "error" and "model.safetensors" in cells["broken-onnx-fp32"]["error"]
    assert cells["huge-onnx-fp32"]["status"] == "error" and "100000 GB" in cells["huge-onnx-fp32"]["error"]
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(x["cell"]["name"] for x in lines) == sorted(cells)
    md = (out / "summary.md").read_text()
    assert all(f"| {r['cell']['model']} | {r['cell']['target']} | {r['cell']['recipe']} | {r['status']}" in md
               for r in s["cells"])
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ray_never_runs_more_cells_than_the_node_memory_holds(first):
    # the node offers 4 GiB; each `gemma` cell asks for 3 GB, the others for the tiny estimate (1.5 GB): a `gemma`
    # cell never shares the node
    _, s = first
    cells = [r for r in s["cells"] if "started" in r]
    spans = {r["cell"]["name"]: (r["started"], r["started"] + r["seconds"]["cell"]) for r in cells}
    assert all(r["requests"]["memory_gb"] == 3.0 for r in cells if r["cell"]["model"] == "gemma")
    for name, (a, b) in spans.items():
        if name.startswith("gemma-"):
            # a cell's end is rounded to 10 ms (seconds["cell"]): overlaps shorter than that are the rounding
            overlapping = [n for n, (c, d) in spans.items() if n != name and c < b - 0.01 and a < d - 0.01]
            assert not overlapping, (name, {n: spans[n] for n in [name, *overlapping]})


def test_a_rerun_reuses_every_done_cell_and_retries_the_failed_one(first, plan, capsys):
    out, s = first
    before = (out / "results.jsonl").read_text().splitlines()
    status, again = _run(["sweep", str(plan), "--out", str(out)], capsys)
    assert status == 1                                   # the broken cell still fails
    cells = _by_name(again)
    assert {n for n, r in cells.items() if r.get("skipped")} == {n for n, r in _by_name(s).items()
                                                                 if r["status"] == "ok"}
    after = (out / "results.jsonl").read_text().splitlines()
    assert after[:len(before)] == before and {json.loads(x)["cell"]["name"] for x in after[len(before):]} == \
        {"broken-onnx-fp32", "huge-onnx-fp32"}
    # an artifact changed on disk is no longer the recorded result: that cell alone runs again
    (out / "gemma3-web-int8" / "tokenizer.model").write_bytes(b"changed")
    status, third = _run(["sweep", str(plan), "--out", str(out)], capsys)
    rerun = {n for n, r in _by_name(third).items() if not r.get("skipped")}
    assert rerun == {"gemma3-web-int8", "broken-onnx-fp32", "huge-onnx-fp32"}
    redone = _by_name(third)["gemma3-web-int8"]
    assert redone["status"] == "ok" and redone["sha256"] == _by_name(s)["gemma3-web-int8"]["sha256"], redone["error"]


@pytest.mark.parametrize("model,target,recipe", [("gemma3", "web", "int8"), ("gemma", "onnx", "fp32")])
def test_a_cell_equals_the_plain_cli(first, plan, model, target, recipe, tmp_path, capsys):
    _, s = first
    record = _by_name(s)[f"{model}-{target}-{recipe}"]
    status, alone = _run(["--target", target, "--quant", recipe, "--model", str(plan.parent / model),
                          "--context", "384", "--out", str(tmp_path / "alone")], capsys)
    assert status == 0 and alone["sha256"] == record["sha256"] and alone["bytes"] == record["bytes"]
    for key in ("top1_agreement", "kl_divergence", "perplexity", "greedy_match_tokens", "max_abs_logit_diff"):
        assert alone["validation"][key] == pytest.approx(record["validation"][key], rel=1e-6, abs=1e-9), key
    for path, figures in alone["validation"]["conversion"].items():
        if isinstance(figures, dict) and "top1_agreement" in figures:
            got = record["validation"]["conversion"][path]
            assert figures["top1_agreement"] == got["top1_agreement"]
            assert figures["relative_error"] == pytest.approx(got["relative_error"], rel=1e-6, abs=1e-9)


BAD = [
    ("recipes = [\"fp32\"]\ntargets = [\"onnx\"]\n", "models"),
    ("models = [\"gemma3\"]\nrecipes = [\"fp99\"]\ntargets = [\"onnx\"]\n", "onnx x fp99"),
    ("models = [\"gemma3\"]\nrecipes = [\"fp16\"]\ntargets = [\"android\"]\n", "android x fp16"),
    ("models = [\"gemma3\"]\nrecipes = [\"auto\"]\ntargets = [\"onnx\"]\n", "auto.min_top1"),
    ("models = [\"nowhere\"]\nrecipes = [\"fp32\"]\ntargets = [\"onnx\"]\n", "models[0].path"),
    ("models = [\"gemma3\", \"gemma3\"]\nrecipes = [\"fp32\"]\ntargets = [\"onnx\"]\n", "models[1].name"),
    ("models = [\"gemma3\"]\nrecipes = [\"fp32\"]\ntargets = [\"onnx\"]\ncontxt = 5\n", "contxt"),
    ("models = [\"gemma3\"]\nrecipes = [\"fp32\"]\ntargets = [\"onnx\"]\n[profile]\nruns = 0\n", "profile.runs"),
    ("models = [\"gemma3\"]\nrecipes = [\"fp32\"]\ntargets = [\"onnx\"]\n[profile]\nadb = [{serial = \"a b\", "
     "runner = \"x\"}]\n", "profile.adb[0].serial"),
    ("models = [\"gemma3\"]\nrecipes = [\"fp32\"]\ntargets = [\"onnx\"]\nprefill = [8]\n", "prefill"),
    ("models = [\"gemma3\"\n", "not TOML"),
]


@pytest.mark.parametrize("text,key", BAD)
def test_a_bad_plan_is_one_line_naming_the_file_and_key_exit_2_nothing_written(text, key, plan, tmp_path, capsys):
    bad = plan.parent / f"bad-{abs(hash(text))}.toml"
    bad.write_text(text)
    assert main(["sweep", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and key in err, err
    assert not (tmp_path / "out").exists()


# A Ray cluster another process runs (its node: 1 CPU, 3 GB), on loopback without Ray's token authentication
HEAD = """import sys, ray
ray.init(num_cpus=1, _memory=3 * 10**9, object_store_memory=80 << 20, include_dashboard=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
ray.shutdown()"""


def test_address_joins_a_running_cluster_as_it_is(plan, tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    (plan.parent / "joined.toml").write_text(
        'models = ["gemma3", {path = "gemma3", name = "big", memory_gb = 3.5}]\nrecipes = ["fp32"]\n'
        'targets = ["onnx"]\ncontext = 384\n[resources]\nmemory_gb = 2.5\n')
    head = subprocess.Popen([sys.executable, "-c", HEAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        address = head.stdout.readline().strip()
        r = subprocess.run([sys.executable, "-m", "export.cli", "sweep", str(plan.parent / "joined.toml"), "--address",
                            address, "--out", str(tmp_path / "out"), "--json"], env=env, capture_output=True, text=True,
                           cwd=Path(__file__).parents[1], timeout=600)
    finally:
        head.stdin.close()
        head.wait(120)
    assert r.returncode == 1, r.stderr[-2000:]
    cells = _by_name(json.loads(r.stdout))
    assert cells["gemma3-onnx-fp32"]["status"] == "ok"
    # the joined node's 3 GB, not this machine's memory as a Ray of its own would offer
    assert "the largest node offers 3.0 GB" in cells["big-onnx-fp32"]["error"]


def test_a_phone_task_profiles_the_model_file_it_is_sent(phone, tmp_path):
    # what the task on the phone's node runs (the stand-in adb is on this process's PATH only, so it is called here)
    from conftest import printed
    from export.sweep.cell import run_phone
    runner = tmp_path / "litert_lm_main"
    runner.write_bytes(b"\x7fELF")
    body = b"LITERTLM" + bytes(64)
    cell = {"options": {"profile": {"runs": 1, "prompt_lengths": [128, 512], "decode_tokens": 128}}}
    got = run_phone(cell, {"serial": "R5CW71ABCDE", "runner": str(runner)}, ("model.litertlm", body))
    assert got["decode_tok_s"] == pytest.approx(printed("litert_lm_main_prefill128.log", "Decode"), 1e-4)
    assert got["prefill_tok_s"]["512"] == pytest.approx(printed("litert_lm_main_prefill512.log", "Prefill"), 1e-4)
    # pushed from a file of its own (the stand-in adb refuses a push of a file that is not there)
    pushes = [c for c in phone() if c[3] == "push" and c[-1].endswith("/model.litertlm")]
    assert len(pushes) == 1 and Path(pushes[0][4]).name == "model.litertlm"
    assert "error" in run_phone(cell, {"serial": "OTHER", "runner": str(runner)}, ("model.litertlm", body))


def test_the_pareto_front():
    from export.sweep.report import pareto
    # (MB, top-1): the second beats the fourth (smaller, better); the third is beaten by the second
    points = [(100, 0.5), (200, 0.9), (300, 0.8), (250, 0.85), (50, 0.4)]
    assert pareto(points) == [4, 0, 1]


def test_auto_sensitivities_as_ray_tasks_equal_one_process(tiny_hf, ray_local):
    from export.models.checkpoints import load_model
    from export.quantize.auto import Planner
    from export.quantize.auto_ray import ray_fan_out
    from export.quantize.gptq import default_calibration_text
    loaded = load_model(tiny_hf("gemma3", tokenizer=True).path)
    ids = loaded.tokenizer.encode(default_calibration_text())
    here, there = (Planner(loaded.model, "onnx", ids, loaded.config.bos_id) for _ in range(2))
    here.measure()
    notes = []
    there.measure(ray_fan_out(notes.append))
    assert len(notes) == 2                        # one task per CPU of the session's Ray
    for a, b in zip(here.units, there.units, strict=True):
        assert a.names == b.names and a.kl.keys() == b.kl.keys()
        for c in a.kl:
            assert b.kl[c] == pytest.approx(a.kl[c], rel=1e-5, abs=1e-12), (a.names, c)
    assert here.search(0.9) == there.search(0.9)


def test_address_on_export_is_only_for_auto(plan, tmp_path, capsys):
    argv = ["--target", "onnx", "--quant", "int8", "--model", str(plan.parent / "gemma3"), "--address", "local",
            "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--address" in err and not (tmp_path / "x").exists()
