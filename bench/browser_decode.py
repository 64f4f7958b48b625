"""Causal ONNX folders' prefill and decode in headless Chromium beside native onnxruntime on the same graphs, one run:
`python -m bench.browser_decode [LABEL=]FOLDER... [--prompt 600] [--steps 32] [--threads 1,2] [--webgpu LABEL,...]`.

Every folder runs the same prompt through the same loop (the prompt in one call, then one greedy token per call, the
last position's logits only, each call's caches fed back; bench.web_graphs says how each graph's first caches look):
in the browser onnxruntime-web's wasm-only build (tools/web/pages/ort_generate.mjs), natively onnxruntime's CPU EP
(bench.web_decode.native). Folders: ours (`--target web`) and onnxruntime-genai's builder output. The page's load
time is the session's creation from the served URL (fetching the graph and its weights included); bytes fetched are
what the local server sent. A run that fails records its error verbatim. `--webgpu`: those folders also on
onnxruntime-web's WebGPU build (SwiftShader on a CPU machine: whether it runs, with a short prompt). The prompt is
export.validate's validation text in the first folder's tokenizer. Wall times on a shared machine: its load is
recorded with them. Results: bench/results/browser_decode.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import onnxruntime as ort

from bench.browser import BrowserError, Chromium
from bench.web_decode import native
from bench.web_graphs import graph_of
from export.validate import validation_text
from runtime_py.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parent
NATIVE, WASM, WEBGPU = "native", "Chromium wasm", "Chromium WebGPU"


def prompt_ids(folder: Path, length: int) -> list[int]:
    """The validation text in the folder's tokenizer, cut to `length` tokens."""
    ids = Tokenizer.from_file(folder / "tokenizer.model").encode(validation_text())
    if len(ids) < length:
        raise ValueError(f"--prompt {length}: the validation text has {len(ids)} tokens")
    return ids[:length]


def _timed(fn) -> dict:
    """fn()'s result with the machine's load beside it, or its error verbatim."""
    load = os.getloadavg()[0]
    try:
        run = fn()
    except Exception as e:              # noqa: BLE001  (a page error or any of onnxruntime's: recorded, the run goes on)
        error, _, console = str(e).partition("\nconsole:\n")
        return {"error": error, **({"console": console} if console else {}), "load_1min": load}
    return {**run, "load_1min": load}


def run_entry(browser: Chromium, folder: Path, ids: list[int], steps: int, threads: list[int],
              webgpu: tuple[int, int] | None) -> dict:
    graph = graph_of(folder)
    page = {"file": graph["file"], "external": graph["external"], "caches": graph["caches"]}
    runs = {}
    for n in threads:
        runs[f"{NATIVE} {n}"] = _timed(lambda: native(folder / graph["file"], ids, steps - 1, n, graph["caches"]))
        runs[f"{WASM} {n}"] = _timed(lambda: {
            **browser.run("/pages/ort_generate.mjs", {**page, "ids": ids, "steps": steps, "ep": "wasm", "threads": n},
                          mounts={"model": folder}, timeout=3600), "bytes_fetched": browser.bytes})
    if webgpu:
        length, gpu_steps = webgpu
        runs[WEBGPU] = _timed(lambda: {**browser.run("/pages/ort_generate.mjs", {
            **page, "ids": ids[:length], "steps": gpu_steps, "ep": "webgpu"}, mounts={"model": folder}, timeout=600),
            "bytes_fetched": browser.bytes})
        runs[WEBGPU]["prompt_tokens"] = length
    for run in runs.values():
        if "tokens" in run:
            run["prefill_tok_s"] = run.get("prompt_tokens", len(ids)) / run["prefill_ms"] * 1e3
            run["decode_tok_s"] = (len(run["tokens"]) - 1) / run["decode_ms"] * 1e3
    reference = next((r["tokens"] for r in runs.values() if "tokens" in r), None)
    for run in runs.values():
        if "tokens" in run and run is not runs.get(WEBGPU):
            run["same_tokens_as_first"] = run["tokens"] == reference
    return {"folder": str(folder), **{k: graph[k] for k in ("maker", "file", "bytes")}, "runs": runs}


