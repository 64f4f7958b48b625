"""Parsers for the output of the LiteRT runners profiled over adb.

benchmark_model (tensorflow/lite/tools/benchmark/benchmark_model.cc, BenchmarkLoggingListener::OnBenchmarkEnd;
benchmark_tflite_model.cc for the peak), one signature per run:
    INFO: Inference timings in us: Init: 119515, First inference: 87112, Warmup (avg): 58147.4, Inference (avg): 63743.2
    INFO: Memory footprint delta from the start of the tool (MB): init=55.4961 overall=55.4961
    INFO: Overall peak memory footprint (MB) via periodic monitoring: 93.2383

litert_lm_main --benchmark (google-ai-edge/LiteRT-LM runtime/engine/io_types.cc, operator<< for BenchmarkInfo,
logged through ABSL_LOG(INFO) so the first line carries the log prefix). Two published layouts:
    BenchmarkInfo:                                 BenchmarkInfo:
      Init Phases (2):                               Init Phases (6):
        - Executor initialization: 812.34 ms          - Init Executor: 812.34 ms
        Total init time: 1000.00 ms                   ...  - Init Total: 1010.29 ms
    ---...                                         ---...
      Prefill Turns (Total: 1):                      Time to first token: 0.58 s
        Prefill Turn 1: Processed 128 tokens in    ---...
    426.5ms duration.                                Prefill Turns (Total 1 turns):
          Prefill Speed: 300.12 tokens/sec.            Prefill Turn 1: Processed 128 tokens in 426.5ms duration.
    ---...                                               Prefill Speed: 300.12 tokens/sec.
      Decode Turns (Total: 1):                       ---...
        Decode Turn 1: Processed 128 tokens in         Decode Turns (Total 1 turns): ...
    ...
and, with --report_peak_memory_footprint, `Peak system ram usage: 1234.5MB.` (litert_lm_main.cc / litert_lm_lib.cc).
Durations are absl::Duration's text ("426.5ms", "1.2345s", "1m2.5s", "850us").

Every error names the tool and the line at fault.
"""
from __future__ import annotations

import re

_NUM = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_TIMINGS = re.compile(rf"Inference timings in us: Init: {_NUM}, First inference: {_NUM}, "
                      rf"Warmup \(avg\): {_NUM}, Inference \(avg\): {_NUM}")
_DELTA = re.compile(rf"Memory footprint delta from the start of the tool \(MB\): init={_NUM} overall={_NUM}")
_PEAK = re.compile(rf"Overall peak memory footprint \(MB\) via periodic monitoring: {_NUM}")

_INIT_PHASE = re.compile(rf"^\s*- (.+?): {_NUM} ms\s*$")
_TOTAL_INIT = re.compile(rf"^\s*Total init time: {_NUM} ms\s*$")
_TTFT = re.compile(rf"^\s*Time to first token: {_NUM} s\s*$")
_SECTION = re.compile(r"^\s*(Prefill|Decode) Turns \(Total:? (\d+)(?: turns)?\):\s*$")
_TURN = re.compile(r"^\s*(Prefill|Decode) Turn (\d+): Processed (\d+) tokens in (\S+) duration\.\s*$")
_SPEED = re.compile(rf"^\s*(Prefill|Decode) Speed: {_NUM} tokens/sec\.\s*$")
_RAM = re.compile(rf"Peak system ram usage: {_NUM}\s*MB\.?")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


class RunnerOutputError(ValueError):
    """Output of a LiteRT runner that cannot be read."""


def _error(tool: str, line_no: int | None, line: str | None, why: str) -> RunnerOutputError:
    where = f", line {line_no}: {line.strip()!r}" if line_no is not None else ""
    return RunnerOutputError(f"{tool} output{where}: {why}")


