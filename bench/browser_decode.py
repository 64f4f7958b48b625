"""A causal `--target web` folder's prefill and decode in headless Chromium against native onnxruntime on the same
graph: `python -m bench.browser_decode FOLDER [--prompt 600] [--steps 32] [--threads 1,2]`.

Both run the graph as transformers.js feeds it (caches empty at first and grown by each call, the whole prompt in one
call, then one token per call, the last position's logits only): in the browser onnxruntime-web's wasm-only build
(tools/web/pages/ort_generate.mjs), natively onnxruntime's CPU EP (Python). The prompt is export/data/validation.txt
in the folder's tokenizer, repeated and cut to `--prompt` tokens. One run each, wall time, on the shared machine:
the machine's load is recorded with them. Results: bench/results/browser_decode.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.browser import Chromium
from runtime_py.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parent
TEXT = ROOT.parent / "export" / "data" / "validation.txt"


def native_greedy(path, ids: list[int], steps: int, threads: int | None = None) -> dict:
    """{tokens, create_ms, prefill_ms, decode_ms}: greedy tokens from onnxruntime (Python, CPU EP) on the graph at
    `path`, fed as transformers.js feeds it."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    t0 = time.perf_counter()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    create = time.perf_counter() - t0
    inputs = {i.name: i for i in session.get_inputs()}
    past = {k: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float16 if "float16" in i.type else np.float32)
            for k, i in inputs.items() if k.startswith("past_key_values.")}
    keep = {k: np.array(1) for k in ("num_logits_to_keep", "logits_to_keep") if k in inputs}
    names = [o.name for o in session.get_outputs()]
    tokens, feed, length, marks = [], ids, 0, []
    for _ in range(steps):
        t = time.perf_counter()
        length += len(feed)
        out = dict(zip(names, session.run(None, {"input_ids": np.array([feed]),
                                                 "attention_mask": np.ones((1, length), np.int64), **keep, **past})))
        past = {k: out[k.replace("past_key_values.", "present.")] for k in past}
        tokens.append(int(out["logits"][0, -1].argmax()))
        feed = tokens[-1:]
        marks.append(time.perf_counter() - t)
    return {"tokens": tokens, "create_ms": create * 1e3, "prefill_ms": marks[0] * 1e3,
            "decode_ms": sum(marks[1:]) * 1e3, "decode_steps": steps - 1}


def prompt_ids(folder: Path, length: int) -> list[int]:
    tok = Tokenizer.from_file(folder / "tokenizer.model")
    text = tok.encode(TEXT.read_text(), add_bos=False)
    return ([tok.bos_id] + text * (length // max(len(text), 1) + 1))[:length]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.browser_decode", description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--prompt", type=int, default=600, help="prompt tokens")
    ap.add_argument("--steps", type=int, default=32, help="greedy tokens (the first comes from the prompt's call)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "browser_decode.json")
    args = ap.parse_args(argv)
    folder = args.folder.resolve()
    manifest = json.loads((folder / "manifest.json").read_text())
    file = manifest["model_file"]
    ids = prompt_ids(folder, args.prompt)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "folder": str(folder), "file": file,
              "bytes": sum(p.stat().st_size for p in (folder / file).parent.glob(Path(file).name + "*")),
              "prompt_tokens": len(ids), "steps": args.steps, "load_before": os.getloadavg(), "runs": {},
              "onnxruntime": ort.__version__}
    with Chromium() as browser:
        result["chromium"] = browser.version
        for threads in map(int, args.threads.split(",")):
            result["runs"][f"native {threads} thread(s)"] = native_greedy(folder / file, ids, args.steps, threads)
            page = browser.run("/pages/ort_generate.mjs", {
                "file": file, "external": (folder / (file + "_data")).exists(), "ids": ids, "steps": args.steps,
                "ep": "wasm", "threads": threads}, mounts={"model": folder}, timeout=7200)
            result["runs"][f"Chromium wasm {threads} thread(s)"] = {**page, "bytes_fetched": browser.bytes}
    result["load_after"] = os.getloadavg()
    first = next(iter(result["runs"].values()))["tokens"]
    for name, run in result["runs"].items():
        run["same_tokens_as_first"] = run["tokens"] == first
        run["prefill_tok_s"] = len(ids) / run["prefill_ms"] * 1e3
        run["decode_tok_s"] = run["decode_steps"] / run["decode_ms"] * 1e3
        print(f"{name}: create {run['create_ms'] / 1e3:.1f} s, prefill {len(ids)} tokens {run['prefill_ms'] / 1e3:.2f} s,"
              f" decode {run['decode_tok_s']:.2f} tok/s, tokens equal: {run['same_tokens_as_first']}", flush=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
