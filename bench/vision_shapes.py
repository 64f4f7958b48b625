"""Vision-language models at their real shapes, random weights (issue #17): export paligemma2-3b-224 and
gemma3-4b-vision to ONNX int4 (vision graph int8) on this machine, each export in its own process (wall time,
peak RSS), then run each folder once through runtime_py on a bundled image (encode, prefill and decode speed,
peak RSS, in another process). Results: bench/results/vision_shapes.json; folders in bench/cache/vision_shapes/.

The models are never built in float32 as a whole: the decoder stays on the meta device and its weights are
drawn one tensor at a time when the exporter reads them (LoadedModel.weights: normal(0, 0.02) from a generator
seeded by the tensor's name, norm weights zero, as Gemma's RMSNorm computes 1 + w), so that the export streams
them into MatMulNBits (export/converters/onnx/stream.py); the SigLIP tower and projector are a real float32
torch module (traced by torch.onnx). The tokenizer is the bundled Gemma 3 270M's (no PaliGemma tokenizer ships
here; the prompts' text is a dozen tokens either way).

    .venv/bin/python -m bench.vision_shapes [--only NAME,NAME] [--layers N] [--quant R] [--vision-quant Q]
        [--genai] [--min-free-gb G]

--quant fp32 / fp16 take the float path (export/converters/onnx/spill.py: the 2.7 GB table of gemma3-4b-vision is
written to disk as it is made); --genai also runs the Gemma 3 folder through onnxruntime-genai (one image, 8 tokens).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import zlib
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PRESETS = ("paligemma2-3b-224", "gemma3-4b-vision")
RECIPE, VISION_QUANT = "int4", "int8"
NEW_TOKENS = 8
THREADS = 2
STD = 0.02
SEED = 17


class RandomWeights(Mapping):
    """A text model's weights by state-dict name, drawn when read: normal(0, STD) float32 from a generator
    seeded by (seed, name), so a tensor is the same whenever it is read; norm weights zero."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], seed: int = SEED):
        self.shapes, self.seed = shapes, seed

    def __getitem__(self, name: str):
        import numpy as np
        import torch
        shape = self.shapes[name]
        if "norm" in name:
            return torch.zeros(shape)
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
        w = rng.standard_normal(shape, dtype=np.float32)
        w *= STD
        return torch.from_numpy(w)

    def __iter__(self):
        return iter(self.shapes)

    def __len__(self):
        return len(self.shapes)


def config(name: str, layers: int | None = None, tower: bool = True):
    """The preset, or (a trial run) its decoder, and with `tower` its SigLIP, cut to `layers` layers."""
    import dataclasses
    from export.models.vision_presets import VISION_PRESETS
    vc = VISION_PRESETS[name]
    if layers:
        vc = vc.replace(text=vc.text.replace(layer_types=vc.text.layer_types[:layers]))
        if tower:
            vc = vc.replace(vision=dataclasses.replace(vc.vision, num_layers=layers))
    return vc


def tokenizer():
    from export.models.checkpoints.default import default_model_path
    from export.models.checkpoints.gguf_loader import load_gguf
    from export.models.checkpoints.gguf_tokenizer import sentencepiece_model_from_gguf
    from runtime_py.tokenizer import Tokenizer
    path = default_model_path()
    return Tokenizer.from_bytes(sentencepiece_model_from_gguf(load_gguf(path).reader), str(path))


