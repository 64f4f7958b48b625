"""A small ONNX graph builder: named nodes, initializers from numpy, deduplicated constants."""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSETS = {"": 23, "com.microsoft": 1}
ROWS_FROM = "rows_from"      # initializer doc_string key: the checkpoint tensors behind its rows


class Graph:
    def __init__(self, packer=None):
        """packer: a stream.Packer, which packs MatMul weights (and the embedding table) as they are made, or a
        spill.Spill, which writes float weights too large for protobuf to disk as they are made."""
        self.packer = packer
        self._weights: dict[str, onnx.TensorProto] = {}      # with a packer: initializers by name
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._consts: dict[tuple, str] = {}
        self._taken: set[str] = set()

    def _unique(self, name: str) -> str:
        base, i = name, 1
        while name in self._taken:
            name, i = f"{base}_{i}", i + 1
        self._taken.add(name)
        return name

    def init(self, name: str, array: np.ndarray, rows_from: list[tuple[str, int]] | None = None) -> str:
        """Add a weight initializer (kept under `name`). rows_from: the checkpoint tensors whose rows
        make up its output dimension, in order, as (name, rows); recorded in the doc_string so that the
        quantizer can carry a tensor's stored blocks over (export.converters.onnx.quantize)."""
        name = self._unique(name)
        if self.packer is not None and self.packer.take(name, array):
            return name
        t = self.packer.spill(name, array) if self.packer is not None else None
        if t is None:
            t = numpy_helper.from_array(np.array(array, order="C", copy=None), name)
        if rows_from:
            t.doc_string = json.dumps({ROWS_FROM: rows_from})
        self.initializers.append(t)
        if self.packer is not None:
            self._weights[name] = t
        return name

    def const(self, value, dtype=np.int64) -> str:
        """A small constant, shared between all nodes that use the same value."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init(f"{getattr(self, '_prefix', '')}const_{len(self._consts)}", arr)
        return self._consts[key]

    def op(self, op_type: str, inputs: list[str], name: str, *, domain: str = "", outputs: int | list[str] = 1,
           **attrs):
        """Append a node named `name`; returns its output name (or a list when outputs > 1).
        In an `outputs` list, "" marks an optional output left out."""
        name = self._unique(name)
        if isinstance(outputs, int):
            outs = [f"{name}/output_{i}" for i in range(outputs)]
        else:
            outs = [f"{name}/output_{i}" if o is None else o for i, o in enumerate(outputs)]
        node = helper.make_node(op_type, inputs, outs, name=name, domain=domain or None, **attrs)
        packed = self._pack(node) if op_type == "MatMul" and self.packer is not None else None
        self.nodes.extend(packed or [node])
        return outs[0] if len(outs) == 1 else outs

    def _pack(self, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        """The packer's replacement of a MatMul on the initializer made just before it (Body.linear's
        weight, which nothing else reads), or None."""
        weight = self._weights.get(node.input[1])
        if weight is None or not self.initializers or self.initializers[-1] is not weight:
            return None
        packed = self.packer.matmul(node, weight)
        if packed is not None:
            self.initializers.pop()
            del self._weights[weight.name]
        return packed

    def input(self, name: str, elem_type: int, shape: list, default: np.ndarray | None = None) -> str:
        """A graph input; with `default`, an optional one (an initializer of the same name, which callers
        may override; onnxruntime lists it among the overridable initializers, not the inputs)."""
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        if default is not None:
            self._taken.add(name)
            self.initializers.append(numpy_helper.from_array(np.asarray(default), name))
        return name

    def output(self, name: str, elem_type: int, shape: list):
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    def branch(self, prefix: str) -> "Graph":
        """A subgraph (an If's branch): its own nodes and constants, names unique across the whole model,
        free to read the enclosing graph's values by name."""
        sub = Graph()
        sub._taken = self._taken
        sub._prefix = prefix
        return sub

    def subgraph(self, outputs: list[str], name: str) -> onnx.GraphProto:
        """This branch as a GraphProto returning `outputs` (types left to onnxruntime's inference)."""
        outs = [helper.make_empty_tensor_value_info(o) for o in outputs]
        return helper.make_graph(self.nodes, name, [], outs, self.initializers)

    def model(self, doc: str = "") -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "main", self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in OPSETS.items()],
                                  producer_name="gemma-export", doc_string=doc)
        model.ir_version = 10
        return model


FLOAT, INT64, INT32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32
