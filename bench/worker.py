"""One runtime in one child process: `python -m bench.worker RUNNER ARTIFACT SPEC_JSON_FILE`.

Loads the artifact, warms up (a short prompt and a few tokens), then for each prompt in the spec measures time to
first token, prefill and decode rates. Prints one JSON line: {load_s, peak_rss_mb, runs: {prompt_tokens: ...}}.
Peak RSS is this process's high-water mark (VmHWM in /proc/self/status, loading included; getrusage's maxrss
would start from the parent's RSS at fork time, which Linux carries across exec).
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
import tempfile
import time

from devices.measure import peak_rss_mb
from runtime_py.litert_cache import CACHE_ENV

RUNNERS = {"runtime_py": "runtime_py_runner", "llama.cpp": "llamacpp", "onnxruntime-genai": "ogenai",
           "litert-lm": "litertlm", "transformers": "hf_eager"}


def main(argv: list[str]) -> int:
    runner, path, spec = argv[0], argv[1], json.loads(open(argv[2]).read())
    threads, n = spec["threads"], spec["decode_tokens"]
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    mod = importlib.import_module(f"bench.runners.{RUNNERS[runner]}")
    runs = {}
    # Packed weights (XNNPACK's cache): LiteRT-LM's in `cache`, runtime_py's there too (runtime_py.litert_cache),
    # so both pack in the run (a fresh folder, the default) or both map a finished file (spec "cache_dir").
    cache = spec.get("cache_dir") or tempfile.mkdtemp(prefix="bench-")
    os.environ[CACHE_ENV] = cache
    t0 = time.perf_counter()
    if hasattr(mod, "measure"):         # the runtime times itself; one engine per measurement
        mod.measure(path, threads, spec["warmup_text"], len(spec["warmup_ids"]), 8, cache)
        load_s = time.perf_counter() - t0
        for length, text in spec["texts"].items():
            runs[length] = dataclasses.asdict(mod.measure(path, threads, text, int(length), n, cache))
    else:
        from .runners import timed
        stream = mod.open(path, threads)
        load_s = time.perf_counter() - t0
        timed(stream, spec["warmup_ids"], 8)
        for length, ids in spec["prompts"].items():
            runs[length] = dataclasses.asdict(timed(stream, ids, n))
    peak = peak_rss_mb()
    print(json.dumps({"load_s": round(load_s, 2), "peak_rss_mb": round(peak), "runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
