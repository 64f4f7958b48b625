"""Read what a .tflite holds without running it: the ops each signature executes, with
STABLEHLO_COMPOSITE ops named by their composite (`STABLEHLO_COMPOSITE:odml.rms_norm`). Reads the
flatbuffer through mmap, so multi-GB models cost no memory."""
from __future__ import annotations

import collections
import mmap
from pathlib import Path

from ai_edge_litert import schema_py_generated as fb

_OP_NAMES = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}


def signature_ops(path: str | Path) -> dict[str, collections.Counter]:
    """{signature name: Counter of op names} over each signature's main subgraph (composite
    decompositions are separate subgraphs and not counted)."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        model = fb.Model.GetRootAs(buf, 0)
        codes = []
        for i in range(model.OperatorCodesLength()):
            oc = model.OperatorCodes(i)
            codes.append(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()))
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
        del model, sig, graph, op
        return out
