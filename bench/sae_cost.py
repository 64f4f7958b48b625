"""What carrying a Gemma Scope 2-shaped SAE costs in the bundled Gemma 3 270M's artifact (ONNX, or with
`--target android` the .litertlm): a random JumpReLU SAE of width 16k on the residual stream after the middle
layer (no Gemma Scope weights are reachable here; thresholds set so a few percent of the features fire), exported
with the model's recipe (default int4) three ways: no SAE, the SAE with an fp32 encoder, with an int8 encoder.
Reported: the files' sizes, decode speed (runtime_py, greedy, one thread count, the runs interleaved, medians) as
an app runs it without the SAE (the plain graph / signatures) and with a zero steering vector (ONNX: the optional
input fed; LiteRT: the sae_prefill_{T} / sae_decode signatures, encoder and top-k included), LiteRT-LM's own
decode speed on each .litertlm, and the int8 encoder's top-k agreement with the fp32 one (mean Jaccard of the index
sets per position, and the share of positions with equal sets) over the first 512 tokens of
export/data/validation.txt.

    python -m bench.sae_cost [--target onnx|android] [--quant int4] [--width 16384] [--k 16] [--runs 3] [--out DIR]

Writes DIR/sae_cost.json (ONNX) or DIR/sae_cost_android.json (default bench/results/)."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
TEXT = ("The history of the printing press begins in the fifteenth century, when movable type changed how "
        "books were made. Within fifty years presses ran in more than two hundred cities across Europe, and the "
        "price of a book fell so far that ordinary merchants could own a few.")


VARIANTS = {"no SAE": [], "SAE fp32 encoder": ["--sae", "{sae}"],
            "SAE int8 encoder": ["--sae", "{sae}", "--sae-encoder", "int8"]}


def random_sae_folder(root: Path, loaded, layer: int, width: int, seed: int = 0) -> Path:
    """A Gemma Scope 2 folder (params.safetensors + config.json) at resid_post of `layer`, scaled to the typical
    position's norm there on TEXT."""
    from safetensors.numpy import save_file
    seen = []
    owner = loaded.model.model.layers[layer]
    owner.taps["output"] = lambda x: (seen.append(x), x)[1]
    try:
        with torch.no_grad():
            ids = loaded.tokenizer.encode(TEXT)
            loaded.model(torch.tensor([ids]), torch.arange(len(ids)))
    finally:
        owner.taps.pop("output")
    scale = float(seen[0][0].pow(2).mean(-1).sqrt().median())
    d, rng = loaded.config.hidden_size, np.random.default_rng(seed)
    params = {"w_enc": (rng.standard_normal((d, width)) / np.sqrt(d) / scale).astype(np.float32),
              "w_dec": (rng.standard_normal((width, d)) * 0.05 * scale).astype(np.float32),
              "b_enc": np.zeros(width, np.float32), "b_dec": np.zeros(d, np.float32),
              "threshold": rng.uniform(1.5, 2.5, width).astype(np.float32)}
    folder = root / "resid_post" / f"layer_{layer}_width_{width // 1024}k_l0_small"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(params, str(folder / "params.safetensors"))
    (folder / "config.json").write_text(json.dumps({"hf_hook_point_in": f"model.layers.{layer}.output",
                                                    "architecture": "jump_relu", "width": width}))
    return folder


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", default="onnx", choices=["onnx", "android"])
    ap.add_argument("--quant", default="int4")
    ap.add_argument("--width", type=int, default=16384)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--agreement-tokens", type=int, default=512, help="tokens of export/data/validation.txt")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--root", default=None, help="work folder (default: a new temporary one); an artifact already "
                                                 "in it (DIR/<variant>/manifest.json) is measured, not exported again")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    args = ap.parse_args(argv)
    import runtime_py
    from export.cli import main as cli
    from export.models.checkpoints import load_model

    loaded = load_model()
    layer = loaded.config.num_layers // 2
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="sae-cost-"))
    sae = random_sae_folder(root, loaded, layer, args.width)
    variants = {name: [f.format(sae=sae) for f in flags] for name, flags in VARIANTS.items()
                if name in args.variants.split(",")}
    folders = {}
    for name, flags in variants.items():
        folders[name] = root / name.replace(" ", "-")
        if (folders[name] / "manifest.json").is_file():
            continue
        with contextlib.redirect_stdout(io.StringIO()):         # its summary JSON
            status = cli(["--target", args.target, "--quant", args.quant, "--out", str(folders[name]), "--no-validate",
                          "--sae-k", str(args.k), *flags, "--json"])
        assert status == 0, name
    models = {name: runtime_py.load(f) for name, f in folders.items()}
    prompt = loaded.tokenizer.encode(TEXT)
    decode = {name: [] for name in models}
    steered = {name: [] for name, m in models.items() if len(m.sae)}
    engine = {name: [] for name in models} if args.target == "android" else {}
    for _ in range(args.runs):                  # interleaved: the machine's load changes between runs
        for name, m in models.items():
            t = m.time_steps(prompt, args.decode)
            decode[name].append(len(t.decode_s) / sum(t.decode_s))
            if name in steered:
                steered[name].append(_steered_decode_tok_s(m, prompt, args.decode))
            if name in engine:
                engine[name].append(_litert_lm_decode_tok_s(folders[name], prompt, args.decode))
    sizes = {name: {p.name: p.stat().st_size for p in f.iterdir()
                    if p.suffix in (".onnx", ".data", ".npy", ".litertlm")} for name, f in folders.items()}
    text = loaded.tokenizer.encode((ROOT / "export" / "data" / "validation.txt").read_text())[:args.agreement_tokens]
    jac = None
    if {"SAE fp32 encoder", "SAE int8 encoder"} <= set(models):
        fp32 = models["SAE fp32 encoder"].features(text)[0]["positions"]
        int8 = models["SAE int8 encoder"].features(text)[0]["positions"]
        jac = [len(set(a["indices"]) & set(b["indices"])) / max(len(set(a["indices"]) | set(b["indices"])), 1)
               for a, b in zip(fp32, int8)]
    result = {"model": str(loaded.source), "target": args.target, "recipe": args.quant, "layer": layer,
              "width": args.width, "k": args.k,
              "prompt_tokens": len(prompt), "decode_steps": args.decode, "runs": args.runs,
              "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "load": os.getloadavg()},
              "files_bytes": sizes, "total_mb": {n: round(sum(s.values()) / 1e6, 1) for n, s in sizes.items()},
              "decode_tok_s": {n: round(statistics.median(v), 1) for n, v in decode.items()},
              "decode_tok_s_runs": {n: [round(x, 1) for x in v] for n, v in decode.items()},
              "steered_decode_tok_s": {n: round(statistics.median(v), 1) for n, v in steered.items()},
              "steered_decode_tok_s_runs": {n: [round(x, 1) for x in v] for n, v in steered.items()},
              **({"litert_lm_decode_tok_s": {n: round(statistics.median(v), 1) for n, v in engine.items()},
                  "litert_lm_decode_tok_s_runs": {n: [round(x, 1) for x in v] for n, v in engine.items()}}
                 if engine else {}),
              "int8_topk": {"tokens": len(text), "mean_jaccard": round(float(np.mean(jac)), 4),
                            "equal_sets": round(float(np.mean([j == 1.0 for j in jac])), 4)} if jac else None}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "sae_cost.json" if args.target == "onnx" else f"sae_cost_{args.target}.json"
    (out / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _steered_decode_tok_s(m, prompt: list[int], n: int) -> float:
    """Greedy decode steps per second with a zero steering vector fed (the SAE's own graph path)."""
    import time
    step = m.backend.stepper(len(prompt) + n, extra=m.sae.steer_inputs({0: 0.0}))
    out = [int(np.argmax(step(prompt, 0)))]
    t = time.perf_counter()
    for pos in range(len(prompt), len(prompt) + n):
        out.append(int(np.argmax(step(out[-1:], pos))))
    return n / (time.perf_counter() - t)


def _litert_lm_decode_tok_s(folder: Path, prompt: list[int], n: int) -> float:
    """LiteRT-LM's own decode speed on the folder's .litertlm (its benchmark mode; 2 threads)."""
    from .runners.litertlm import measure
    with tempfile.TemporaryDirectory() as cache:
        return measure(str(folder), 2, TEXT, len(prompt), n, cache).decode_tok_s


if __name__ == "__main__":
    main()
