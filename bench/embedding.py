"""EmbeddingGemma 300M at its real shapes (random weights, bench.vision_shapes.RandomWeights; the bundled Gemma 3
tokenizer, the same 262k vocabulary) in one run (issue #20): sentence-transformers on the same weights (torch, CPU,
float32; the reference), then per recipe the `--target android` `.litertlm` in LiteRT-LM's EmbeddingEngine and in
runtime_py, and the `--target web` ONNX folder in runtime_py (onnxruntime): file size, load time, peak RSS and
embeddings per second for texts of 32, 128 and 512 tokens, one call per text and batched, and the cosine of every
runtime's vectors to sentence-transformers' on the 128-token texts. Each conversion and each runtime runs in a child
process of its own, so every peak RSS is that step's alone; conversions hold /tmp/heavy.lock (the machine's rule for
jobs above ~4 GB), one hold per recipe.

  python -m bench.embedding [--recipes fp32,int8,int4] [--formats litertlm,onnx] [--lengths 32,128,512]
                            [--out DIR] [--json FILE] [--resume]"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from runtime_py.contract import DEFAULT_PREFILL

PRESET = "embeddinggemma-300m"
LENGTHS = DEFAULT_PREFILL            # 32, 128, 512: the encoder's signatures and the texts' token counts
BATCH = 8
THREADS = 2
FIDELITY_LENGTH = 128                # the texts whose vectors are compared across runtimes
ROOT = Path(__file__).resolve().parent
LOCK = "/tmp/heavy.lock"
# format -> (the target that builds it, the runtimes that run it)
FORMATS = {"litertlm": ("android", ("litert_lm", "runtime_py")), "onnx": ("web", ("runtime_py",))}


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


def st_child(out: Path) -> dict:
    """The random weights as EmbeddingGemma's Hugging Face folder, then as its sentence-transformers folder."""
    import torch
    from safetensors.torch import save_file

    from devices.measure import peak_rss_mb
    from export.converters.onnx.web_folder import hf_config
    from export.models.checkpoints.default import default_model_path
    from export.models.checkpoints.gguf_loader import load_gguf
    from export.models.checkpoints.gguf_tokenizer import sentencepiece_model_from_gguf

    from .st_reference import DENSE_FOLDERS, write_sentence_transformer
    t0 = time.perf_counter()
    loaded = random_embedder()
    hf = out.parent / (out.name + ".hf")
    hf.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in hf_config(loaded.config, "fp32", 0).items() if k != "transformers.js_config"}
    (hf / "config.json").write_text(json.dumps(config, indent=1))
    state = loaded.model.state_dict()
    save_file({k[len("model."):]: v.contiguous() for k, v in state.items() if k.startswith("model.")},
              str(hf / "model.safetensors"))
    for i, sub in enumerate(DENSE_FOLDERS):
        w = state[f"dense.{i}.weight"]
        (hf / sub).mkdir(exist_ok=True)
        save_file({"linear.weight": w.contiguous()}, str(hf / sub / "model.safetensors"))
        (hf / sub / "config.json").write_text(json.dumps({"in_features": w.shape[1], "out_features": w.shape[0],
                                                          "bias": False,
                                                          "activation_function": "torch.nn.modules.linear.Identity"}))
    (hf / "tokenizer.model").write_bytes(sentencepiece_model_from_gguf(load_gguf(default_model_path()).reader))
    del loaded, state
    torch.set_num_threads(THREADS)
    write_sentence_transformer(hf, out)
    return {"build_s": round(time.perf_counter() - t0, 1), "peak_rss_mb": peak_rss_mb(),
            "bytes": sum(p.stat().st_size for p in out.rglob("*.safetensors"))}


def convert_child(fmt: str, recipe: str, out: Path, lengths) -> dict:
    from devices.measure import peak_rss_mb
    from export.targets import target
    t0 = time.perf_counter()
    loaded = random_embedder()
    built = time.perf_counter()
    name = FORMATS[fmt][0]
    if fmt == "litertlm":
        target(name).export(loaded, out, recipe, None, tuple(lengths))
        files = {"model.litertlm": (out / "model.litertlm").stat().st_size}
    else:
        target(name).export(loaded, out, recipe)
        files = {p.relative_to(out).as_posix(): p.stat().st_size for p in sorted((out / "onnx").iterdir())}
    done = time.perf_counter()
    return {"build_s": round(built - t0, 1), "export_s": round(done - built, 1), "peak_rss_mb": peak_rss_mb(),
            "bytes": sum(files.values()), "files": files}


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


def _open(runtime: str, artifact: Path):
    """(embed one text -> vector, embed a list -> vectors) of `runtime` on `artifact`."""
    import numpy as np
    if runtime == "litert_lm":
        import litert_lm
        engine = litert_lm.EmbeddingEngine(str(artifact / "model.litertlm"),
                                           backend=litert_lm.Backend.CPU(thread_count=THREADS))
        return (lambda t: np.array(engine.compute_embedding(t).embedding),
                lambda ts: np.array([r.embedding for r in engine.compute_embedding_batch(ts)]))
    if runtime == "sentence_transformers":
        import torch
        torch.set_num_threads(THREADS)
        from .st_reference import load_sentence_transformer
        st = load_sentence_transformer(artifact)
        return lambda t: st.encode(t), lambda ts: st.encode(ts, batch_size=len(ts))
    import runtime_py
    m = runtime_py.load(artifact / "model.litertlm" if (artifact / "model.litertlm").exists() else artifact,
                        threads=THREADS)
    return lambda t: m.embed(t), lambda ts: m.embed(ts, batch_size=len(ts))


