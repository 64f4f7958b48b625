"""Exact speculative decoding (runtime_py.speculative; issue #19) as rows of its own, never in bench.run's
like-for-like ratios: the real 270M's int4 ONNX folder (bench.artifacts "ours-onnx-int4") through runtime_py, plain
greedy against `speculate=K`, on input-grounded chat tasks over self-written inputs (bench/speculative_inputs/: a
Python module to edit, a passage to correct, the same passage to summarize; ~390-410 tokens each), `--new` tokens
each: decode tok/s (wall), CPU seconds per generation (user + sys of the whole process, prefill included), draft
acceptance, and whether the tokens equal plain greedy's (else how many leading tokens do). One process, the model loaded once; every round runs each task with each setting, in
an order rotated from round to round; medians over the rounds, the load average before and after.

  python -m bench.speculative [--k 4,8] [--rounds 3] [--new 128] [--threads 2] [--artifact DIR] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from devices import measure

from . import artifacts

INPUTS = Path(__file__).resolve().parent / "speculative_inputs"
# task -> (the user's instruction, the input file appended to it)
TASKS = {
    "edit-code": ("In the Python code below, rename the function `total_by_customer` to `sum_by_customer` everywhere. "
                  "Reply with the whole edited code and nothing else.\n\n```python\n", "orders.py", "```"),
    "fix-typos": ("Correct the spelling mistakes in the text below and write out the corrected text in full.\n\n",
                  "lighthouse_typos.txt", ""),
    "summarize": ("Summarize the following text in a few sentences.\n\n", "lighthouse.txt", ""),
}


def messages(task: str) -> list[dict]:
    head, name, tail = TASKS[task]
    return [{"role": "user", "content": head + (INPUTS / name).read_text(encoding="utf-8") + tail}]


def one(model, task: str, k: int, new: int) -> dict:
    cpu = time.process_time()
    g = model.chat(messages(task), max_new_tokens=new, speculate=k)
    cpu = time.process_time() - cpu
    row = {"prompt_tokens": g.prompt_tokens, "tokens": len(g.token_ids), "decode_tok_s": g.timings.decode_tok_s,
           "prefill_s": g.timings.prefill_s, "cpu_s": cpu, "token_ids": g.token_ids}
    if g.speculation:
        row.update(g.speculation.as_dict())
    return row


def call_costs(model, lengths=(1, 2, 5, 9), calls: int = 12, at: int = 200) -> dict:
    """CPU ms of one call on T tokens (T = 1: a decode step; more: a verify call), the median of `calls` calls after
    an `at`-token prefix of the summarize task's passage: what a draft must save to pay for itself."""
    seq = model.tokenizer.encode((INPUTS / TASKS["summarize"][1]).read_text(encoding="utf-8"))
    out = {}
    for t in lengths:
        step = model.backend.stepper(at + calls * t)
        step(seq[:at], 0)
        verify, costs = step.verifier(), []
        for i in range(calls):
            pos = at + i * t
            cpu = time.process_time()
            (step if t == 1 else verify)(seq[pos:pos + t], pos)
            costs.append(time.process_time() - cpu)
        out[t] = round(1000 * statistics.median(costs), 2)
    return out


def equal_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two generations share."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main(argv=None) -> int:
    load_before = os.getloadavg()
    ap = argparse.ArgumentParser(prog="python -m bench.speculative", description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", default="4,8", help="draft lengths K to run beside plain greedy (comma-separated)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new", type=int, default=128, help="new tokens per generation")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--artifact", default=None, help="an int4 ONNX folder (default: bench.artifacts' ours-onnx-int4, "
                    "built when missing)")
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "speculative.json"))
    args = ap.parse_args(argv)
    import runtime_py
    say = lambda *a: print(*a, file=sys.stderr, flush=True)     # noqa: E731
    path = args.artifact or artifacts.ensure("ours-onnx-int4", log=say)["path"]
    model = runtime_py.load(path, threads=args.threads)
    settings = [0] + [int(k) for k in args.k.split(",")]
    tasks = args.tasks.split(",")
    for task in tasks:                                           # warm-up, not counted
        one(model, task, 0, 8)
    runs = {(t, k): [] for t in tasks for k in settings}
    order = [(t, k) for t in tasks for k in settings]
    for r in range(args.rounds):
        shift = r % len(order)
        for t, k in order[shift:] + order[:shift]:
            row = one(model, t, k, args.new)
            runs[t, k].append(row)
            say(f"round {r + 1} {t} K={k}: {row['decode_tok_s']:.1f} tok/s, cpu {row['cpu_s']:.2f} s, "
                f"acceptance {row.get('acceptance', '-')}, load {os.getloadavg()[0]:.2f}")
    rows = []
    for t in tasks:
        plain = runs[t, 0]
        for k in settings:
            rs = runs[t, k]
            med = lambda key: statistics.median(x[key] for x in rs)       # noqa: E731
            rows.append({"task": t, "k": k, "prompt_tokens": rs[0]["prompt_tokens"], "tokens": rs[0]["tokens"],
                         "decode_tok_s": round(med("decode_tok_s"), 2), "cpu_s": round(med("cpu_s"), 3),
                         "speedup": round(statistics.median(x["decode_tok_s"] / p["decode_tok_s"]
                                                            for x, p in zip(rs, plain)), 3),
                         "cpu_ratio": round(statistics.median(x["cpu_s"] / p["cpu_s"] for x, p in zip(rs, plain)), 3),
                         "same_tokens": all(x["token_ids"] == p["token_ids"] for x, p in zip(rs, plain)),
                         "equal_prefix": min(equal_prefix(x["token_ids"], p["token_ids"]) for x, p in zip(rs, plain)),
                         **({"acceptance": round(med("acceptance"), 3), "calls": rs[0]["calls"]} if k else {})})
    costs = call_costs(model)
    say(f"CPU ms per call by tokens in it: {costs}")
    out = {"machine": {**measure.describe(args.threads, load_before),
                       "load_after": [round(x, 2) for x in os.getloadavg()]}, "cpu_ms_per_call": costs,
           "artifact": str(path), "rounds": args.rounds, "new_tokens": args.new, "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print("| task | K | tokens | decode tok/s | vs plain | CPU s | CPU vs plain | acceptance | tokens equal to plain |")
    print("|---|---|---|---|---|---|---|---|---|")
    for x in rows:
        same = "all" if x["same_tokens"] else f"first {x['equal_prefix']}"
        print(f"| {x['task']} | {x['k'] or 'plain'} | {x['tokens']} | {x['decode_tok_s']:.1f} | {x['speedup']:.2f}x | "
              f"{x['cpu_s']:.2f} | {x['cpu_ratio']:.2f}x | {x.get('acceptance', '-')} | {same} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
