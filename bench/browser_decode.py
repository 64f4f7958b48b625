"""A causal `--target web` folder's prefill and decode in headless Chromium against native onnxruntime on the same
graph: `python -m bench.browser_decode FOLDER [--prompt 600] [--steps 32] [--threads 1,2]`.

Both run the graph as transformers.js feeds it (caches empty at first and grown by each call, the whole prompt in one
call, then one token per call, the last position's logits only): in the browser onnxruntime-web's wasm-only build
(tools/web/pages/ort_generate.mjs), natively onnxruntime's CPU EP (Python: bench.web_decode.native, whose bench runs
the same loop on wasm in Node). The prompt is export.validate's validation text in the folder's tokenizer, cut to
`--prompt` tokens. One run each, wall time, on the shared machine: its load is recorded with them.
Results: bench/results/browser_decode.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import onnxruntime as ort

from bench.browser import Chromium
from bench.web_decode import native
from export.validate import validation_text
from runtime_py.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parent


def prompt_ids(folder: Path, length: int) -> list[int]:
    """The validation text in the folder's tokenizer, cut to `length` tokens."""
    ids = Tokenizer.from_file(folder / "tokenizer.model").encode(validation_text())
    if len(ids) < length:
        raise ValueError(f"--prompt {length}: the validation text has {len(ids)} tokens")
    return ids[:length]


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
            result["runs"][f"native {threads} thread(s)"] = {**native(folder / file, ids, args.steps - 1, threads),
                                                             "decode_steps": args.steps - 1}
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