def _ratios(result: dict) -> None:
    """Each later entry's speed against the first (ours) on the same threads: first / entry, decode and prefill."""
    first = next(iter(result["entries"].values()))["runs"]
    for entry in list(result["entries"].values())[1:]:
        for name, run in entry["runs"].items():
            ours = first.get(name, {})
            if "decode_tok_s" in run and "decode_tok_s" in ours:
                run["first_over_this"] = {k: ours[k] / run[k] for k in ("decode_tok_s", "prefill_tok_s")}


def table(result: dict) -> list[str]:
    """Markdown rows: entry, MB fetched, load s, prefill tok/s, decode tok/s, native decode tok/s, native/wasm."""
    rows = ["| entry | threads | MB fetched | load s | prefill tok/s | decode tok/s | native decode tok/s | native / wasm |",
            "|---|---|---|---|---|---|---|---|"]
    for label, entry in result["entries"].items():
        for name, run in entry["runs"].items():
            if name.startswith(NATIVE):
                continue
            n = name.split()[-1] if name.startswith(WASM) else f"webgpu, {run['prompt_tokens']}-token prompt"
            nat = entry["runs"].get(f"{NATIVE} {n}", {})
            native_s = f"{nat['decode_tok_s']:.1f}" if "decode_tok_s" in nat else "fails" if nat else ""
            if "error" in run:
                rows.append(f"| {label} | {n} | | | fails: {run['error'][:400]} | | {native_s} | |")
                continue
            ratio = f"{nat['decode_tok_s'] / run['decode_tok_s']:.1f}" if "decode_tok_s" in nat else ""
            rows.append(f"| {label} | {n} | {run.get('bytes_fetched', 0) / 1e6:.1f} | {run['create_ms'] / 1e3:.1f} | "
                        f"{run['prefill_tok_s']:.1f} | {run['decode_tok_s']:.2f} | {native_s} | {ratio} |")
    first = next(iter(result["entries"]))
    for label, entry in list(result["entries"].items())[1:]:
        for name, run in entry["runs"].items():
            if "first_over_this" in run:
                r = run["first_over_this"]
                rows.append(f"{first} / {label}, {name}: decode {r['decode_tok_s']:.2f}x, prefill {r['prefill_tok_s']:.2f}x")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.browser_decode", description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", help="[LABEL=]FOLDER: ours (--target web) or onnxruntime-genai's output")
    ap.add_argument("--prompt", type=int, default=600, help="prompt tokens")
    ap.add_argument("--steps", type=int, default=32, help="greedy tokens (the first comes from the prompt's call)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--webgpu", default="", help="LABEL,...: these folders also on WebGPU (16-token prompt, 2 tokens)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "browser_decode.json")
    args = ap.parse_args(argv)
    entries = {}
    for spec in args.folders:
        label, _, path = spec.rpartition("=")
        entries[label or Path(path).name] = Path(path).resolve()
    tokenized = [f for f in entries.values() if (f / "tokenizer.model").exists()]
    if not tokenized:
        raise ValueError("no folder has tokenizer.model (the prompt's tokenizer): list one of ours first")
    ids = prompt_ids(tokenized[0], args.prompt)
    threads = [int(n) for n in args.threads.split(",") if n]         # "": WebGPU tries only
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "prompt_tokens": len(ids),
              "steps": args.steps, "load_before": os.getloadavg(), "onnxruntime": ort.__version__, "entries": {}}
    with Chromium() as browser:
        result["chromium"] = browser.version
        for label, folder in entries.items():
            result["entries"][label] = run_entry(browser, folder, ids, args.steps, threads,
                                                 (16, 2) if label in args.webgpu.split(",") else None)
            print(json.dumps({label: {k: {m: v for m, v in r.items() if m != "tokens"}
                                      for k, r in result["entries"][label]["runs"].items()}}), flush=True)
    result["load_after"] = os.getloadavg()
    _ratios(result)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("\n".join(table(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