def random_model(name: str, layers: int | None = None, materialize: bool = False, tower: bool = True):
    """A LoadedModel at the preset's shapes: decoder on the meta device with RandomWeights, SigLIP tower and
    projector float32 on the CPU (normal(0, STD); LayerNorm weights 1, biases and RMSNorm weights 0).
    materialize: the decoder too is a float32 module holding RandomWeights' tensors (what litert-torch converts);
    layers / tower: config()'s cut."""
    import numpy as np
    import torch
    from export.models.checkpoints import LoadedModel
    from export.models.vlm import VisionLanguageModel
    vc = config(name, layers, tower)
    with torch.device("meta"):
        model = VisionLanguageModel(vc)
    model.vision_tower = model.vision_tower.to_empty(device="cpu")
    model.multi_modal_projector = model.multi_modal_projector.to_empty(device="cpu")
    shapes = {n: tuple(t.shape) for n, t in model.language_model.state_dict().items()}
    weights = RandomWeights(shapes)
    if materialize:          # one tensor drawn at a time, straight into its parameter
        model.language_model = model.language_model.to_empty(device="cpu")
        with torch.no_grad():
            for pname, p in model.language_model.named_parameters():
                p.copy_(weights[pname])
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.startswith("language_model."):
                continue
            if pname.endswith(".bias") or "soft_emb_norm" in pname:
                p.zero_()
            elif "norm" in pname:
                p.fill_(1.0)
            else:
                rng = np.random.default_rng([SEED, zlib.crc32(pname.encode())])
                p.copy_(torch.from_numpy(rng.standard_normal(tuple(p.shape), dtype=np.float32) * STD))
    return LoadedModel(model.eval(), vc, tokenizer(), Path(f"random:{name}"),
                       weights=None if materialize else weights)


def peak_rss_gb() -> dict:
    """This process's peak resident set (VmHWM, ru_maxrss) and its children's ru_maxrss, in GB."""
    from devices.measure import peak_rss_mb
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"vmhwm_gb": round(peak_rss_mb() / 1024, 2), "ru_maxrss_gb": round(self_kb / 2**20, 2),
            "children_ru_maxrss_gb": round(children_kb / 2**20, 2)}


def export_child(name: str, out: Path, layers: int | None, quant: str = RECIPE,
                 vision_quant: str = VISION_QUANT) -> dict:
    from export.converters.onnx import export_onnx
    t0 = time.perf_counter()
    loaded = random_model(name, layers)
    t1 = time.perf_counter()
    export_onnx(loaded, out, quant, vision_quant=vision_quant)
    t2 = time.perf_counter()
    params = sum(p.numel() for p in loaded.model.parameters())
    return {"setup_s": round(t1 - t0, 1), "export_s": round(t2 - t1, 1), "parameters": params, **peak_rss_gb()}


def run_child(name: str, out: Path) -> dict:
    """One generation with one bundled image, the prompt laid out by Model.generate(images=...)."""
    import runtime_py
    from export.data.images import bundled_images
    t0 = time.perf_counter()
    model = runtime_py.load(out, threads=THREADS, spin=False)
    load_s = time.perf_counter() - t0
    image = bundled_images()[0]
    prompt = image["paligemma_prompt"] if name.startswith("paligemma") else image["prompt"]
    encode = model.backend.encode_images
    seconds = []

    def timed(pixels):
        t = time.perf_counter()
        rows = encode(pixels)
        seconds.append(time.perf_counter() - t)
        return rows

    model.backend.encode_images = timed
    gen = model.generate(prompt, max_new_tokens=NEW_TOKENS, images=[image["file"]], stop_ids=[])
    t = gen.timings
    return {"image": image["file"].name, "prompt": prompt, "prompt_tokens": gen.prompt_tokens,
            "new_tokens": len(gen.token_ids), "load_s": round(load_s, 1), "encode_s": round(seconds[0], 2),
            "prefill_s": round(t.prefill_s, 2), "prefill_tok_s": round(t.prefill_tok_s, 1),
            "decode_tok_s": round(t.decode_tok_s, 2), "threads": THREADS, "spin": False, **peak_rss_gb()}


def genai_child(out: Path) -> dict:
    """One generation by onnxruntime-genai on the folder as it is (its own processor), a bundled image."""
    import onnxruntime_genai as og
    from export.data.images import bundled_images
    image = bundled_images()[0]
    t0 = time.perf_counter()
    model = og.Model(str(out))
    processor = model.create_multimodal_processor()
    load_s = time.perf_counter() - t0
    inputs = processor("<bos>" + image["prompt"], images=og.Images.open(str(image["file"])))
    prompt = int(inputs["input_ids"].as_numpy().size)
    params = og.GeneratorParams(model)
    # max_length stays genai_config's (the context): genai sizes every cache by it, and GroupQueryAttention
    # refuses a sliding cache shorter than the window (1024)
    params.set_search_options(do_sample=False)
    gen = og.Generator(model, params)
    t1 = time.perf_counter()
    gen.set_inputs(inputs)
    gen.generate_next_token()
    first_s = time.perf_counter() - t1
    for _ in range(NEW_TOKENS - 1):
        gen.generate_next_token()
    new = len(gen.get_sequence(0)) - prompt
    return {"prompt_tokens": prompt, "new_tokens": int(new), "load_s": round(load_s, 1),
            "first_token_s": round(first_s, 2), "total_s": round(time.perf_counter() - t1, 2), **peak_rss_gb()}


