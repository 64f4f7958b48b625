"""Decode speed of a `--target web` folder on onnxruntime-web's wasm build (Node: tools/web/ortweb_run.mjs, the wasm
code the browser's plain wasm bundle runs) against onnxruntime (Python, native) on the same graph, driven alike (the
prompt in one call with num_logits_to_keep 1, then greedy one-token steps, caches growing from empty as
transformers.js grows them): `python -m bench.web_decode FOLDER [--prompt-tokens 128] [--steps 32]`.
Results: bench/results/web_decode.json (appended per folder)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from runtime_py.contract import NUM_LOGITS_TO_KEEP
from runtime_py.files import read_json

WEB = Path(__file__).resolve().parents[1] / "tools" / "web"


FLOATS = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def native(model: Path, ids: list[int], steps: int, threads: int, caches: dict | None = None) -> dict:
    """The prompt in one call, then `steps` greedy one-token calls, each call's present caches fed back as the next
    past; `caches`: {past name: [kv heads, length, head size]} of the first call (default: empty, as transformers.js
    starts them). Only the inputs the graph declares are fed."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    s = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    kv = [i for i in s.get_inputs() if i.name.startswith("past_key_values.")]
    declared = {i.name for i in s.get_inputs()}
    past = {i.name: np.zeros((1, *(caches or {}).get(i.name, (i.shape[1], 0, i.shape[3]))), FLOATS[i.type])
            for i in kv}
    names = [o.name for o in s.get_outputs()]
    tokens, feed_ids, t0 = [], ids, time.perf_counter()
    for step in range(steps + 1):
        if step == 1:
            prefill, t0 = time.perf_counter() - t0, time.perf_counter()
        total = len(ids) + step
        feeds = {"input_ids": np.array([feed_ids]), NUM_LOGITS_TO_KEEP: np.array(1),
                 "attention_mask": np.ones((1, total), np.int64), **past}
        out = dict(zip(names, s.run(None, {k: v for k, v in feeds.items() if k in declared})))
        past = {i.name: out[i.name.replace("past_key_values.", "present.")] for i in kv}
        tokens.append(int(out["logits"][0, -1].argmax()))
        feed_ids = tokens[-1:]
    return {"tokens": tokens, "prefill_ms": prefill * 1e3, "decode_ms": (time.perf_counter() - t0) * 1e3}


def wasm(model: Path, ids: list[int], steps: int, threads: int) -> dict:
    run = subprocess.run(["node", "ortweb_run.mjs", str(model), str(threads), str(steps), "1"], cwd=WEB,
                         input=json.dumps({"ids": ids}), capture_output=True, text=True, timeout=7200, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.web_decode", description=__doc__.split("\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--out", default="bench/results/web_decode.json")
    args = ap.parse_args(argv)
    folder = Path(args.folder)
    manifest = read_json(folder / "manifest.json")
    model = folder / manifest["model_file"]
    import runtime_py
    from export.validate import validation_text
    ids = runtime_py.load(folder).tokenizer.encode(validation_text())[:args.prompt_tokens]
    rows = []
    for threads in map(int, args.threads.split(",")):
        for name, fn in (("onnxruntime-web wasm (Node)", wasm), ("onnxruntime native (Python)", native)):
            r = fn(model, ids, args.steps, threads)
            row = {"runtime": name, "threads": threads, "prefill_tokens": len(ids), "prefill_s": r["prefill_ms"] / 1e3,
                   "decode_tokens_per_s": args.steps / (r["decode_ms"] / 1e3), "tokens": r["tokens"]}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "tokens"}), flush=True)
    same = all(r["tokens"] == rows[0]["tokens"] for r in rows)
    entry = {"folder": str(folder), "recipe": manifest["recipe"], "model_file": manifest["model_file"],
             "bytes": model.stat().st_size, "date": time.strftime("%Y-%m-%d %H:%M"), "load_average": list(os.getloadavg()),
             "steps": args.steps, "same_greedy_tokens": same, "rows": rows}
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(previous + [entry], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
