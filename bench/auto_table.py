"""The README's `--quant auto` table: for each format, the planner's sensitivities are measured once and
the plans for several bars are searched, exported (ONNX folder; LiteRT-LM bundle), validated against the
float model on the validation text and timed decoding.

    python -m bench.auto_table [--bars 0.8,0.9,0.95] [--formats onnx,litert] [--out DIR]

Writes DIR/auto_table.json (default bench/results/) and prints one row per plan as it goes."""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

TARGET = {"onnx": "onnx", "litert": "android"}
PROMPT = "The history of the Python programming language"


def decode_tok_s(out: Path, tokens: int = 64) -> float:
    import runtime_py
    m = runtime_py.load(out)
    g = m.generate(PROMPT, max_new_tokens=tokens)
    return round(g.timings.decode_tok_s, 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bars", default="0.8,0.9,0.95")
    ap.add_argument("--formats", default="onnx,litert")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--work", default="out/auto-table")
    a = ap.parse_args(argv)
    from export.models.checkpoints import load_model
    from export.quantize.auto import Planner
    from export.quantize.gptq import default_calibration_text
    from export.targets import target
    from export.validate import validate

    loaded = load_model(None)
    rows, results = [], Path(a.out) / "auto_table.json"
    for fmt in a.formats.split(","):
        t0 = time.perf_counter()
        ids = loaded.tokenizer.encode(default_calibration_text())
        p = Planner(loaded.model, fmt, ids, loaded.config.bos_id, progress=lambda s: print("  ", s, flush=True))
        p.measure()
        measured_s = time.perf_counter() - t0
        for bar in (float(x) for x in a.bars.split(",")):
            t1 = time.perf_counter()
            plan = p.search(bar)
            if plan is None:
                rows.append({"format": fmt, "bar": bar, "reached": False})
                continue
            search_s = time.perf_counter() - t1
            out = Path(a.work) / f"{fmt}-{bar:g}"
            t2 = time.perf_counter()
            target(TARGET[fmt]).export(loaded, out, p.recipe(plan))
            export_s = time.perf_counter() - t2
            v = validate(out, loaded=loaded)
            counts: dict[str, int] = {}
            for i, c in plan.items():
                counts[c] = counts.get(c, 0) + len(p.units[i].names)
            manifest = json.loads((out / "manifest.json").read_text())
            row = {"format": fmt, "target": TARGET[fmt], "bar": bar, "reached": True,
                   "weights_per_choice": counts, "estimated_mb": round(p.mb(plan), 1),
                   "mb": round(sum(f["bytes"] for n, f in manifest["files"].items()      # the model, not its tokenizer
                                   if not n.startswith("tokenizer")) / 1e6, 1),
                   "calibration_top1": round(p.top1(plan), 4), "top1": round(v["top1_agreement"], 4),
                   "kl": v["kl_divergence"], "perplexity": round(v["perplexity"], 2),
                   "reference_perplexity": round(v["reference_perplexity"], 4),
                   "conversion_passed": v["conversion"]["passed"], "decode_tok_s": decode_tok_s(out),
                   "sensitivity_s": round(measured_s, 1), "search_s": round(search_s, 1),
                   "export_s": round(export_s, 1), "load_average": os.getloadavg()[0]}
            rows.append(row)
            print(json.dumps(row), flush=True)
            results.parent.mkdir(parents=True, exist_ok=True)
            results.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
