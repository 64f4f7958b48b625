"""Host profiling of a tiny ONNX artifact (runtime_py's timing hook, medians, JSON / Markdown / PNG) and the
roofline estimate (per-token bytes and FLOPs against independent counts, calibration, catalogue devices)."""
import json
import math
import resource
import statistics

import pytest

import runtime_py
from devices.estimate import calibrate, catalogue, estimate, per_token
from devices.host import prompt_ids
from export.cli import main
from export.converters.artifact import as_plain
from export.converters.litert.signatures import cache_shapes
from export.converters.onnx import export_onnx
from export.models import PRESETS, count_parameters
from export.models.checkpoints import load_model

PROFILE = ["--prompt-lengths", "16,48", "--decode-tokens", "8", "--runs", "2"]


@pytest.fixture(scope="module")
def artifact(tiny_hf, tmp_path_factory):
    hf = tiny_hf("gemma3", tokenizer=True).path
    return export_onnx(load_model(hf), tmp_path_factory.mktemp("host") / "tiny-onnx", context_length=128)


@pytest.fixture(scope="module")
def host_profile(artifact, tmp_path_factory):
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["profile", str(artifact), *PROFILE, "--json"]) == 0
    return json.loads(out.getvalue())


def test_timed_steps_continue_the_prompt_as_generate_does(artifact):
    m = runtime_py.load(artifact)
    ids = prompt_ids(m.config["vocab_size"], 20)
    t = m.time_steps(ids, 8)
    assert t.token_ids == m.generate(ids, 9, stop_ids=()).token_ids
    assert len(t.decode_s) == 8 and 0 < t.prefill_s <= t.first_token_s
    with pytest.raises(ValueError, match="context length 128"):
        m.time_steps(prompt_ids(m.config["vocab_size"], 120), 16)


def test_host_profile_reports_medians_and_writes_json_markdown_and_chart(artifact, host_profile):
    r = host_profile
    assert {"ttft_ms", "prefill_tok_s", "decode_tok_s", "peak_rss_mb", "load_s", "artifact_mb", "runs"} <= set(r)
    assert len(r["runs"]) == 2 and set(r["prefill_tok_s"]) == {"16", "48"}
    assert r["decode_tok_s"] == pytest.approx(statistics.median(x["decode_tok_s"] for x in r["runs"]), abs=1e-3)
    assert r["artifact_mb"] == pytest.approx(sum(p.stat().st_size for p in artifact.iterdir()) / 1e6, abs=1e-3)
    lifetime_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024       # Linux: kB
    assert all(0 < x["peak_rss_mb"] <= lifetime_peak_mb + 1 for x in r["runs"])
    base = artifact.parent / f"{artifact.name}.profile-host"
    assert json.loads((base.parent / (base.name + ".json")).read_text()) == r
    assert (base.parent / (base.name + ".png")).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (base.parent / (base.name + ".md")).read_text()
    assert "| decode (tokens/s) |" in md and f"{base.name}.png" in md


def test_per_token_bytes_and_flops_match_independent_counts():
    c = PRESETS["gemma3-270m"]
    config = json.loads(json.dumps(as_plain(c)))
    # context 0: two FLOPs per weight in the matmuls; the norms are the only parameters left out
    flops = per_token(config, 0, 0)["flops"]
    norms = c.num_layers * (4 * c.hidden_size + 2 * c.head_dim) + c.hidden_size
    assert flops == 2 * (count_parameters(c) - norms)
    # a full cache: the K and V of every layer's (window-capped) cache, float32
    for length in (256, 4096):
        kv = sum(math.prod(s) for s in cache_shapes(c, length).values()) * 4
        assert per_token(config, 1000, length)["bytes"] == 1000 + kv


def test_calibrated_estimate_reproduces_the_host_and_states_its_errors(artifact, host_profile):
    config = runtime_py.load(artifact).config
    host = {"bandwidth_gbs": 10.0, "gflops": 50.0}
    weights = 1_000_000
    cal = calibrate(host_profile, config, weights, host)
    assert cal["host_check"]["measured_tok_s"] == host_profile["prefill_tok_s"]["48"]
    as_host = {"id": "h", "name": "host", "soc": "-", "bandwidth_gbs": 10.0, "reference": [],
               "cpu": [{"core": "x", "count": 1, "ghz": 50.0, "flops_per_cycle": 1}]}
    e = estimate(as_host, config, weights, cal, threads=1, prompt=16, decode_tokens=8)
    assert e["decode_tok_s"] == pytest.approx(host_profile["decode_tok_s"], rel=1e-3)
    assert e["prefill_tok_s"]["16"] == pytest.approx(host_profile["prefill_tok_s"]["16"], rel=1e-3)
    s24 = {"id": "galaxy-s24", **catalogue()["galaxy-s24"]}
    checks = estimate(s24, config, weights, cal)["reference_checks"]
    ref = s24["reference"][0]
    assert checks[0]["decode"]["predicted_tok_s"] == pytest.approx(cal["e_bw"] * 76.8e9 / ref["bytes"], rel=1e-2)


def test_estimate_command_is_labelled_and_checks_the_device(artifact, host_profile, tmp_path, capsys):
    cal = tmp_path / "host.json"
    cal.write_text(json.dumps(host_profile))
    assert main(["profile", str(artifact), "--device", "galaxy-s24", "--estimate", "--calibration", str(cal),
                 "--out", str(tmp_path / "est"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["estimate"]["kind"].startswith("ESTIMATE") and r["decode_tok_s"] > 0
    assert r["estimate"]["reference_checks"][0]["decode"]["error_pct"] is not None
    assert "ESTIMATE" in (tmp_path / "est.md").read_text()
    assert main(["profile", str(artifact), "--device", "pixel-8"]) == 2
    assert "--estimate" in capsys.readouterr().err
    assert main(["profile", str(artifact), "--device", "nokia-3310", "--estimate"]) == 2
    assert "catalogue" in capsys.readouterr().err
