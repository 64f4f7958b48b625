"""Which weight format is fastest per byte in the browser: `python -m bench.browser_formats [--budget 3]`.

One MatMul at the real Gemma 3 270M's shapes ([tokens, 640] x 640x2048 (q/k/v), 640x4096 (gate+up), 2048x640
(down), and the tied LM head 640x262144, whose decode and prefill steps compute the last token only), random weights
N(0, 0.02), in each format a web recipe could use: int4 MatMulNBits (blocks of 32, accuracy level 0 and 4), int8
per-channel weights behind DynamicQuantizeLinear + MatMulInteger, float16 weights cast to float32 (onnxruntime folds
the Cast when it loads the graph: the float16 is download size only), float16 MatMul (activations cast to float16
and back), float32. Each graph runs in headless Chromium's onnxruntime-web: wasm (its wasm-only build) on 1 and 2
threads, WebGPU on SwiftShader (a CPU emulation of a GPU: its times say nothing of a real GPU), and in native
onnxruntime (Python, CPU) on 1 and 2 threads. The figure is the median wall time of session.run over `--budget`
seconds (at least 2 runs after a warm-up), so the machine's other jobs inflate it: compare within a run.
Results: bench/results/browser_formats.json (with the browser's memory limits, the machine and its load).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from bench.browser import Chromium
from bench.head_formats import _model, nbits

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / "cache" / "browser_formats"
SHAPES = {"q/k/v 640x2048": (640, 2048), "gate+up 640x4096": (640, 4096), "down 2048x640": (2048, 640),
          "LM head 640x262144": (640, 262144)}
HEAD = "LM head 640x262144"


def _int8_dynamic(w: np.ndarray):
    """x -> DynamicQuantizeLinear (uint8, per tensor) -> MatMulInteger with int8 weights (per output channel,
    symmetric) -> float, times both scales."""
    scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
             helper.make_node("MatMulInteger", ["xq", "w", "xz", "wz"], ["acc"]),
             helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["xs", "s"], ["scale"]),
             helper.make_node("Mul", ["accf", "scale"], ["y"])]
    inits = [numpy_helper.from_array(q, "w"), numpy_helper.from_array(np.zeros(w.shape[1], np.int8), "wz"),
             numpy_helper.from_array(scale, "s")]
    return _model(nodes, inits, TensorProto.FLOAT, *w.shape)


def _float(w: np.ndarray, weights: str, compute: str):
    """float32 MatMul on float32 (`weights` fp32) or float16 weights cast to float32; or (`compute` fp16) a float16
    MatMul between float32 casts, as a float16 graph behind a float32 interface."""
    half = TensorProto.FLOAT16
    if compute == "fp16":
        nodes = [helper.make_node("Cast", ["x"], ["x16"], to=half), helper.make_node("MatMul", ["x16", "w"], ["y16"]),
                 helper.make_node("Cast", ["y16"], ["y"], to=TensorProto.FLOAT)]
    elif weights == "fp16":
        nodes = [helper.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT), helper.make_node("MatMul", ["x", "wf"], ["y"])]
    else:
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    init = numpy_helper.from_array(w.astype(np.float16) if weights == "fp16" else w, "w")
    return _model(nodes, [init], TensorProto.FLOAT, *w.shape)


FORMATS = {
    "int4 MatMulNBits, accuracy level 0": lambda w: nbits(w, 4, 32, 0),
    "int4 MatMulNBits, accuracy level 4": lambda w: nbits(w, 4, 32, 4),
    "int8 DynamicQuantizeLinear + MatMulInteger": _int8_dynamic,
    "fp16 weights, Cast to fp32": lambda w: _float(w, "fp16", "fp32"),
    "fp16 MatMul": lambda w: _float(w, "fp16", "fp16"),
    "fp32": lambda w: _float(w, "fp32", "fp32"),
}


def weights(shape: str) -> np.ndarray:
    k, n = SHAPES[shape]
    return (np.random.default_rng(k * 7 + n).standard_normal((k, n)) * 0.02).astype(np.float32)


@functools.cache
def _edge_columns(shape: str) -> np.ndarray:
    w = weights(shape)
    return np.concatenate([w[:, :16], w[:, -16:]], axis=1).astype(np.float64)


def build(shape: str, fmt: str) -> tuple[str, int]:
    """(file name in CACHE, bytes of weights) of `fmt` at `shape`, written once."""
    k, n = SHAPES[shape]
    name = f"{k}x{n}-{list(FORMATS).index(fmt)}.onnx"
    path = CACHE / name
    if not path.exists():
        w = weights(shape)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(FORMATS[fmt](w).SerializeToString())
        tmp.rename(path)
    return name, sum(len(t.raw_data) for t in onnx.load(str(path)).graph.initializer)


def inputs(tokens: int, width: int) -> np.ndarray:
    """x[i] = 0.5 sin(i), as tools/web/pages/formats.mjs computes it."""
    return (0.5 * np.sin(np.arange(tokens * width, dtype=np.float64))).astype(np.float32).reshape(tokens, width)


def native(cells: list[dict], threads: int, budget: float, reps: int) -> list[dict]:
    """The page's loop in onnxruntime (Python, CPU EP)."""
    out = []
    for cell in cells:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        t0 = time.perf_counter()
        session = ort.InferenceSession(str(CACHE / cell["file"]), options, providers=["CPUExecutionProvider"])
        create = (time.perf_counter() - t0) * 1e3
        feed = {"x": inputs(cell["tokens"], cell["width"])}
        y = session.run(None, feed)[0]
        ms, start = [], time.perf_counter()
        while len(ms) < reps and (len(ms) < 2 or time.perf_counter() - start < budget):
            t = time.perf_counter()
            y = session.run(None, feed)[0]
            ms.append((time.perf_counter() - t) * 1e3)
        out.append({"file": cell["file"], "tokens": cell["tokens"], "create_ms": create, "ms": ms,
                    "head": y[-1, :16].tolist(), "tail": y[-1, -16:].tolist()})
        del session
    return out