def run_child(runtime: str, artifact: Path, lengths, repeats: int, vectors: Path) -> dict:
    """Load `artifact` in `runtime`, then time single and batched embeddings per length; the FIDELITY_LENGTH
    texts' batched vectors go to `vectors` (.npy)."""
    import numpy as np

    from devices.measure import peak_rss_mb
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    one, many = _open(runtime, artifact)
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
        got = many(batch)
        batched = BATCH / (time.perf_counter() - t)
        rates[n] = {"single_per_s": round(single, 2), f"batch{BATCH}_per_s": round(batched, 2)}
        if n == FIDELITY_LENGTH:
            np.save(vectors, np.asarray(got, np.float32))
    return {"load_s": round(load_s, 2), "rss_after_load_mb": load_rss, "peak_rss_mb": peak_rss_mb(), "rates": rates,
            "machine_load_1min": [load_before, os.getloadavg()[0]]}


def _child(args: dict) -> dict:
    cmd = ["nice", "-n", "10", sys.executable, "-m", "bench.embedding", "--child", json.dumps(args)]
    r = subprocess.run(cmd, cwd=ROOT.parent, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"child {args} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def heavy_lock():
    """The machine's lock for jobs above ~4 GB, held by this process while its children convert."""
    with open(LOCK, "a") as f:
        t0 = time.perf_counter()
        fcntl.flock(f, fcntl.LOCK_EX)
        print(json.dumps({"lock_wait_s": round(time.perf_counter() - t0, 1)}), flush=True)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _cosines(vectors: Path, reference: Path) -> dict:
    import numpy as np
    a, b = (np.load(p).astype(np.float64) for p in (vectors, reference))
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    return {"cosine_to_st_min": round(float(cos.min()), 6), "cosine_to_st_mean": round(float(cos.mean()), 6)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.embedding", description=__doc__.splitlines()[0])
    p.add_argument("--recipes", default="int8,fp32,int4")
    p.add_argument("--formats", default=",".join(FORMATS))
    p.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--out", default="out/bench-embedding")
    p.add_argument("--json", default=str(ROOT / "results" / "embedding.json"))
    p.add_argument("--resume", action="store_true", help="keep the rows already in --json")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        a = json.loads(args.child)
        if a["step"] == "st":
            result = st_child(Path(a["out"]))
        elif a["step"] == "convert":
            result = convert_child(a["format"], a["recipe"], Path(a["out"]), a["lengths"])
        else:
            result = run_child(a["step"], Path(a["out"]), a["lengths"], a["repeats"], Path(a["vectors"]))
        print(json.dumps(result))
        return 0
    from devices.measure import describe
    lengths = [int(x) for x in args.lengths.split(",")]
    out = Path(args.out)
    results = {"preset": PRESET, "lengths": lengths, "batch": BATCH, "repeats": args.repeats,
               "machine": describe(THREADS, os.getloadavg()), "runs": {}}
    if args.resume and Path(args.json).exists():           # rows of an interrupted run are kept, not re-run
        results["runs"] = json.loads(Path(args.json).read_text())["runs"]

    def record(key: str, row: dict) -> None:
        results["runs"][key] = row
        results["load_after"] = os.getloadavg()
        print(json.dumps({key: row}), flush=True)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")

    step = {"lengths": lengths, "repeats": args.repeats}
    st, st_vectors = out / "sentence-transformers", out / "st.npy"
    # the reference row again when its vectors are gone (--out elsewhere): every row's cosine needs them
    if "sentence-transformers fp32" not in results["runs"] or not st_vectors.exists():
        with heavy_lock():
            row = {"build": _child({"step": "st", "out": str(st)})}
        row["sentence_transformers"] = _child({**step, "step": "sentence_transformers", "out": str(st),
                                               "vectors": str(st_vectors)})
        record("sentence-transformers fp32", row)
    for recipe in args.recipes.split(","):
        todo = [fmt for fmt in args.formats.split(",") if f"{fmt} {recipe}" not in results["runs"]]
        if not todo:
            continue
        with heavy_lock():                              # one recipe's conversions in one hold of the lock
            rows = {fmt: {"convert": _child({"step": "convert", "format": fmt, "recipe": recipe, "lengths": lengths,
                                             "out": str(out / f"{fmt}-{recipe}")})} for fmt in todo}
        for fmt, row in rows.items():
            for runtime in FORMATS[fmt][1]:
                vectors = out / f"{fmt}-{recipe}-{runtime}.npy"
                row[runtime] = _child({**step, "step": runtime, "out": str(out / f"{fmt}-{recipe}"),
                                       "vectors": str(vectors)})
                row[runtime].update(_cosines(vectors, st_vectors))
            record(f"{fmt} {recipe}", row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