def _float(tool: str, text: str, line_no: int, line: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise _error(tool, line_no, line, f"{what} is not a number ({text!r})") from None


def absl_duration_s(text: str) -> float:
    """absl::FormatDuration's text -> seconds ("1m2.5s" -> 62.5, "426.5ms" -> 0.4265, "0" -> 0)."""
    text = text.strip()
    if text in ("0", "inf", "-inf"):
        return {"0": 0.0, "inf": float("inf"), "-inf": float("-inf")}[text]
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("-")
    parts = _DURATION_PART.findall(body)
    if not parts or "".join(n + u for n, u in parts) != body:
        raise ValueError(f"not an absl duration: {text!r}")
    return sign * sum(float(n) * _UNIT_S[u] for n, u in parts)


def parse_benchmark_model(text: str) -> dict:
    """benchmark_model's output -> {"init_us", "first_us", "warmup_avg_us", "inference_avg_us",
    "mem_init_mb", "mem_overall_mb", "peak_mb"} (the memory keys None when not printed)."""
    tool = "benchmark_model"
    out = {"mem_init_mb": None, "mem_overall_mb": None, "peak_mb": None}
    for i, line in enumerate(text.splitlines(), 1):
        for pattern, keys, what in ((_TIMINGS, ("init_us", "first_us", "warmup_avg_us", "inference_avg_us"),
                                     "Inference timings in us"),
                                    (_DELTA, ("mem_init_mb", "mem_overall_mb"), "Memory footprint delta"),
                                    (_PEAK, ("peak_mb",), "Overall peak memory footprint")):
            if what in line:
                m = pattern.search(line)
                if m is None:
                    raise _error(tool, i, line, f"'{what}' line not in the expected format")
                out.update({k: _float(tool, v, i, line, k) for k, v in zip(keys, m.groups())})
    if "inference_avg_us" not in out:
        errors = [(i, ln) for i, ln in enumerate(text.splitlines(), 1) if ln.startswith(("ERROR", "E ")) or "Error" in ln]
        if errors:
            raise _error(tool, *errors[-1], "the run failed (no 'Inference timings in us' line)")
        raise _error(tool, None, None, "no 'Inference timings in us' line (did the run fail?)")
    if out["inference_avg_us"] <= 0:
        raise _error(tool, None, None, f"non-positive average inference time {out['inference_avg_us']} us")
    return out


def parse_litert_lm_benchmark(text: str) -> dict:
    """litert_lm_main --benchmark output -> {"init_ms": {phase: ms}, "load_s", "ttft_s" (None in the older
    layout), "prefill": [(tokens, seconds, tok/s)], "decode": [(tokens, seconds, tok/s)], "peak_mb"}."""
    tool = "litert_lm_main"
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.rstrip().endswith("BenchmarkInfo:")), None)
    out = {"init_ms": {}, "total_init_ms": None, "ttft_s": None, "prefill": [], "decode": [], "peak_mb": None}
    for i, line in enumerate(lines, 1):
        if "Peak system ram usage" in line:
            m = _RAM.search(line)
            if m is None:
                raise _error(tool, i, line, "'Peak system ram usage' line not in the expected format")
            out["peak_mb"] = _float(tool, m[1], i, line, "peak RAM")
    if start is None:
        fatal = [(i, ln) for i, ln in enumerate(lines, 1) if ln.startswith(("F", "E")) and "]" in ln]
        if fatal:
            raise _error(tool, *fatal[-1], "the run failed (no 'BenchmarkInfo:' block)")
        raise _error(tool, None, None, "no 'BenchmarkInfo:' block (was --benchmark passed?)")
    section, expected, pending = None, {}, None
    for i in range(start + 1, len(lines)):
        line, no = lines[i], i + 1
        if not line.strip() or set(line.strip()) == {"-"} or "Init Phases" in line or "No " in line:
            continue
        if m := _SECTION.match(line):
            section, expected[m[1].lower()] = m[1].lower(), int(m[2])
        elif re.match(r"^\s*(Mark Durations|TextToTokenIds Turns)", line):
            section = "other"                      # printed after the turns; not used
        elif section == "other":
            continue
        elif m := _TURN.match(line):
            try:
                seconds = absl_duration_s(m[4])
            except ValueError:
                raise _error(tool, no, line, f"cannot read the turn's duration {m[4]!r}") from None
            pending = (m[1].lower(), int(m[3]), seconds, no, line)
        elif m := _SPEED.match(line):
            if pending is None or pending[0] != m[1].lower():
                raise _error(tool, no, line, f"{m[1]} Speed without a {m[1]} Turn line before it")
            kind, tokens, seconds = pending[:3]
            out[kind].append((tokens, seconds, _float(tool, m[2], no, line, f"{kind} speed")))
            pending = None
        elif m := _TTFT.match(line):
            out["ttft_s"] = _float(tool, m[1], no, line, "time to first token")
        elif m := _TOTAL_INIT.match(line):
            out["total_init_ms"] = _float(tool, m[1], no, line, "total init time")
        elif section is None and (m := _INIT_PHASE.match(line)):
            out["init_ms"][m[1]] = _float(tool, m[2], no, line, f"init phase {m[1]!r}")
        elif section is None and line.lstrip().startswith("- "):
            raise _error(tool, no, line, "init phase line not in the expected format")
        elif section is not None and re.search(r"\b(Turn|Speed|Processed)\b", line):
            raise _error(tool, no, line, f"{section} turn line not in the expected format")
    if pending is not None:
        raise _error(tool, pending[3], pending[4], f"{pending[0]} turn without its speed line (output cut short?)")
    for kind in ("prefill", "decode"):
        if kind not in expected or len(out[kind]) != expected[kind] or not out[kind]:
            raise _error(tool, None, None, f"expected {expected.get(kind, 'at least 1')} {kind} turn(s), "
                         f"read {len(out[kind])}")
    init = out["init_ms"]
    total = init.get("Init Total", out["total_init_ms"])
    out["load_s"] = (total if total is not None else sum(init.values())) / 1e3 if (init or total) else None
    return out
