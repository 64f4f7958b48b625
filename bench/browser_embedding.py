"""EmbeddingGemma's `--target web` recipes in headless Chromium, as a web app runs them (issue #20): `python -m
bench.browser_embedding [--recipes web-q8,web,int8,int4,fp16] [--lengths 32,128] [--native] [--out DIR]`.

EmbeddingGemma 300M at its real shapes with random weights (bench.embedding.random_embedder: the same weights every
run), each recipe's web folder (bench.embedding's conversion step, `--target web`), loaded by transformers.js 4.3.2's
browser build with its default onnxruntime-web build (wasm; tools/web/pages/embed_bench.mjs): load time, bytes the
page fetched (the libraries' ~28 MB included) and the model's files, embeddings per second for bench.embedding's
texts of 32 and 128 tokens (one text per call, and the 8 in one padded call), and the cosine of the 128-token batch's
vectors to sentence-transformers' (6.x, float32, torch) on the same weights. `--native`: the same folder in
runtime_py (native onnxruntime, 2 threads) too. The run holds /tmp/heavy.lock (the machine's rule for jobs above
~4 GB: conversions, sentence-transformers, a real-size model in the browser) once; a folder or reference already in
--out is reused (the reference's row is then not in --json), a row already in --json is kept.
Results: bench/results/browser_embedding.json."""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from .embedding import BATCH, FIDELITY_LENGTH, PRESET, ROOT, THREADS, _child, _cosines, heavy_lock, texts

RECIPES = ("web-q8", "web", "int8", "int4", "fp16")
LENGTHS = (32, FIDELITY_LENGTH)


def browser_row(folder: Path, lengths, repeats: int, budget: float, vectors: Path) -> dict:
    """The folder in Chromium (wasm, transformers.js's default onnxruntime-web build, THREADS threads); the
    FIDELITY_LENGTH batch's vectors go to `vectors` (.npy)."""
    from .browser import Chromium
    inputs = {str(n): texts(n, BATCH) for n in lengths}
    with Chromium() as browser:
        got = browser.run("/pages/embed_bench.mjs", {"texts": inputs, "repeats": repeats, "budget": budget,
                                                     "threads": THREADS, "vectorsOf": [str(FIDELITY_LENGTH)]},
                          mounts={"model": folder}, timeout=3600)
        fetched, version = browser.bytes, browser.version
    np.save(vectors, np.asarray(got["vectors"][str(FIDELITY_LENGTH)], np.float32))
    rates = {n: {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for n, r in got["rates"].items()}
    return {"chromium": version, "threads": THREADS, "load_s": round(got["load_s"], 2), "bytes_fetched": fetched,
            "rates": rates}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.browser_embedding", description=__doc__.splitlines()[0])
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    p.add_argument("--repeats", type=int, default=BATCH)
    p.add_argument("--budget", type=float, default=30, help="seconds of one-text calls per length (at least one)")
    p.add_argument("--native", action="store_true", help="also runtime_py (native onnxruntime) on each folder")
    p.add_argument("--out", default="out/bench-browser-embedding")
    p.add_argument("--json", default=str(ROOT / "results" / "browser_embedding.json"))
    args = p.parse_args(argv)
    from devices.measure import describe
    lengths = [int(x) for x in args.lengths.split(",")]
    if FIDELITY_LENGTH not in lengths:
        raise SystemExit(f"--lengths: include {FIDELITY_LENGTH} (the texts whose vectors are compared)")
    out, path = Path(args.out), Path(args.json)
    results = {"preset": PRESET, "lengths": lengths, "batch": BATCH, "machine": describe(THREADS, os.getloadavg()),
               "runs": {}}
    if path.exists():
        results["runs"] = json.loads(path.read_text())["runs"]

    def record(key: str, row: dict) -> None:
        results["runs"][key] = row
        results["load_after"] = os.getloadavg()
        print(json.dumps({key: row}), flush=True)
        path.write_text(json.dumps(results, indent=1) + "\n")

    step = {"lengths": lengths, "repeats": args.repeats}
    st, st_vectors = out / "sentence-transformers", out / "st.npy"
    with heavy_lock():                # one hold for the run: every step is heavy, and a browser run is timed
        if not st_vectors.exists():
            row = {"build": _child({"step": "st", "out": str(st)}) if not (st / "modules.json").exists() else None,
                   "sentence_transformers": _child({**step, "step": "sentence_transformers", "out": str(st),
                                                    "vectors": str(st_vectors)})}
            record("sentence-transformers fp32", row)
        for recipe in args.recipes.split(","):
            if recipe not in results["runs"]:
                record(recipe, recipe_row(out, recipe, step, args, st_vectors))
    return 0


def recipe_row(out: Path, recipe: str, step: dict, args, st_vectors: Path) -> dict:
    """One recipe's folder (converted unless in `out`) in Chromium, and with --native in runtime_py."""
    folder, row = out / f"web-{recipe}", {}
    if not (folder / "manifest.json").exists():
        row["convert"] = _child({**step, "step": "convert", "format": "onnx", "recipe": recipe, "out": str(folder)})
    files = {p.name: p.stat().st_size for p in sorted((folder / "onnx").iterdir())}
    row["files"], row["model_bytes"] = files, sum(files.values())
    t = time.perf_counter()
    row["browser"] = browser_row(folder, step["lengths"], args.repeats, args.budget, out / f"web-{recipe}-browser.npy")
    row["browser"]["wall_s"] = round(time.perf_counter() - t, 1)
    row["browser"].update(_cosines(out / f"web-{recipe}-browser.npy", st_vectors))
    if args.native:
        vectors = out / f"web-{recipe}-runtime_py.npy"
        row["runtime_py"] = _child({**step, "step": "runtime_py", "out": str(folder), "vectors": str(vectors)})
        row["runtime_py"].update(_cosines(vectors, st_vectors))
    return row


if __name__ == "__main__":
    raise SystemExit(main())
