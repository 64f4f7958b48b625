"""What each candidate weight format costs per byte on onnxruntime-web's wasm build, at Gemma 3 270M's shapes:
`python -m bench.web_formats [--calls 20] [--out bench/results/web_formats.json]`.

One [1, 640] x [640, N] product (a decode step's matmul) per shape -- q/o-like 640 x 2048, gate_up-like
640 x 4096, the tied LM head 640 x 262,144 -- and format: int4 MatMulNBits (blocks of 32, accuracy level 4: the
native int4 recipe), int8 MatMulNBits (blocks of 32), int8 per output channel as DynamicQuantizeLinear +
MatMulInteger (export/converters/onnx/web_table.py), float16 weights cast to float32 in the graph, float32.
Random weights; each graph in its own session, timed by tools/web/bench_ops.mjs on onnxruntime-web's wasm build
in Node (the wasm code the browser's plain wasm bundle runs) with 1 and 2 threads, and by onnxruntime (Python,
native) alike. The figure is the median wall time of the timed calls; ns per weight byte is that over the bytes
the graph stores."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from bench.head_formats import nbits
from export.converters.onnx.graph import FLOAT, Graph
from export.converters.onnx.web_table import int8_matmul, quantize_rows

WEB = Path(__file__).resolve().parents[1] / "tools" / "web"
SHAPES = {"q/o 640x2048": 2048, "gate_up 640x4096": 4096, "LM head 640x262144": 262144}
WIDTH = 640


def _graph(build) -> onnx.ModelProto:
    """x [1, WIDTH] -> build(g, x) as the graph's output y."""
    g = Graph()
    build(g, g.input("x", FLOAT, [1, WIDTH]))
    g.nodes[-1].output[0] = "y"          # the last node's output is the result
    g.output("y", FLOAT, [1, None])
    return g.model()


def fp32(w):
    return _graph(lambda g, x: g.op("MatMul", [x, g.init("w", w)], "mm"))


def fp16(w):
    return _graph(lambda g, x: g.op("MatMul", [x, g.op("Cast", [g.init("w16", w.astype(np.float16))], "cast",
                                                          to=onnx.TensorProto.FLOAT)], "mm"))


def int8_channel(w):
    codes, scales = quantize_rows(w.T)
    return _graph(lambda g, x: int8_matmul(g, x, g.init("codes", np.ascontiguousarray(codes.T)),
                                           g.init("scales", scales), "mm"))


FORMATS = {
    "int4 MatMulNBits b32": lambda w: nbits(w, 4, 32, 4),
    "int8 MatMulNBits b32": lambda w: nbits(w, 8, 32, 4),
    "int8 DynamicQuantizeLinear+MatMulInteger": int8_channel,
    "fp16 -> fp32 (Cast + MatMul)": fp16,
    "fp32 MatMul": fp32,
}


def weight_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer if len(t.raw_data) > 64)


def native_ms(path: Path, threads: int, calls: int) -> list[float]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    s = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = {"x": (np.sin(np.arange(WIDTH, dtype=np.float32)) * 0.5)[None]}
    s.run(None, x)
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        s.run(None, x)
        out.append((time.perf_counter() - t) * 1e3)
    return out


def wasm_ms(paths: list[Path], threads: int, calls: int) -> list[list[float]]:
    jobs = [{"file": str(p), "shape": [1, WIDTH]} for p in paths]
    run = subprocess.run(["node", "bench_ops.mjs", str(threads), str(calls)], cwd=WEB, input=json.dumps(jobs),
                         capture_output=True, text=True, timeout=3600, check=True)
    return [r["ms"] for r in json.loads(run.stdout.strip().splitlines()[-1])]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.web_formats", description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--out", default="bench/results/web_formats.json")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape, n in SHAPES.items():
            w = (np.random.default_rng(n).standard_normal((WIDTH, n)) * 0.02).astype(np.float32)
            paths = []
            for name, build in FORMATS.items():
                model = build(w)
                path = Path(tmp) / f"{len(rows) + len(paths)}.onnx"
                onnx.save_model(model, str(path))
                paths.append(path)
                rows.append({"shape": shape, "format": name, "weight_bytes": weight_bytes(model)})
                del model
            del w
            mine = rows[-len(paths):]
            for threads in (1, 2):
                for row, ms in zip(mine, wasm_ms(paths, threads, args.calls)):
                    row[f"wasm_{threads}t_ms"] = statistics.median(ms)
                for row, path in zip(mine, paths):
                    row[f"native_{threads}t_ms"] = statistics.median(native_ms(path, threads, args.calls))
            for path in paths:
                path.unlink()
            for row in mine:
                for k in [k for k in row if k.endswith("_ms")]:
                    row[k.removesuffix("_ms") + "_ns_per_byte"] = row[k] * 1e6 / row["weight_bytes"]
                print(json.dumps(row), flush=True)
    result = {"what": __doc__.split("\n\n")[0], "date": time.strftime("%Y-%m-%d"), "host": platform.node(),
              "load_average": list(os.getloadavg()), "calls": args.calls,
              "onnxruntime": ort.__version__, "onnxruntime_web": json.loads(
                  (WEB / "node_modules/onnxruntime-web/package.json").read_text())["version"], "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"| shape | format | MB | wasm 1 thread ms | wasm 2 threads ms | native 2 threads ms | wasm 2t ns/byte |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['format']} | {r['weight_bytes'] / 1e6:.2f} | {r['wasm_1t_ms']:.2f} | "
              f"{r['wasm_2t_ms']:.2f} | {r['native_2t_ms']:.2f} | {r['wasm_2t_ns_per_byte']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
