"""The embedding table of a `--target web` graph, stored in a form its uses (the lookup and a causal LM's tied LM head)
read with operators every onnxruntime-web build implements (no GatherBlockQuantized, which transformers.js's default
wasm bundle lacks; README "Causal Gemma on the web", "EmbeddingGemma on the web"). HalfTable: float16, cast to float32
in the graph (tied: the whole table once, which onnxruntime folds when the session is created: float32 speed for half
the download; lookup only, as EmbeddingGemma's: the gathered rows, so the table stays float16 in memory). Int8Table,
int8 rows:

- stored once, transposed: codes int8 [d, V] and one scale per vocabulary row [V] (symmetric, the rounding of
  onnxruntime's MatMulNBits quantizer with one block per row: export.quantize.simulate.mlas_values);
- the LM head: DynamicQuantizeLinear (activations uint8, one scale per tensor) + MatMulInteger + the two scales;
  measured per byte the fastest int8 path on onnxruntime-web's wasm build (bench/web_formats.py);
- the lookup: Gather along axis 1 of the same codes, the row scales gathered alike, multiplied."""
from __future__ import annotations

import numpy as np
import onnx

from .graph import Graph

CODES, SCALES = "model.embed_tokens.weight_q8", "model.embed_tokens.weight_scales"
HALF = "model.embed_tokens.weight_fp16"


def quantize_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """w [rows, K] float32 -> (codes int8 [rows, K], scales float32 [rows]): value = code * scale, scale =
    (the row's signed extreme) / -128, codes rounded half up and clipped to -128..127 (MatMulNBits' symmetric
    8-bit rule with a block the row's length)."""
    w = np.asarray(w, np.float32)
    hi, lo = w.max(-1, keepdims=True), w.min(-1, keepdims=True)
    s = np.where(np.abs(hi) > np.abs(lo), hi, lo) / np.float32(-128)
    inv = np.divide(1, s, out=np.zeros_like(s), where=s != 0)
    codes = np.clip(np.floor(w * inv + np.float32(128) + np.float32(0.5)), 0, 255) - 128
    return codes.astype(np.int8), s[:, 0].astype(np.float32)


def int8_matmul(g: Graph, x: str, codes: str, scales: str, node: str) -> str:
    """x [..., K] float32 @ (codes int8 [K, N] * scales [N]) -> [..., N] float32, activations quantized per
    tensor by DynamicQuantizeLinear."""
    xq, xs, xz = g.op("DynamicQuantizeLinear", [x], f"{node}/DynamicQuantizeLinear", outputs=3)
    acc = g.op("MatMulInteger", [xq, codes, xz], f"{node}/MatMulInteger")
    y = g.op("Cast", [acc], f"{node}/Cast", to=onnx.TensorProto.FLOAT)
    return g.op("Mul", [y, g.op("Mul", [xs, scales], f"{node}/scale")], f"{node}/Mul")


class HalfTable:
    """The table as float16 [V, d] in graph `g`; tied: one Cast to float32 that both uses read, else the lookup
    casts the rows it gathers."""

    def __init__(self, g: Graph, table: np.ndarray, tied: bool = True):
        self.g, self.tied = g, tied
        self.half = g.init(HALF, table.astype(np.float16))
        self.rows = g.op("Cast", [self.half], "/model/embed_tokens/Cast", to=onnx.TensorProto.FLOAT) if tied else None

    def lookup(self, ids: str) -> str:
        if self.tied:
            return self.g.op("Gather", [self.rows, ids], "/model/embed_tokens/Gather")
        rows = self.g.op("Gather", [self.half, ids], "/model/embed_tokens/Gather")
        return self.g.op("Cast", [rows], "/model/embed_tokens/Cast", to=onnx.TensorProto.FLOAT)

    def head(self, h: str) -> str:
        return self.g.op("Gemm", [h, self.rows], "/lm_head/Gemm", transB=1)



class Int8Table:
    """The table as codes [d, V] + scales [V] in graph `g`; .lookup(ids) and .head(h) read them (`tied` changes
    nothing: the lookup reads the head's layout)."""

    def __init__(self, g: Graph, table: np.ndarray, tied: bool = True):
        codes, scales = quantize_rows(table)
        self.g, self.width = g, table.shape[1]
        self.codes = g.init(CODES, np.ascontiguousarray(codes.T))
        self.scales = g.init(SCALES, scales)

    def lookup(self, ids: str) -> str:
        """ids [B, T] -> rows [B, T, d] float32."""
        g, n = self.g, "/model/embed_tokens"
        cols = g.op("Gather", [self.codes, ids], f"{n}/Gather", axis=1)                   # [d, B, T]
        rows = g.op("Transpose", [cols], f"{n}/Transpose", perm=[1, 2, 0])
        rows = g.op("Cast", [rows], f"{n}/Cast", to=onnx.TensorProto.FLOAT)
        scale = g.op("Unsqueeze", [g.op("Gather", [self.scales, ids], f"{n}/scales"), g.const([-1])],
                     f"{n}/Unsqueeze")
        return g.op("Mul", [rows, scale], f"{n}/Mul")

    def head(self, h: str) -> str:
        """h [N, d] -> logits [N, V]."""
        return int8_matmul(self.g, h, self.codes, self.scales, "/lm_head")


TABLES = {"fp16": HalfTable, "int8": Int8Table}       # the web recipes' table storage -> its class


def table_storage(layout) -> str | None:
    """The web table storage (a TABLES key) of a web recipe's table Layout; None: the float32 table."""
    return None if layout is None else "fp16" if layout.bits == 16 else "int8"


def embed_tokens(body, ids: str, storage: str | None, tied: bool = True):
    """body.embed(ids) (export/converters/onnx/body.py) with the table stored as `storage` (a TABLES key; None:
    float32, as body.embed stores it) -> what a tied LM head reads: the table's initializer or its TABLES object."""
    if storage is None:
        return body.embed(ids)
    table = TABLES[storage](body.g, body.w("model.embed_tokens.weight"), tied)
    body.embed(ids, table.lookup)
    return table
