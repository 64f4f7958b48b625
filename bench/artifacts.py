"""Build-once cache of the benchmarked artifacts under bench/cache/ (git-ignored).

Each artifact is built by `python -m bench.builders` in a child process (its wall time and peak RSS, children
included, are the export time and export peak RSS), into a temporary folder renamed into place, with
`build.json` beside it: {export_s, export_peak_rss_mb, command}. Reruns reuse it. Our own artifacts are keyed by
the git trees of the code that builds them (a committed change to it rebuilds them; uncommitted ones mark the key dirty).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .builders import BUILDERS, ROOT

CACHE = ROOT / "bench" / "cache"
LITERTLM_CACHE = CACHE / "litertlm-xnnpack"     # LiteRT-LM's packed weights, kept across runs
MODEL_SUFFIXES = (".onnx", ".onnx.data", ".tflite", ".litertlm", ".gguf", ".safetensors")


def export_key(target: str) -> str:
    """Our artifacts' cache key: the git trees of what builds a `target` artifact (models, quantization, the
    converter of the target's format and the shared converter and CLI files), hashed; "-dirty" with uncommitted
    changes there."""
    from export.targets import TARGETS
    paths = ["export/models", "export/quantize", f"export/converters/{TARGETS[target].format}",
             "export/converters/artifact.py", "export/converters/hf_tokenizer.py", "export/cli.py", "export/targets.py"]

    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    trees = git("rev-parse", *[f"HEAD:{p}" for p in paths])
    key = hashlib.sha1(trees.encode()).hexdigest()[:10] if trees else "untracked"
    return key + ("-dirty" if git("status", "--porcelain", "--", *paths) else "")


def folder_for(name: str) -> Path:
    """bench/cache/<name>, and for ours (ours-<target>-<recipe>) <name>@<export_key(target)>."""
    return CACHE / (f"{name}@{export_key(name.split('-')[1])}" if name.startswith("ours-") else name)


def is_built(name: str) -> bool:
    out = folder_for(name)
    return out.exists() and (out.parent / (out.name + ".build.json")).exists()


def last_failure(name: str) -> str | None:
    """The error of the last failed build of `name` (same cache key), if any."""
    out = folder_for(name)
    f = out.parent / (out.name + ".failed.json")
    return json.loads(f.read_text())["error"] if f.exists() else None


def model_bytes(path: Path) -> int:
    """Bytes of the model files a runtime loads (weights and graph; tokenizers and configs excluded)."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files if p.name.endswith(MODEL_SUFFIXES))


def run_measured(cmd: list[str], log: Path) -> tuple[int, float, float]:
    """Run `cmd` (output to `log`) -> (exit code, wall seconds, peak RSS in MB of it and its children)."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t0, usage.ru_maxrss / 1024


def failure(log: Path) -> str:
    """The reason a build failed, from its log: the CLI's "error:" line, else the last exception line."""
    lines = [l.strip() for l in log.read_text(errors="replace").splitlines() if l.strip()]
    said = [l for l in lines if l.lower().startswith("error:")]
    raised = [l for l in lines if "Error" in l.split(":")[0]]
    return (said[0] if said else raised[-1] if raised else " | ".join(lines[-2:]))[:300]


def ensure(name: str, rebuild: bool = False, log=print) -> dict:
    """The artifact `name` (built if missing): {name, path, export_s, export_peak_rss_mb, bytes} or
    {name, error} when its build fails."""
    out, meta = folder_for(name), None
    record = out.parent / (out.name + ".build.json")
    if record.exists() and out.exists() and not rebuild:
        meta = json.loads(record.read_text())
    else:
        deps = {}
        for dep in BUILDERS[name][1]:
            d = ensure(dep, log=log)
            if "error" in d:
                return {"name": name, "error": f"needs {dep}: {d['error']}"}
            deps[dep] = d["path"]
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / (out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [sys.executable, "-m", "bench.builders", name, str(tmp), json.dumps(deps)]
        log(f"building {name} -> {out} ...")
        code, secs, rss = run_measured(cmd, out.parent / (out.name + ".log"))
        if code != 0:
            error = f"build failed (exit {code}): {failure(out.parent / (out.name + '.log'))}"
            (out.parent / (out.name + ".failed.json")).write_text(json.dumps({"error": error}) + "\n")
            return {"name": name, "error": error}
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        meta = {"export_s": round(secs, 1), "export_peak_rss_mb": round(rss), "command": cmd[2:4]}
        record.write_text(json.dumps(meta, indent=2) + "\n")
        log(f"built {name} in {secs:.0f} s, peak RSS {rss:.0f} MB")
    return {"name": name, "path": str(out), "bytes": model_bytes(out), **meta}
