"""Quantization while the graph is built, the memory-lean path of quantize.quantize: every MatMul weight the
recipe stores as 4- or 8-bit blocks becomes MatMulNBits the moment the builder makes it, and the tied
embedding table is packed the moment it is read. So no float32 copy of the whole decoder is ever held as
ONNX tensors (a 4B Gemma's is 15.5 GB), and the table never becomes one TensorProto (a 4B Gemma's float32
table is 2.7 GB: protobuf cannot copy or serialize a message past 2 GB).

Each weight is packed by onnxruntime's MatMulNBitsQuantizer itself (its node quantizer's block
quantization and its tensor serialization), with the settings quantize.quantize's whole-graph pass gives
that node; quantize.quantize then places the packed tensors in the order that pass leaves them and runs
its remaining steps (the table's lookup, float16 weights, carried blocks). The artifacts are byte for byte
those of the whole-graph pass (tests/test_onnx_stream.py)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...quantize.recipes import Layout, Recipe
from .spill import Spill
from .quantize import HEAD, HEAD_WEIGHT, TABLE, check_layout, level, nbits_quantizer, node_layout, quantize, rows_of, streams


COLUMNS = 16384          # output columns packed at a time (the table's rows: 2,560 floats each for a 4B Gemma)


@dataclasses.dataclass
class Packed:
    """One weight as MatMulNBits stores it: its packed blocks and scales (TensorProtos named as the
    quantizer names them) and the node's attributes."""
    name: str                       # the MatMul node's name
    tensors: list[onnx.TensorProto]
    attrs: dict

    def node(self, x: str, out: str) -> onnx.NodeProto:
        bits = self.attrs["bits"]
        return helper.make_node("MatMulNBits", [x, *(t.name for t in self.tensors)], [out], name=f"{self.name}_Q{bits}",
                                domain="com.microsoft", **self.attrs)


def pack(w: np.ndarray, weight: str, node: str, quantizer) -> Packed:
    """w [K, N] float32 (a view will do) -> Packed, as MatMulNBitsQuantizer's node quantizer packs a MatMul's 2-D
    constant weight. Its blocks run down the K inputs of one output column, so it is fed COLUMNS columns at a
    time: a contiguous copy of that many, not of the whole transposed table."""
    import onnx_ir as ir
    cfg = quantizer.config
    parts = [quantizer.qbits_block_quant(np.ascontiguousarray(w[:, c:c + COLUMNS]))
             for c in range(0, w.shape[1], COLUMNS)]
    packed = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    scales = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    del parts
    tensors = [ir.serde.serialize_tensor(ir.Tensor(packed, name=f"{weight}_Q{cfg.bits}")),
               ir.serde.serialize_tensor(ir.Tensor(scales, name=f"{weight}_scales"))]
    attrs = dict(K=w.shape[0], N=w.shape[1], bits=cfg.bits, block_size=cfg.block_size)
    if cfg.accuracy_level:
        attrs["accuracy_level"] = cfg.accuracy_level
    return Packed(node, tensors, attrs)


class Packer:
    """Graph(packer=...) hands it the weights as they are made (Graph.init, Graph.op); one per graph."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.table_layout = recipe.layout(TABLE, table=True)
        check_layout(recipe, TABLE, self.table_layout)
        self.rows_from: dict[str, list[tuple[str, int]]] = {}    # packed weight -> checkpoint rows (carry_blocks)
        self.layouts: dict[str, Layout] = {}                     # packed MatMul node -> its layout
        self.groups: dict[Layout, list[onnx.TensorProto]] = {}   # packed tensors per layout, in node order
        self.head: Packed | None = None                          # the table as the tied LM head's weight
        self.table_shape: tuple[int, int] | None = None
        self._quantizers: dict[Layout, object] = {}

    def _quantizer(self, lay: Layout):
        if lay not in self._quantizers:
            self._quantizers[lay] = nbits_quantizer(None, lay.bits, lay.block, level(lay)).node_quantizer
        return self._quantizers[lay]

    def spill(self, name: str, array: np.ndarray) -> None:
        """Graph.init: the weights a Packer leaves float stay in the graph (spill.Spill is the float recipes')."""
        return None

    def take(self, name: str, array: np.ndarray) -> bool:
        """Graph.init: True when the array was packed here instead (the embedding table, under a 4/8-bit
        recipe: packed as the head's weight, table.T, which is what the lookup reads too)."""
        if name != TABLE or self.table_layout is None:
            return False
        self.table_shape = tuple(array.shape)
        self.head = pack(np.asarray(array, np.float32).T, HEAD_WEIGHT, HEAD, self._quantizer(self.table_layout))
        self.rows_from[HEAD_WEIGHT] = [(TABLE, array.shape[0])]
        return True

    def matmul(self, node: onnx.NodeProto, weight: onnx.TensorProto) -> list[onnx.NodeProto] | None:
        """Graph.op on a MatMul whose weight is an initializer: its replacement, or None to keep it (float32
        or float16 layouts; weights that are not 2-D, which quantize.quantize's passes handle as before)."""
        rows = rows_of(weight)
        lay = node_layout(self.recipe, node.name, weight.name, rows)
        check_layout(self.recipe, node.name, lay)
        if lay is None or lay.bits == 16 or len(weight.dims) != 2:
            return None
        packed = pack(numpy_helper.to_array(weight), weight.name, node.name, self._quantizer(lay))
        self.layouts[node.name] = lay
        if rows:
            self.rows_from[weight.name] = rows
        self.groups.setdefault(lay, []).extend(packed.tensors)
        return [packed.node(node.input[0], node.output[0])]


def build_quantized(build: Callable[["Packer | Spill | None"], onnx.ModelProto], recipe: Recipe,
                    stored: dict | None = None, scratch: Path | None = None) -> tuple[onnx.ModelProto, dict]:
    """quantize.quantize(build(packer), recipe, stored, packer): the graph built with a Packer when the recipe
    packs weights into blocks; float32 and all-float16 recipes take the whole-graph path, with the weights past
    spill.SPILL_BYTES written to a scratch file in `scratch` as they are made (folder.save_model moves them)."""
    if streams(recipe):
        packer = Packer(recipe)
        return quantize(build(packer), recipe, stored, packer)
    return quantize(build(Spill(scratch) if scratch is not None else None), recipe, stored)
