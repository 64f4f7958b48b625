"""What the tied LM head costs per decode step in each weight format onnxruntime's CPU kernels offer:
`python -m bench.head_formats [--rows 262144] [--width 640] [--rounds 12]`.

One [1, width] x [width, rows] product (Gemma 3's head: 640 x 262,144) per format, random weights, each format in
its own session with one thread, interleaved; the figure is the thread's CPU time per call (the least over the
rounds), which a machine shared with other jobs inflates far less than wall time. Formats: MatMulNBits (4 or 8 bits,
blocks of 32 or 128, int8 activations: the quantized recipes' accuracy level 4; float activations), MatMulNBits on
float16 activations (its only way to float16 block scales), DynamicQuantizeMatMul (int8 per output channel).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from export.converters.onnx.graph import OPSETS
from export.converters.onnx.quantize import _quiet, nbits_quantizer


def _model(nodes, inits, dtype, width, rows):
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", dtype, ["tokens", width])],
                              [helper.make_tensor_value_info("y", dtype, ["tokens", rows])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in OPSETS.items()],
                             ir_version=10)


def nbits(w: np.ndarray, bits: int, block: int, accuracy: int | None, half: bool = False):
    dtype = TensorProto.FLOAT16 if half else TensorProto.FLOAT
    weight = numpy_helper.from_array(w.astype(np.float16) if half else w, "w")
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="head")], [weight], dtype, *w.shape)
    with _quiet():
        q = nbits_quantizer(model, bits, block, accuracy)
        q.process()
    return q.model.model


def per_channel_int8(w: np.ndarray):
    scale = np.abs(w).max(axis=0) / 127
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    node = helper.make_node("DynamicQuantizeMatMul", ["x", "w", "s", "", ""], ["y"], domain="com.microsoft")
    return _model([node], [numpy_helper.from_array(q, "w"), numpy_helper.from_array(scale.astype(np.float32), "s")],
                  TensorProto.FLOAT, *w.shape)


FORMATS = {
    "int4, blocks of 32 (int4 recipe)": lambda w: nbits(w, 4, 32, 4),
    "int4, blocks of 128 (int4-b128)": lambda w: nbits(w, 4, 128, 4),
    "int4, blocks of 32, float activations": lambda w: nbits(w, 4, 32, None),
    "int4, blocks of 32, float16 activations and scales": lambda w: nbits(w, 4, 32, 4, half=True),
    "int8, blocks of 32": lambda w: nbits(w, 8, 32, 4),
    "int8, blocks of 128": lambda w: nbits(w, 8, 128, 4),
    "int8 per channel (DynamicQuantizeMatMul)": per_channel_int8,
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.head_formats", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=262144)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--calls", type=int, default=10, help="calls per round")
    args = ap.parse_args(argv)
    w = (np.random.default_rng(0).standard_normal((args.width, args.rows)) * 0.02).astype(np.float32)
    runs = {}
    for name, build in FORMATS.items():
        model = build(w)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        x = np.full((1, args.width), 0.1, np.float16 if "float16" in name else np.float32)
        runs[name] = (session, x, sum(len(t.raw_data) for t in model.graph.initializer))
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(args.rounds):
        for name, (session, x, _) in runs.items():
            session.run(None, {"x": x})
            t = time.thread_time()
            for _ in range(args.calls):
                session.run(None, {"x": x})
            best[name] = min(best[name], (time.thread_time() - t) / args.calls)
    print(f"| head format ({args.width} x {args.rows}) | MB read | CPU ms per call (1 thread) | GB/s |")
    print("|---|---|---|---|")
    for name, (_, _, size) in runs.items():
        print(f"| {name} | {size / 1e6:.1f} | {best[name] * 1e3:.2f} | {size / best[name] / 1e9:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
