"""Benchmark gemma-export's artifacts against peer runtimes on the bundled Gemma 3 270M, in one session.

    python -m bench.run [--threads 2] [--rounds 3 | --quick] [--only KEY,KEY] [--rebuild]

Every runtime runs in its own child process (bench.worker), the same thread count for all, interleaved
(A B C ... A B C ...); medians over the rounds. Writes bench/results/latest.json and latest.png.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from devices import measure

from . import artifacts, report
from .builders import ROOT, gguf_path
from .entries import ENTRIES

WHEEL_DIRS = [ROOT / "bench" / "cache" / "wheels", Path("/work/cache/wheels")]
LLAMA_CPP = "llama_cpp_python-0.3.36"


def ensure_llama_cpp() -> str | None:
    """None when llama_cpp imports (installing the cached wheel if needed), else why not."""
    if importlib.util.find_spec("llama_cpp"):
        return None
    wheels = [w for d in WHEEL_DIRS for w in sorted(d.glob(f"{LLAMA_CPP}-*.whl"))]
    if not wheels:
        return (f"llama-cpp-python is not installed and no cached {LLAMA_CPP} wheel in "
                f"{' or '.join(map(str, WHEEL_DIRS))} (see README, Benchmarks)")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", str(wheels[0]), "diskcache==5.6.3"],
                          capture_output=True, text=True)
    return None if done.returncode == 0 else f"pip install {wheels[0].name} failed: {done.stderr.strip()[-300:]}"


def prompts(tokenizer_path: Path, lengths: list[int]) -> dict:
    """Token-id prompts of exactly each length (<bos> + text ids), from different parts of the bundled text so no
    runtime can reuse a cached prefix; the same ids for every runtime (LiteRT-LM, text-only, gets their text and
    pads/cuts to the same count)."""
    from runtime_py.tokenizer import Tokenizer
    tok = Tokenizer.from_file(tokenizer_path)
    text = (ROOT / "export" / "data" / "validation.txt").read_text(encoding="utf-8")
    body = tok.encode(text, add_bos=False)
    while len(body) < 4 * (max(lengths) + 64):
        body = body + body

    def cut(n: int, at: int) -> tuple[list[int], str]:
        ids = [tok.bos_id] + body[at:at + n - 1]
        return ids, tok.decode(ids[1:])

    spec = {"prompts": {}, "texts": {}}
    spec["warmup_ids"], spec["warmup_text"] = cut(32, 0)
    at = 200
    for n in lengths:
        spec["prompts"][str(n)], spec["texts"][str(n)] = cut(n, at)
        at += n + 97
    return spec


def run_worker(entry, path: str, spec_file: Path, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "bench.worker", entry.runner, path, str(spec_file)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [l for l in done.stdout.strip().splitlines() if l.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        return {"error": f"exit {done.returncode}: {tail}"}
    return json.loads(lines[-1])


def main(argv=None) -> int:
    load_before = os.getloadavg()
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one round")
    ap.add_argument("--only", default="", help="comma-separated entry keys (default: all): "
                    + ", ".join(e.key for e in ENTRIES))
    ap.add_argument("--lengths", default="128,512", help="prompt lengths in tokens")
    ap.add_argument("--decode", type=int, default=128, help="decode tokens")
    ap.add_argument("--rebuild", action="store_true", help="rebuild our artifacts (peers' stay cached)")
    ap.add_argument("--no-build", action="store_true", help="skip entries whose artifact is not built yet")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="results folder")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per worker run")
    ap.add_argument("--readme", action="store_true", help="also put the table in README.md (Benchmarks)")
    args = ap.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    lengths = [int(x) for x in args.lengths.split(",")]
    keys = set(args.only.split(",")) - {""}
    entries = [e for e in ENTRIES if not keys or e.key in keys]
    say = lambda *a: print(*a, file=sys.stderr, flush=True)

    built = {}
    for e in entries:
        if e.artifact == "gguf":
            g = gguf_path()
            built[e.key] = {"path": str(g), "bytes": g.stat().st_size, "export_s": None, "export_peak_rss_mb": None,
                            "note": "the bundled GGUF, run as is (no export)"}
        elif args.no_build and not artifacts.is_built(e.artifact):
            built[e.key] = {"error": artifacts.last_failure(e.artifact)
                            or f"{e.artifact} is not built (run without --no-build to build it)"}
        else:
            built[e.key] = artifacts.ensure(e.artifact, rebuild=args.rebuild and e.ours, log=say)
        if e.runner == "llama.cpp" and "error" not in built[e.key]:
            why = ensure_llama_cpp()
            if why:
                built[e.key] = {"error": why}
    tok_src = artifacts.ensure("ours-onnx-int4", log=say)
    spec = {"threads": args.threads, "decode_tokens": args.decode, **prompts(Path(tok_src["path"]) / "tokenizer.model",
                                                                               lengths)}
    spec["cache_dir"] = str(artifacts.LITERTLM_CACHE)
    Path(spec["cache_dir"]).mkdir(parents=True, exist_ok=True)
    spec_file = artifacts.CACHE / "spec.json"
    spec_file.write_text(json.dumps(spec))

    live = [e for e in entries if "error" not in built[e.key]]
    for e in entries:
        if e not in live:
            say(f"{e.key}: unavailable: {built[e.key]['error']}")
    samples = {e.key: [] for e in live}
    bandwidth = []
    for r in range(rounds):
        bandwidth.append(measure.bandwidth_gb_s(args.threads))
        say(f"round {r + 1}/{rounds}: bandwidth {bandwidth[-1]} GB/s")
        for e in live:
            res = run_worker(e, built[e.key]["path"], spec_file, args.timeout)
            samples[e.key].append(res)
            say(f"  {e.key}: " + (res["error"] if "error" in res else
                                  "  ".join(f"L{k}: ttft {v['ttft_s']:.3f}s pre {v['prefill_tok_s']:.0f} "
                                            f"dec {v['decode_tok_s']:.1f}" for k, v in res["runs"].items())))
    bw = {k: statistics.median(b[k] for b in bandwidth) for k in bandwidth[0]}
    results = report.summarize(entries, built, samples, lengths, bw, {
        "date": datetime.date.today().isoformat(), "machine": measure.describe(args.threads, load_before),
        "threads": args.threads, "rounds": rounds, "decode_tokens": args.decode, "prompt_lengths": lengths},
        json.loads((Path(tok_src["path"]) / "manifest.json").read_text())["config"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    report.chart(results, out / "latest.png")
    print(report.table(results))
    if args.readme:
        readme = ROOT / "README.md"
        readme.write_text(report.into_readme(readme.read_text(encoding="utf-8"), results), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
