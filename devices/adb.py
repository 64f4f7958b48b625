"""`gemma-export profile ARTIFACT --device adb[:SERIAL] --runner PATH`: profile on an Android phone over adb.

Pushes the artifact's model file and the LiteRT runner the user names -- `litert_lm_main` (LiteRT-LM) for a
`.litertlm`, `benchmark_model` (LiteRT) for a `.tflite` -- runs it pinned with taskset (default mask f0, the
big cores of an 8-core phone, as LiteRT-LM's README advises) with the requested backend and threads, writing
its output to a log on the phone, pulls each log and parses it into the same report as the host profiler.

litert_lm_main runs once per prompt length and run (`--benchmark --benchmark_prefill_tokens=N
--benchmark_decode_tokens=D --async=false`); benchmark_model runs once per signature (`prefill_{N}` and
`decode`) and averages `--num_runs` invocations itself, so its report has one run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import secrets
import shlex
import subprocess
import tempfile
from pathlib import Path

from runtime_py.contract import DECODE_SIGNATURE, prefill_signature
from runtime_py.files import read_json

from .parsers import parse_benchmark_model, parse_litert_lm_benchmark
from .profile import summarize

REMOTE_DIR = "/data/local/tmp/gemma-export"     # each run works in its own folder under it (run-PID-RANDOM)
COMMAND_TIMEOUT = 60            # seconds for a device command (getprop, mkdir, chmod, rm, pull of a log)
PUSH_TIMEOUT = (60, 1e6)        # a push: this many seconds plus one per this many bytes (USB 2 at its slowest)
RUN_TIMEOUT = 1800              # one runner invocation on the phone
RUNNERS = {".litertlm": "litert_lm_main", ".tflite": "benchmark_model"}
BACKENDS = ("cpu", "gpu")


@dataclasses.dataclass(frozen=True)
class AdbPlan:
    artifact: Path                 # the artifact as given (file or folder)
    model: Path                    # the file pushed: *.litertlm or *.tflite
    runner: Path                   # the runner binary pushed
    serial: str | None = None
    backend: str = "cpu"
    threads: int = 4
    taskset: str | None = "f0"
    runs: int = 3
    prompt_lengths: tuple[int, ...] = (128, 512)
    decode_tokens: int = 128
    remote_dir: str = REMOTE_DIR   # this run's own folder on the phone (two runs on one phone never share one)

    @property
    def tool(self) -> str:
        return RUNNERS[self.model.suffix]

    def adb(self, *args: str) -> list[str]:
        return ["adb", *(["-s", self.serial] if self.serial else []), *args]

    def remote(self, name: str) -> str:
        return f"{self.remote_dir}/{name}"

    def runner_argv(self, prompt_length: int | None = None, signature: str | None = None) -> list[str]:
        """The runner's command line on the phone (one prompt length for litert_lm_main, one signature for
        benchmark_model)."""
        pin = ["taskset", self.taskset] if self.taskset else []
        exe = self.remote(self.runner.name)
        if self.tool == "litert_lm_main":
            argv = [exe, f"--backend={self.backend}", f"--model_path={self.remote(self.model.name)}", "--benchmark",
                    f"--benchmark_prefill_tokens={prompt_length}", f"--benchmark_decode_tokens={self.decode_tokens}",
                    "--async=false", "--report_peak_memory_footprint"]
            if self.backend == "cpu":
                argv.append(f"--num_cpu_threads={self.threads}")
        else:
            argv = [exe, f"--graph={self.remote(self.model.name)}", f"--signature_to_run_for={signature}",
                    f"--num_threads={self.threads}", f"--num_runs={self.runs}", "--warmup_runs=1",
                    "--report_peak_memory_footprint=true"]
            if self.backend == "gpu":
                argv.append("--use_gpu=true")
        return pin + argv

    def shell_line(self, argv: list[str], log: str) -> str:
        return f"{shlex.join(argv)} > {shlex.quote(self.remote(log))} 2>&1"


def model_file(artifact: Path) -> Path:
    """The file a runner loads: the artifact itself (.litertlm / .tflite) or the one inside its folder."""
    if artifact.is_file():
        if artifact.suffix not in RUNNERS:
            raise ValueError(f"{artifact}: adb profiling runs .litertlm (litert_lm_main) or .tflite "
                             f"(benchmark_model) files")
        return artifact
    found = sorted(artifact.glob("*.litertlm")) or sorted(artifact.glob("*.tflite"))
    if not found:
        raise FileNotFoundError(f"{artifact}: no .litertlm or .tflite file to profile over adb "
                                f"(ONNX artifacts are profiled with --device host)")
    return found[0]


def make_plan(artifact, runner, *, serial=None, backend="cpu", threads=None, taskset="f0", runs=3,
              prompt_lengths=(128, 512), decode_tokens=128) -> AdbPlan:
    artifact = Path(artifact)
    if not artifact.exists():
        raise FileNotFoundError(f"{artifact}: no such file or folder")
    model = model_file(artifact)
    if runner is None:
        raise ValueError(f"--runner: name the {RUNNERS[model.suffix]} binary to push (built for the phone's ABI)")
    runner = Path(runner)
    if not runner.is_file():
        raise FileNotFoundError(f"--runner {runner}: no such file")
    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend}: expected one of {', '.join(BACKENDS)}")
    if serial is not None and not re.fullmatch(r"[\w.:-]+", serial):
        raise ValueError(f"--device adb:{serial}: not a device serial (letters, digits, '.', ':', '-', '_')")
    lengths = tuple(sorted({int(n) for n in prompt_lengths}))
    if not lengths or lengths[0] < 1 or int(runs) < 1 or int(decode_tokens) < 1 or (threads is not None and threads < 1):
        raise ValueError("--prompt-lengths, --runs, --decode-tokens and --threads must be positive")
    if taskset not in (None, "", "none") and not re.fullmatch(r"[0-9a-fA-F]+", taskset):
        raise ValueError(f"--taskset {taskset}: expected a hexadecimal CPU mask or none")
    return AdbPlan(artifact, model, runner, serial, backend, int(threads or 4),
                   None if taskset in (None, "", "none") else taskset, int(runs), lengths, int(decode_tokens),
                   f"{REMOTE_DIR}/run-{os.getpid()}-{secrets.token_hex(4)}")


class AdbError(RuntimeError):
    pass


def _run(argv: list[str], check: bool = True, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise AdbError("adb: not found on PATH (install Android SDK platform-tools)") from None
    except subprocess.TimeoutExpired:
        raise AdbError(f"`{shlex.join(argv)}` did not finish in {timeout:.0f} s (the phone or the runner hangs)") \
            from None
    if check and done.returncode != 0:
        raise AdbError(f"`{shlex.join(argv)}` failed (exit {done.returncode}): "
                       f"{(done.stderr or done.stdout).strip()[-400:]}")
    return done


def _signatures(plan: AdbPlan) -> list[str]:
    manifest = plan.model.parent / "manifest.json"
    have = read_json(manifest).get("prefill_lengths") if manifest.exists() else None
    missing = [n for n in plan.prompt_lengths if have is not None and n not in have]
    if missing:
        raise ValueError(f"--prompt-lengths {','.join(map(str, missing))}: {plan.model} has prefill signatures "
                         f"for {have} only")
    return [prefill_signature(n) for n in plan.prompt_lengths] + [DECODE_SIGNATURE]


def _execute(plan: AdbPlan, argv: list[str], log: str, local: Path, parse):
    """Run one runner invocation on the phone, pull its log, parse it (a failed run's log names its error)."""
    done = _run(plan.adb("shell", plan.shell_line(argv, log)), check=False, timeout=RUN_TIMEOUT)
    _run(plan.adb("pull", plan.remote(log), str(local / log)))
    text = (local / log).read_text(errors="replace")
    try:
        return parse(text)
    except ValueError as e:
        status = f" (exit {done.returncode})" if done.returncode else ""
        raise ValueError(f"{e} [on the phone{status}: {shlex.join(argv)}]") from None


def profile_adb(plan: AdbPlan, on_run=None) -> dict:
    """Profile over adb -> the same result dict as devices.host.profile_host."""
    model = _run(plan.adb("shell", "getprop ro.product.model")).stdout.strip() or "unknown"
    signatures = _signatures(plan) if plan.tool == "benchmark_model" else None
    runs = []
    with tempfile.TemporaryDirectory(prefix="gemma-export-adb-") as tmp:
        local = Path(tmp)
        try:            # push, run, pull: whatever fails (or a timeout, Ctrl-C, SIGTERM), the phone is cleaned
            _run(plan.adb("shell", f"mkdir -p {shlex.quote(plan.remote_dir)}"))
            for f in (plan.model, plan.runner):
                _run(plan.adb("push", str(f), plan.remote(f.name)),
                     timeout=PUSH_TIMEOUT[0] + f.stat().st_size / PUSH_TIMEOUT[1])
            _run(plan.adb("shell", f"chmod 755 {shlex.quote(plan.remote(plan.runner.name))}"))
            if signatures is None:
                for r in range(plan.runs):
                    parsed = {n: _execute(plan, plan.runner_argv(prompt_length=n), f"run{r + 1}_prefill{n}.log",
                                          local, parse_litert_lm_benchmark) for n in plan.prompt_lengths}
                    runs.append(_litert_lm_run(parsed, plan.prompt_lengths[0]))
                    if on_run:
                        on_run(r, runs[-1])
            else:
                parsed = {s: _execute(plan, plan.runner_argv(signature=s), f"{s}.log", local, parse_benchmark_model)
                          for s in signatures}
                runs.append(_benchmark_model_run(parsed, plan.prompt_lengths))
        finally:
            with contextlib.suppress(AdbError):
                _run(plan.adb("shell", f"rm -rf {shlex.quote(plan.remote_dir)}"), check=False)
    device = {"name": f"adb:{plan.serial}" if plan.serial else "adb", "model": model, "backend": plan.backend,
              "threads": plan.threads, "taskset": plan.taskset or "none"}
    settings = {"runner": plan.tool, "backend": plan.backend, "threads": plan.threads, "runs": plan.runs,
                "prompt_lengths": list(plan.prompt_lengths), "decode_tokens": plan.decode_tokens}
    return summarize(runs, artifact=plan.artifact, device=device, settings=settings)


def _rate(turns) -> float:
    return sum(t[0] for t in turns) / sum(t[1] for t in turns)


def _litert_lm_run(parsed: dict, first: int) -> dict:
    """One run of litert_lm_main per prompt length -> a profile run. Time to first token as LiteRT-LM defines it
    (its own figure when printed; else the first prefill turn plus one decode step)."""
    head = parsed[first]
    ttft_s = head["ttft_s"] or head["prefill"][0][1] + head["decode"][0][1] / head["decode"][0][0]
    peaks = [p["peak_mb"] for p in parsed.values() if p["peak_mb"] is not None]
    return {"ttft_ms": round(ttft_s * 1e3, 3),
            "prefill_tok_s": {str(n): round(_rate(p["prefill"]), 3) for n, p in parsed.items()},
            "decode_tok_s": round(_rate(head["decode"]), 3), "peak_rss_mb": max(peaks) if peaks else None,
            "load_s": head["load_s"]}


def _benchmark_model_run(parsed: dict, lengths) -> dict:
    """benchmark_model's averages per signature -> a profile run: prefill N tokens per prefill_N call, one token
    per decode call; time to first token = the shortest prefill call + one decode call; load = decode's Init."""
    decode_us = parsed["decode"]["inference_avg_us"]
    peaks = [p["peak_mb"] for p in parsed.values() if p["peak_mb"] is not None]
    return {"ttft_ms": round((parsed[f"prefill_{lengths[0]}"]["inference_avg_us"] + decode_us) / 1e3, 3),
            "prefill_tok_s": {str(n): round(n * 1e6 / parsed[f"prefill_{n}"]["inference_avg_us"], 3)
                              for n in lengths},
            "decode_tok_s": round(1e6 / decode_us, 3), "peak_rss_mb": max(peaks) if peaks else None,
            "load_s": round(parsed["decode"]["init_us"] / 1e6, 3)}