def _child(argv: list[str]) -> int:
    kind, name, out, layers = argv[0], argv[1], Path(argv[2]), int(argv[3]) or None
    if kind == "export":
        result = export_child(name, out, layers, *argv[4:6])
    else:
        result = genai_child(out) if kind == "genai" else run_child(name, out)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def mem_available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def wait_for_memory(need_gb: float, patience_s: float) -> dict:
    """Wait (up to patience_s) until `need_gb` is available: other engineers share the machine."""
    t0 = time.monotonic()
    while mem_available_gb() < need_gb and time.monotonic() - t0 < patience_s:
        time.sleep(30)
    return {"mem_available_gb": round(mem_available_gb(), 1), "waited_s": round(time.monotonic() - t0),
            "load_before": [round(x, 2) for x in os.getloadavg()]}


def child(kind: str, name: str, out: Path, layers: int | None, *extra: str) -> dict:
    """Run a measurement in a fresh process (its own peak RSS), niced as the machine's rules ask."""
    cmd = ["nice", "-n", "10", sys.executable, "-m", "bench.vision_shapes", "--child", kind, name, str(out),
           str(layers or 0), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT.parent, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{kind} {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return {**json.loads(lines[-1][len("RESULT "):]), "process_wall_s": round(wall, 1),
            "load_after": [round(x, 2) for x in os.getloadavg()]}


def folder_sizes(out: Path) -> dict:
    return {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(PRESETS))
    ap.add_argument("--layers", type=int, default=0, help="cut decoder and tower to N layers (a trial run)")
    ap.add_argument("--quant", default=RECIPE, help="the decoder's recipe")
    ap.add_argument("--vision-quant", default=VISION_QUANT)
    ap.add_argument("--genai", action="store_true", help="run Gemma 3 folders through onnxruntime-genai too")
    ap.add_argument("--min-free-gb", type=float, default=14.0, help="wait for this much available memory")
    ap.add_argument("--patience-s", type=float, default=3600.0)
    ap.add_argument("--results", default=str(ROOT / "results" / "vision_shapes.json"))
    args = ap.parse_args(argv)
    from devices.measure import describe
    results = {"date": time.strftime("%Y-%m-%d"), "machine": describe(THREADS, os.getloadavg()),
               "recipe": args.quant, "vision_quant": args.vision_quant, "layers": args.layers or "all", "models": {}}
    for name in args.only.split(","):
        tag = "".join(f"-{x}" for x in (f"{args.layers}l" if args.layers else "",
                                         args.quant if args.quant != RECIPE else "") if x)
        out = ROOT / "cache" / "vision_shapes" / f"{name}{tag}"
        entry = {"before_export": wait_for_memory(args.min_free_gb, args.patience_s)}
        entry["export"] = child("export", name, out, args.layers, args.quant, args.vision_quant)
        print(json.dumps({name: entry}), flush=True)
        entry["files"] = folder_sizes(out)
        entry["bytes"] = sum(entry["files"].values())
        entry["before_run"] = wait_for_memory(args.min_free_gb / 2, args.patience_s)
        entry["run"] = child("run", name, out, args.layers)
        print(json.dumps({name: entry}), flush=True)
        if args.genai and (out / "genai_config.json").exists():
            entry["genai"] = child("genai", name, out, args.layers)
        results["models"][name] = entry
        print(json.dumps({name: entry}, indent=1), flush=True)
    if not args.layers and args.quant == RECIPE and args.vision_quant == VISION_QUANT:
        Path(args.results).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
