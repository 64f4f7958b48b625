"""Profiling over adb with a stand-in `adb` on PATH (tests/fake_adb.py): the exact commands sent, the runners'
outputs (tests/fixtures/devices, in the published formats) parsed into the report, and malformed output."""
import json
import re

import pytest

from devices.parsers import RunnerOutputError, absl_duration_s, parse_benchmark_model, parse_litert_lm_benchmark
from export.cli import main

from conftest import PHONE_FIXTURES as FIXTURES
from conftest import printed as _printed

REMOTE_PARENT = "/data/local/tmp/gemma-export"


def _remote(commands) -> str:
    """This run's own folder on the phone (run-PID-RANDOM under REMOTE_PARENT), from its mkdir."""
    made = [c[-1].split()[-1] for c in commands if c[-1].startswith("mkdir -p ")]
    assert len(made) == 1 and re.fullmatch(rf"{REMOTE_PARENT}/run-\d+-[0-9a-f]+", made[0])
    return made[0]


def test_litertlm_over_adb_sends_the_exact_commands_and_reports_the_runner_figures(phone, tmp_path, capsys):
    art = tmp_path / "gemma-android-int4"
    art.mkdir()
    (art / "model.litertlm").write_bytes(b"LITERTLM" + bytes(64))
    runner = tmp_path / "litert_lm_main"
    runner.write_bytes(b"\x7fELF")
    assert main(["profile", str(art), "--device", "adb:R5CW71ABCDE", "--runner", str(runner), "--runs", "2",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)

    adb = ["adb", "-s", "R5CW71ABCDE"]
    got = phone()
    REMOTE = _remote(got)
    run = (f"taskset f0 {REMOTE}/litert_lm_main --backend=cpu --model_path={REMOTE}/model.litertlm --benchmark "
           "--benchmark_prefill_tokens={n} --benchmark_decode_tokens=128 --async=false "
           "--report_peak_memory_footprint --num_cpu_threads=4 > " + REMOTE + "/run{r}_prefill{n}.log 2>&1")
    expected = [adb + ["shell", "getprop ro.product.model"], adb + ["shell", f"mkdir -p {REMOTE}"],
                adb + ["push", str(art / "model.litertlm"), f"{REMOTE}/model.litertlm"],
                adb + ["push", str(runner), f"{REMOTE}/litert_lm_main"],
                adb + ["shell", f"chmod 755 {REMOTE}/litert_lm_main"]]
    for r in (1, 2):
        for n in (128, 512):
            expected += [adb + ["shell", run.format(n=n, r=r)],
                         adb + ["pull", f"{REMOTE}/run{r}_prefill{n}.log"]]
    expected.append(adb + ["shell", f"rm -rf {REMOTE}"])
    assert [c if c[3] != "pull" else c[:5] for c in got] == expected       # pull's local path is a temp file

    assert set(result) >= {"ttft_ms", "prefill_tok_s", "decode_tok_s", "peak_rss_mb", "load_s", "artifact_mb", "runs"}
    assert len(result["runs"]) == 2 and result["device"]["model"] == "Pixel 8"
    assert result["prefill_tok_s"]["128"] == pytest.approx(_printed("litert_lm_main_prefill128.log", "Prefill"), 1e-4)
    assert result["prefill_tok_s"]["512"] == pytest.approx(_printed("litert_lm_main_prefill512.log", "Prefill"), 1e-4)
    assert result["decode_tok_s"] == pytest.approx(_printed("litert_lm_main_prefill128.log", "Decode"), 1e-4)
    assert result["ttft_ms"] == pytest.approx(450.0)                          # printed: 0.45 s
    assert result["peak_rss_mb"] == 1601.9 and result["load_s"] == pytest.approx(0.87302, abs=1e-3)   # max peak; Init Total
    assert result["artifact_mb"] == pytest.approx(72 / 1e6, abs=1e-3)
    assert (tmp_path / "gemma-android-int4.profile-adb-R5CW71ABCDE.md").exists()


def test_tflite_over_adb_runs_benchmark_model_per_signature_on_the_gpu(phone, tmp_path, capsys):
    art = tmp_path / "litert"
    art.mkdir()
    (art / "model.tflite").write_bytes(b"TFL3" + bytes(32))
    (art / "manifest.json").write_text(json.dumps({"prefill_lengths": [32, 128, 512]}))
    runner = tmp_path / "benchmark_model"
    runner.write_bytes(b"\x7fELF")
    assert main(["profile", str(art), "--device", "adb:R5CW71ABCDE", "--runner", str(runner), "--backend", "gpu",
                 "--threads", "2", "--taskset", "none", "--runs", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    runs = [c[4] for c in phone() if c[3] == "shell"]
    REMOTE = _remote(phone())
    for sig in ("prefill_128", "prefill_512", "decode"):
        assert (f"{REMOTE}/benchmark_model --graph={REMOTE}/model.tflite --signature_to_run_for={sig} --num_threads=2 "
                f"--num_runs=5 --warmup_runs=1 --report_peak_memory_footprint=true --use_gpu=true > "
                f"{REMOTE}/{sig}.log 2>&1") in runs
    avg = {s: float(re.search(r"Inference \(avg\): ([\d.]+)", (FIXTURES / f"benchmark_model_{s}.log").read_text())[1])
           for s in ("prefill_128", "prefill_512", "decode")}
    assert result["decode_tok_s"] == pytest.approx(1e6 / avg["decode"], 1e-4)
    assert result["prefill_tok_s"]["512"] == pytest.approx(512e6 / avg["prefill_512"], 1e-4)
    assert result["ttft_ms"] == pytest.approx((avg["prefill_128"] + avg["decode"]) / 1e3, 1e-4)
    assert result["peak_rss_mb"] == 430.1


def test_a_malformed_runner_output_is_one_clear_line_naming_the_tool_and_line(phone, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.log"
    text = (FIXTURES / "litert_lm_main_prefill128.log").read_text().replace("2.891234s", "2.89x1s")
    bad.write_text(text)
    monkeypatch.setenv("FAKE_ADB_OVERRIDE", str(bad))
    art = tmp_path / "m.litertlm"
    art.write_bytes(b"LITERTLM")
    runner = tmp_path / "litert_lm_main"
    runner.write_bytes(b"\x7fELF")
    assert main(["profile", str(art), "--device", "adb:R5CW71ABCDE", "--runner", str(runner), "--runs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "2.89x1s" in ln)
    assert err.startswith("error: litert_lm_main output, line") and f"line {line}:" in err and "2.89x1s" in err
    assert ["adb", "-s", "R5CW71ABCDE", "shell", f"rm -rf {_remote(phone())}"] in phone()     # cleaned up on failure


def test_adb_errors_name_the_device_and_flag(phone, tmp_path, capsys):
    art = tmp_path / "m.litertlm"
    art.write_bytes(b"LITERTLM")
    assert main(["profile", str(art), "--device", "adb"]) == 2
    assert "--runner" in capsys.readouterr().err
    runner = tmp_path / "litert_lm_main"
    runner.write_bytes(b"\x7fELF")
    assert main(["profile", str(art), "--device", "adb:OTHER", "--runner", str(runner)]) == 2
    assert "device 'OTHER' not found" in capsys.readouterr().err


def test_litert_lm_parser_reads_both_published_layouts():
    new = parse_litert_lm_benchmark((FIXTURES / "litert_lm_main_prefill512.log").read_text())
    assert new["ttft_s"] == 1.62 and new["prefill"] == [(512, 1.6012, 319.76)] and new["peak_mb"] == 1601.9
    assert new["load_s"] == pytest.approx(0.8585)
    old = parse_litert_lm_benchmark((FIXTURES / "litert_lm_main_2025-06.log").read_text())
    assert old["ttft_s"] is None and old["decode"] == [(256, 5.871559, 43.60)]
    assert old["load_s"] == pytest.approx(1.05175)                # "Total init time"
    for tokens, seconds, speed in new["prefill"] + new["decode"] + old["prefill"] + old["decode"]:
        assert tokens / seconds == pytest.approx(speed, abs=0.006)   # the printed speed, to its 2 decimals


@pytest.mark.parametrize("edit, named", [
    (lambda t: t.split("      Decode Speed")[0], "turn without its speed line"),
    (lambda t: t.replace("Prefill Speed: 300.12", "Prefill Speed: 3OO.12"), "Prefill Speed: 3OO.12"),
    (lambda t: t.replace("Processed 128 tokens in 426.5ms", "Processed 128 tokens in 426.5 ms"), "Processed 128"),
    (lambda t: t.replace("Peak system ram usage: 1523.4MB.", "Peak system ram usage: n/a"), "Peak system ram"),
    (lambda t: "F0000 00:00:1750000000.1 12345 litert_lm_main.cc:99] Check failed: llm.ok() Failed to create engine\n",
     "Check failed"),
])
def test_litert_lm_parser_rejects_malformed_output_naming_the_line(edit, named):
    _rejected_naming_the_line(parse_litert_lm_benchmark, "litert_lm_main", "litert_lm_main_prefill128.log",
                              edit, named)


@pytest.mark.parametrize("edit, named", [
    (lambda t: t.replace("Inference (avg): 36877.3", "Inference (avg): nan%"), "nan%"),
    (lambda t: t.replace("Overall peak memory footprint (MB) via periodic monitoring: 398.5",
                         "Overall peak memory footprint (MB) via periodic monitoring: ?"), "monitoring: ?"),
    (lambda t: "INFO: STARTING!\nERROR: Could not open '/data/local/tmp/x.tflite'.\n", "Could not open"),
])
def test_benchmark_model_parser_rejects_malformed_output(edit, named):
    _rejected_naming_the_line(parse_benchmark_model, "benchmark_model", "benchmark_model_decode.log", edit, named)


def _rejected_naming_the_line(parse, tool: str, fixture: str, edit, named: str) -> None:
    """`parse` of the fixture edited by `edit` raises an error from `tool` naming the faulty text and its line."""
    text = edit((FIXTURES / fixture).read_text())
    with pytest.raises(RunnerOutputError, match=f"^{tool} output") as e:
        parse(text)
    assert named in str(e.value)
    at = [i for i, ln in enumerate(text.splitlines(), 1) if named in ln]
    assert not at or f"line {at[0]}:" in str(e.value)


def test_absl_durations():
    assert [absl_duration_s(t) for t in ("1h2m3.5s", "426.5ms", "850us", "12ns", "0", "-2s")] == pytest.approx(
        [3723.5, 0.4265, 850e-6, 12e-9, 0.0, -2.0])
    with pytest.raises(ValueError):
        absl_duration_s("12 s")


def test_a_hanging_runner_times_out_and_the_phone_is_cleaned(phone, tmp_path, capsys, monkeypatch):
    import devices.adb
    monkeypatch.setattr(devices.adb, "RUN_TIMEOUT", 1)
    monkeypatch.setenv("FAKE_ADB_HANG", "1")
    art = tmp_path / "m.litertlm"
    art.write_bytes(b"LITERTLM")
    runner = tmp_path / "litert_lm_main"
    runner.write_bytes(b"\x7fELF")
    assert main(["profile", str(art), "--device", "adb:R5CW71ABCDE", "--runner", str(runner), "--runs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did not finish in 1 s" in err and "Traceback" not in err
    remote = _remote(phone())
    assert phone()[-1] == ["adb", "-s", "R5CW71ABCDE", "shell", f"rm -rf {remote}"]      # only this run's folder


def test_two_runs_on_one_phone_use_two_remote_folders(phone, tmp_path, capsys):
    art = tmp_path / "m.litertlm"
    art.write_bytes(b"LITERTLM" + bytes(64))
    runner = tmp_path / "litert_lm_main"
    runner.write_bytes(b"\x7fELF")
    argv = ["profile", str(art), "--device", "adb:R5CW71ABCDE", "--runner", str(runner), "--runs", "1", "--json"]
    assert main(argv) == 0 and main(argv) == 0
    made = [c[-1] for c in phone() if c[-1].startswith("mkdir -p ")]
    assert len(made) == 2 and made[0] != made[1]
