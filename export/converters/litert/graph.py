"""Read what a .tflite holds without running it: the ops each signature executes, with
STABLEHLO_COMPOSITE ops named by their composite (`STABLEHLO_COMPOSITE:odml.rms_norm`). Reads the
flatbuffer through mmap, so multi-GB models cost no memory."""
from __future__ import annotations

import collections
import mmap
import re
from pathlib import Path
from typing import Callable

from ai_edge_litert import schema_py_generated as fb

from runtime_py.contract import KV_CACHE_PREFIX, LOGITS

_OP_NAMES = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}


def read_model(path: str | Path, read: Callable):
    """read(model, buf) on the .tflite at `path`: `model` is its flatbuffer `fb.Model` over the file's memory
    map `buf`. Every flatbuffer object `read` makes dies when it returns (its frame goes), so the map can
    close; `read` returns plain values only."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return read(fb.Model.GetRootAs(buf, 0), buf)


def signature_ops(path: str | Path) -> dict[str, collections.Counter]:
    """{signature name: Counter of op names} over each signature's main subgraph (composite
    decompositions are separate subgraphs and not counted)."""
    return read_model(path, _signature_ops)


def _signature_ops(model, buf) -> dict[str, collections.Counter]:
    codes = _opcodes(model)
    out = {}
    for s in range(model.SignatureDefsLength()):
        sig = model.SignatureDefs(s)
        graph = model.Subgraphs(sig.SubgraphIndex())
        ops = collections.Counter()
        for j in range(graph.OperatorsLength()):
            op = graph.Operators(j)
            name = _OP_NAMES.get(codes[op.OpcodeIndex()], str(codes[op.OpcodeIndex()]))
            if op.BuiltinOptions2Type() == fb.BuiltinOptions2.StableHLOCompositeOptions:
                table = op.BuiltinOptions2()
                opts = fb.StableHLOCompositeOptions()
                opts.Init(table.Bytes, table.Pos)
                name = f"{name}:{opts.Name().decode()}"
            ops[name] += 1
        out[sig.SignatureKey().decode()] = ops
    return out


def cache_readers(path: str | Path, signature: str) -> list[tuple[str, str]]:
    """(op, KV cache input name) for every op of `signature`'s main subgraph that reads a KV cache: the cache input
    itself, or the cache a DYNAMIC_UPDATE_SLICE wrote into it (followed through those only, so a RESHAPE, TRANSPOSE
    or CONCATENATION of a cache shows up as its reader). BATCH_MATMUL reads as `BATCH_MATMUL:adj_y` when it
    contracts the cache's last axis."""
    return read_model(path, lambda model, buf: _cache_readers(model, signature))


def _cache_readers(model, signature: str) -> list[tuple[str, str]]:
    codes = _opcodes(model)
    sig = next(model.SignatureDefs(s) for s in range(model.SignatureDefsLength())
               if model.SignatureDefs(s).SignatureKey().decode() == signature)
    graph = model.Subgraphs(sig.SubgraphIndex())
    cache = {sig.Inputs(i).TensorIndex(): sig.Inputs(i).Name().decode() for i in range(sig.InputsLength())
             if sig.Inputs(i).Name().decode().startswith(KV_CACHE_PREFIX)}
    out = []
    for j in range(graph.OperatorsLength()):          # flatbuffer ops are in execution order
        op = graph.Operators(j)
        name = _OP_NAMES.get(codes[op.OpcodeIndex()], str(codes[op.OpcodeIndex()]))
        read = [cache[op.Inputs(k)] for k in range(op.InputsLength()) if op.Inputs(k) in cache]
        if name == "BATCH_MATMUL":
            opts = fb.BatchMatMulOptions()
            opts.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
            name += ":adj_y" if opts.AdjY() else ""
        out += [(name, r) for r in read]
        if name == "DYNAMIC_UPDATE_SLICE" and read:
            cache[op.Outputs(0)] = read[0]
    return out


_TYPE_NAMES = {v: k for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
WEIGHT_INPUT = {"FULLY_CONNECTED": 1, "EMBEDDING_LOOKUP": 1}


def _opcodes(model) -> list[int]:
    return [max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode())
            for i in range(model.OperatorCodesLength())]


def weight_ops(model):
    """Yield (subgraph, op, op name, weight tensor) for every FULLY_CONNECTED and EMBEDDING_LOOKUP of
    every signature's subgraph of a flatbuffer `fb.Model` (a weight fed through DEQUANTIZE, as in
    weight-only recipes: the stored one)."""
    codes = _opcodes(model)
    for s in range(model.SignatureDefsLength()):
        graph = model.Subgraphs(model.SignatureDefs(s).SubgraphIndex())
        dequantized = {}          # output tensor of a DEQUANTIZE op -> its input
        for j in range(graph.OperatorsLength()):
            op = graph.Operators(j)
            if _OP_NAMES.get(codes[op.OpcodeIndex()]) == "DEQUANTIZE":
                dequantized[op.Outputs(0)] = op.Inputs(0)
        for j in range(graph.OperatorsLength()):
            op = graph.Operators(j)
            name = _OP_NAMES.get(codes[op.OpcodeIndex()])
            if name in WEIGHT_INPUT:
                index = op.Inputs(WEIGHT_INPUT[name])
                yield graph, op, name, graph.Tensors(dequantized.get(index, index))


def op_scope(graph, op) -> str:
    """An op's scope as ai-edge-quantizer's `get_op_scope` joins it: its output tensors' names, each followed by `;`."""
    return "".join(graph.Tensors(op.Outputs(k)).Name().decode() + ";" for k in range(op.OutputsLength()))


def scope_regex(scope: str) -> str:
    """An ai-edge-quantizer config regex matching exactly the op of scope `scope` (op_scope)."""
    return f"^{re.escape(scope)}$"


def weight_records(path: str | Path) -> list[tuple[str, str, bool, str]]:
    """(op scope, op name, is the LM head, weight dtype) of every FULLY_CONNECTED and EMBEDDING_LOOKUP of every
    signature (weight_ops). The LM head is the FULLY_CONNECTED writing `*logits*`, or one whose weight has the
    embedding table's shape: where the logits are soft-capped (Gemma 2) the head's output is an unnamed
    intermediate, and the converter has folded 1/cap into its copy of the table."""
    return read_model(path, _weight_records)


def _weight_records(model, buf) -> list[tuple[str, str, bool, str]]:
    ops = list(weight_ops(model))
    tables = {tuple(w.ShapeAsNumpy()) for _, _, name, w in ops if name == "EMBEDDING_LOOKUP"}
    out = []
    for graph, op, name, weight in ops:
        head = name == "FULLY_CONNECTED" and (LOGITS.encode() in graph.Tensors(op.Outputs(0)).Name()
                                              or tuple(weight.ShapeAsNumpy()) in tables)
        out.append((op_scope(graph, op), name, head, _TYPE_NAMES[weight.Type()]))
    return out


def weight_types(path: str | Path) -> dict[tuple[str, bool], collections.Counter]:
    """{(op name, is the LM head): Counter of weight dtypes} over weight_records."""
    return count_types(weight_records(path))


def count_types(records) -> dict[tuple[str, bool], collections.Counter]:
    out: dict[tuple[str, bool], collections.Counter] = {}
    for _, name, head, dtype in records:
        out.setdefault((name, head), collections.Counter())[dtype] += 1
    return out
