"""EmbeddingGemma 300M at its real shapes (random weights, bench.vision_shapes.RandomWeights; the bundled Gemma 3
tokenizer, the same 262k vocabulary) exported with `--target android` to a `.litertlm` per recipe, then run in
LiteRT-LM's EmbeddingEngine and in runtime_py: file size, load time, peak RSS and embeddings per second for texts
of 32, 128 and 512 tokens, one call per text and batched (issue #20). Each conversion and each runtime runs in a
child process of its own, so every peak RSS is that step's alone.

  python -m bench.embedding_litertlm [--recipes int8,int4] [--lengths 32,128,512] [--out DIR] [--json FILE]"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from runtime_py.contract import DEFAULT_PREFILL

PRESET = "embeddinggemma-300m"
LENGTHS = DEFAULT_PREFILL            # 32, 128, 512: the encoder's signatures and the texts' token counts
BATCH = 8
THREADS = 2
ROOT = Path(__file__).resolve().parent


def random_embedder():
    """A LoadedModel: GemmaEmbedder at the preset's shapes holding RandomWeights (norm weights 0: Gemma's 1 + w)."""
    import torch

    from export.models import PRESETS, build_model
    from export.models.checkpoints import LoadedModel

    from .vision_shapes import RandomWeights, tokenizer
    config = PRESETS[PRESET]
    with torch.device("meta"):
        model = build_model(config)
    model = model.to_empty(device="cpu")
    weights = RandomWeights({n: tuple(t.shape) for n, t in model.state_dict().items()})
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(weights[name])
    return LoadedModel(model.eval(), config, tokenizer(), Path(f"random:{PRESET}"))


def convert_child(recipe: str, out: Path, lengths) -> dict:
    from devices.measure import peak_rss_mb
    from export.targets import target
    t0 = time.perf_counter()
    loaded = random_embedder()
    built = time.perf_counter()
    target("android").export(loaded, out, recipe, None, tuple(lengths))
    done = time.perf_counter()
    return {"build_s": round(built - t0, 1), "export_s": round(done - built, 1), "peak_rss_mb": peak_rss_mb(),
            "bytes": (out / "model.litertlm").stat().st_size}


def texts(n_tokens: int, count: int) -> list[str]:
    """`count` different texts of n_tokens tokens (at most; as re-tokenized) with <bos> and <eos>."""
    from .vision_shapes import tokenizer
    tok = tokenizer()
    words = "river grain council schoolhouse water fields mill accounts church stone harvest".split()
    out = []
    for k in range(count):
        ids, i = [], k
        while len(ids) < n_tokens - 2:
            ids += tok.encode(" " + words[i % len(words)])[1:]          # drop encode's <bos>
            i += 1
        keep = n_tokens - 2
        while len(tok.encode(tok.decode(ids[:keep]))) + 1 > n_tokens:       # encode adds <bos>; the engine <eos>
            keep -= 1
        out.append(tok.decode(ids[:keep]))
    return out


def run_child(runtime: str, bundle: Path, lengths, repeats: int) -> dict:
    """Load the bundle in `runtime` (litert_lm | runtime_py), then time single and batched embeddings per length."""
    from devices.measure import peak_rss_mb
    t0 = time.perf_counter()
    if runtime == "litert_lm":
        import litert_lm
        engine = litert_lm.EmbeddingEngine(str(bundle / "model.litertlm"),
                                           backend=litert_lm.Backend.CPU(thread_count=THREADS))
        one = lambda t: engine.compute_embedding(t).embedding                    # noqa: E731
        many = lambda ts: engine.compute_embedding_batch(ts)                    # noqa: E731
    else:
        import runtime_py
        m = runtime_py.load(bundle / "model.litertlm", threads=THREADS)
        one = lambda t: m.embed(t)                                              # noqa: E731
        many = lambda ts: m.embed(ts, batch_size=len(ts))                       # noqa: E731
    load_s = time.perf_counter() - t0
    load_rss = peak_rss_mb()
    rates = {}
    for n in lengths:
        batch = texts(n, BATCH)
        one(batch[0])                                      # warm-up: buffers, XNNPACK packing, the row cache
        t = time.perf_counter()
        for i in range(repeats):
            one(batch[i % BATCH])
        single = repeats / (time.perf_counter() - t)
        t = time.perf_counter()
        many(batch)
        batched = BATCH / (time.perf_counter() - t)
        rates[n] = {"single_per_s": round(single, 2), f"batch{BATCH}_per_s": round(batched, 2)}
    return {"load_s": round(load_s, 2), "rss_after_load_mb": load_rss, "peak_rss_mb": peak_rss_mb(), "rates": rates}


def _child(args) -> dict:
    cmd = [sys.executable, "-m", "bench.embedding_litertlm", "--child", json.dumps(args)]
    r = subprocess.run(["nice", "-n", "10", *cmd], cwd=ROOT.parent, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"child {args} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.embedding_litertlm", description=__doc__.splitlines()[0])
    p.add_argument("--recipes", default="int8,int4")
    p.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--out", default="out/bench-embedding")
    p.add_argument("--json", default=str(ROOT / "results" / "embedding_litertlm.json"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        a = json.loads(args.child)
        result = convert_child(a["recipe"], Path(a["out"]), a["lengths"]) if a["step"] == "convert" else \
            run_child(a["step"], Path(a["out"]), a["lengths"], a["repeats"])
        print(json.dumps(result))
        return 0
    import os

    from devices.measure import describe
    lengths = [int(x) for x in args.lengths.split(",")]
    results = {"preset": PRESET, "lengths": lengths, "batch": BATCH, "machine": describe(THREADS, os.getloadavg()),
               "recipes": {}}
    for recipe in args.recipes.split(","):
        out = Path(args.out) / recipe
        row = {"convert": _child({"step": "convert", "recipe": recipe, "out": str(out), "lengths": lengths})}
        for runtime in ("litert_lm", "runtime_py"):
            row[runtime] = _child({"step": runtime, "out": str(out), "lengths": lengths, "repeats": args.repeats})
        results["recipes"][recipe] = row
        print(json.dumps({recipe: row}), flush=True)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