def relative_error(cell: dict, shape: str) -> float:
    """Largest error of the last row's first and last 16 outputs against float64 x @ w, over their largest |value|."""
    ref = inputs(cell["tokens"], SHAPES[shape][0])[-1].astype(np.float64) @ _edge_columns(shape)
    got = np.array(cell["head"] + cell["tail"])
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_bytes": memory, "onnxruntime": ort.__version__}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.browser_formats", description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=3.0, help="seconds of timed runs per cell (at least 2 runs)")
    ap.add_argument("--reps", type=int, default=20, help="at most this many timed runs per cell")
    ap.add_argument("--tokens", default="1,128", help="rows of x for the layers' shapes (the LM head: 1)")
    ap.add_argument("--runtimes", default="native1,native2,wasm1,wasm2,webgpu")
    ap.add_argument("--shapes", default=",".join(SHAPES), help="a comma-separated subset of: " + ", ".join(SHAPES))
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "browser_formats.json")
    args = ap.parse_args(argv)
    plan = []
    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            raise SystemExit(f"--shapes: {shape!r} is not one of {', '.join(SHAPES)}")
        for fmt in FORMATS:
            file, size = build(shape, fmt)
            for tokens in [1] if shape == HEAD else [int(t) for t in args.tokens.split(",")]:
                plan.append({"shape": shape, "format": fmt, "file": file, "bytes": size, "tokens": tokens,
                             "width": SHAPES[shape][0]})
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
              "load_before": os.getloadavg(), "budget_s": args.budget, "runs": {}}
    cells = [{k: c[k] for k in ("file", "tokens", "width")} for c in plan]
    with Chromium() as browser:
        result["chromium"] = browser.version
        result["browser_limits"] = browser.run("/pages/probe.mjs")
        for runtime in args.runtimes.split(","):
            t0 = time.time()
            if runtime.startswith("native"):
                got = native(cells, int(runtime[-1]), args.budget, args.reps)
            else:
                ep, threads = ("webgpu", 1) if runtime == "webgpu" else ("wasm", int(runtime[-1]))
                page = browser.run("/pages/formats.mjs", {"ep": ep, "threads": threads, "cells": cells,
                                                          "budget": args.budget, "reps": args.reps},
                                   mounts={"formats": CACHE}, timeout=3600)
                result["onnxruntime_web"], got = page["versions"], page["cells"]
            for c, g in zip(plan, got):
                row = {**c, **{k: v for k, v in g.items() if k not in ("head", "tail")}}
                if "ms" in g:
                    row.update(ms_median=statistics.median(g["ms"]), ms_min=min(g["ms"]),
                               relative_error=relative_error(g, c["shape"]), head=g["head"][:4])
                result["runs"].setdefault(runtime, []).append(row)
            print(f"{runtime}: {time.time() - t0:.0f} s", flush=True)
    result["load_after"] = os.getloadavg()
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    return 0


def table(result: dict, runtimes: list[str] | None = None) -> str:
    """The README's table: median ms per call (weights' GB/s for one token) per runtime."""
    runtimes = runtimes or list(result["runs"])
    lines = [f"| shape | tokens | format | weight MB | {' | '.join(runtimes)} |",
             "|---|---|---|---|" + "---|" * len(runtimes)]
    for i, c in enumerate(result["runs"][runtimes[0]]):
        cols = []
        for r in runtimes:
            g = result["runs"][r][i]
            if "ms_median" not in g:
                cols.append("fails")
                continue
            gbs = f" ({c['bytes'] / g['ms_median'] / 1e6:.1f})" if c["tokens"] == 1 else ""
            cols.append(f"{g['ms_median']:.3g}{gbs}" + (" CPU fallback" if g.get("cpu_fallback") else ""))
        lines.append(f"| {c['shape']} | {c['tokens']} | {c['format']} | {c['bytes'] / 1e6:.1f} | {' | '.join(cols)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
