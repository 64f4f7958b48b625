"""Where our ONNX decode step spends its time: `python -m bench.profile_onnx ARTIFACT [--threads 2] [--tokens 64]`.

Prints (1) runtime_py's decode rate (stepper + greedy pick), (2) the same steps with onnxruntime's profiler on,
summed per operator type, so the graph's share (MatMulNBits, attention, norms, the LM head) and the per-token
cost outside it can be told apart: Python (the loop, bindings, the pick) and onnxruntime's own work per call
around the graph's execution (run setup, allocation planning; what the memory pattern cost, README: Benchmarks).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time

import numpy as np

import runtime_py
from devices.host import prompt_ids
from runtime_py.onnx_backend import OnnxBackend


def decode_rate(backend, prompt: list[int], n: int) -> float:
    step = backend.stepper(len(prompt) + n + 1)
    logits, pos = step(prompt, 0), len(prompt)
    t = time.perf_counter()
    for _ in range(n):
        logits = step([int(np.argmax(logits))], pos)
        pos += 1
    return n / (time.perf_counter() - t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=128)
    args = ap.parse_args(argv)
    model = runtime_py.load(args.artifact, threads=args.threads)
    prompt = prompt_ids(model.backend.vocab_size, args.prompt)
    decode_rate(model.backend, prompt[:16], 8)              # warm-up
    rate = decode_rate(model.backend, prompt, args.tokens)
    print(f"decode {rate:.1f} tok/s ({1e3 / rate:.2f} ms/token)")

    prof = OnnxBackend(model.backend.folder, args.threads, profile_prefix=os.path.join(tempfile.mkdtemp(), "ort"))
    step = prof.stepper(len(prompt) + args.tokens + 1)
    logits, pos = step(prompt, 0), len(prompt)
    calls, run = [], prof.session.run_with_iobinding

    def timed_run(*a):
        t0 = time.perf_counter()
        run(*a)
        calls.append(time.perf_counter() - t0)
    prof.session.run_with_iobinding = timed_run
    t = time.perf_counter()
    for _ in range(args.tokens):
        logits = step([int(np.argmax(logits))], pos)
        pos += 1
    wall = time.perf_counter() - t
    events = json.load(open(prof.session.end_profiling()))
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"][1:]   # skip the prefill
    ops, heads = collections.Counter(), collections.Counter()
    start = runs[0]["ts"] if runs else 0                    # decode steps only: the prefill's kernels are left out
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            ops[e["args"].get("op_name", "?")] += e["dur"]
            if "lm_head" in e["name"] and e["args"].get("op_name") == "MatMulNBits":
                heads[e["args"].get("op_name", "?")] += e["dur"]
    steps = len(runs) or 1
    in_graph = sum(e["dur"] for e in runs) / steps / 1e3
    in_call = sum(calls) / len(calls) * 1e3 if calls else in_graph
    print(f"profiled: {wall / args.tokens * 1e3:.2f} ms/token wall, {in_graph:.2f} ms running the graph, "
          f"{in_call - in_graph:.2f} ms in onnxruntime's call around it, "
          f"{wall / args.tokens * 1e3 - in_call:.2f} ms in Python (loop, bindings, pick)")
    total = sum(ops.values())
    for op, us in ops.most_common(15):
        print(f"  {op:32} {us / steps / 1e3:7.3f} ms/step  {100 * us / total:5.1f} %")
    for op, us in heads.items():
        print(f"  of which the LM head {us / steps / 1e3:.3f} ms/step  {100 * us / total:.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
