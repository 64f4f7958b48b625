"""A quantization recipe (export.quantize.recipes) applied to our float32 ONNX graph with
onnxruntime's own tools:

- fp16: onnxruntime.transformers' float16 converter, with the residual stream and the RMS norms
  (SkipSimplifiedLayerNormalization, RMSNormalization) kept float32: Gemma 2/3's residual outgrows
  float16's range (65504) and every logit turns NaN. KV caches become float16;
  logits / EmbeddingGemma's outputs, a vision-language split's image rows and inputs_embeds, and RecurrentGemma's
  RG-LRU state and scan stay float32.
- int4 / int8: MatMulNBitsQuantizer (symmetric blockwise weights -> MatMulNBits; accuracy_level 4
  quantizes the activations to int8 at run time, per block of the weights' block size).
  Not quantize_dynamic (per-channel weights, DynamicQuantizeMatMul): its activations are quantized
  per tensor, and Gemma's outlier channels then cost far more fidelity than MatMulNBits' per-block
  activations (README: the quantization section, int8).
- The embedding table, shared with the tied LM head: the head is expressed as a MatMul over the
  transposed table so that MatMulNBitsQuantizer packs it, and the embedding lookup becomes a
  GatherBlockQuantized over the same packed blob and scales (as onnxruntime-genai's builder does), so
  the table is stored once. An untied table (EmbeddingGemma) is packed the same way through a
  stand-in MatMul that is dropped afterwards."""
from __future__ import annotations

import json
import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from runtime_py.contract import IMAGE_FEATURES, INPUTS_EMBEDS, LAST_HIDDEN_STATE, SENTENCE_EMBEDDING

from ...quantize.recipes import Recipe
from .graph import ROWS_FROM
from .spill import typed_by_dims

TABLE = "model.embed_tokens.weight"
HEAD = "/lm_head/MatMul"
HEAD_WEIGHT = "lm_head.MatMul.weight"
FP32_OPS = ["SkipSimplifiedLayerNormalization", "RMSNormalization"]     # the residual stream's ops
FP32_IO = ["logits", SENTENCE_EMBEDDING, LAST_HIDDEN_STATE, INPUTS_EMBEDS, IMAGE_FEATURES]   # the graphs' float32 boundary
FP32_STATE_OPS = ["Scan"]             # RecurrentGemma's RG-LRU recurrence accumulates in float32


def streams(recipe: Recipe) -> bool:
    """Whether `recipe` packs weights into blocks, so that they can be packed as the graph is built (stream.py)."""
    return not recipe.float32 and not _all_fp16(recipe)


def _all_fp16(recipe: Recipe) -> bool:
    return recipe.weight_bits == 16 and recipe.embedding_bits == 16 and recipe.activations == "fp16" and not recipe.plan


def quantize(model: onnx.ModelProto, recipe: Recipe, stored: dict | None = None,
             packer=None) -> tuple[onnx.ModelProto, dict]:
    """Apply `recipe` to a float32 graph from build_decoder / build_embedder (modified in place).
    stored: a checkpoint's quantized blocks by parameter name (LoadedModel.stored); the rows of
    the tensors whose layout matches the recipe's are carried over exactly. packer: the stream.Packer the
    graph was built with (its weights already packed as they were made); the result is the same graph.
    -> (model, {"carried": [parameter names], "requantized": [parameter names]})."""
    if recipe.float32:
        return model, {}
    if _all_fp16(recipe):
        return to_fp16(model), {}
    rows_from = _rows_from(model)
    nodes = _node_layouts(model, recipe, rows_from)
    if packer is not None:
        rows_from.update(packer.rows_from)
        nodes.update(packer.layouts)
    table = recipe.layout(TABLE, table=True)
    for what, lay in [(TABLE, table), *nodes.items()]:
        check_layout(recipe, what, lay)
    with _quiet():
        if table is not None and not recipe.table_activations:
            model = quantize_embedding(model, table.bits, table.block, level(table),
                                       packer and packer.head, packer and packer.table_shape)
        for lay in sorted({lay for lay in nodes.values() if lay is not None and lay.bits < 16},
                          key=lambda x: (x.bits, x.block or 0, x.activations)):
            if packer is not None:         # where this layout's pass appends them
                _move(packer.groups.pop(lay, []), model.graph.initializer)
            model = _matmul_nbits(model, lay.bits, lay.block, level(lay),
                                  exclude=[n for n, other in nodes.items() if other != lay])
    _half_weights(model, [n for n, lay in nodes.items() if lay is not None and lay.bits == 16])
    return model, carry_blocks(model, rows_from, stored or {})


def check_layout(recipe: Recipe, what: str, lay) -> None:
    if lay is None or (lay.bits in (4, 8) and lay.block) or (lay.bits == 16 and what != TABLE) \
            or (what == TABLE and recipe.table_activations):     # the web graph stores it itself (web_table.py)
        return
    raise ValueError(f"--quant {recipe.name}: the ONNX target stores {what} as 4- or 8-bit blocks or "
                     f"float16 (body only), not {lay.bits}-bit / block {lay.block}")


def _move(tensors: list, field) -> None:
    """Append `tensors` to a repeated field, letting go of each once copied (protobuf copies on append)."""
    tensors.reverse()
    while tensors:
        field.append(tensors.pop())


def _node_layouts(model: onnx.ModelProto, recipe: Recipe, rows_from: dict) -> dict:
    """{MatMul node name: Layout or None (float32)} over the MatMuls with a constant weight."""
    inits = {t.name for t in model.graph.initializer}
    return {node.name: node_layout(recipe, node.name, node.input[1], rows_from.get(node.input[1], []))
            for node in model.graph.node
            if node.op_type == "MatMul" and node.input[1] in inits and node.input[1] != TABLE}


def node_layout(recipe: Recipe, node: str, weight: str, rows: list):
    """The Layout (None: float32) of MatMul `node` whose weight is made of the checkpoint tensors `rows`
    ([(name, rows)], empty: the weight itself); a packed weight's tensors must share one layout."""
    names = [n for n, _ in rows] or [weight]
    lays = {recipe.layout(n, table=False) for n in names}
    if len(lays) > 1:
        raise ValueError(f"--quant {recipe.name}: {', '.join(names)} are one packed MatMul ({node}) "
                         f"and need one layout, not {len(lays)}")
    return lays.pop()


def _half_weights(model: onnx.ModelProto, node_names: list[str]) -> None:
    """Store these MatMuls' weights as float16, cast back to float32 in the graph (the activations stay float32)."""
    if not node_names:
        return
    g = model.graph
    wanted = set(node_names)
    inits = {t.name: t for t in g.initializer}
    nodes = []
    for node in g.node:
        if node.name in wanted:
            w = inits[node.input[1]]
            half = numpy_helper.from_array(numpy_helper.to_array(w).astype(np.float16), w.name + "_fp16")
            half.doc_string = w.doc_string
            w.CopyFrom(half)
            cast = helper.make_node("Cast", [half.name], [half.name + "_fp32"], name=f"{node.name}/Cast",
                                    to=onnx.TensorProto.FLOAT)
            node.input[1] = cast.output[0]
            nodes.append(cast)
        nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)


def _rows_from(model: onnx.ModelProto) -> dict[str, list[tuple[str, int]]]:
    """{weight initializer: [(checkpoint tensor, rows), ...]} recorded by the graph builder; the
    tied head (built from the table here) is the table's rows."""
    out = {}
    for t in model.graph.initializer:
        if rows := rows_of(t):
            out[t.name] = rows
        if t.name == TABLE:
            out[HEAD_WEIGHT] = [(TABLE, t.dims[0])]
    return out


def rows_of(t: onnx.TensorProto) -> list[tuple[str, int]]:
    """The checkpoint tensors behind an initializer's rows (Graph.init's rows_from), or []."""
    return [tuple(p) for p in json.loads(t.doc_string)[ROWS_FROM]] if ROWS_FROM in t.doc_string else []


def carry_blocks(model: onnx.ModelProto, rows_from: dict, stored: dict) -> dict:
    """Overwrite the packed weights and scales of every MatMulNBits row range whose checkpoint tensor
    is stored in the node's layout (symmetric, same bits, same block) with the stored integers and
    scales: Q4_0 under int4 / block 32, Q8_0 under int8 / block 32."""
    inits = {t.name: t for t in model.graph.initializer}
    carried, requantized = [], []
    for node in model.graph.node:
        if node.op_type != "MatMulNBits" or len(node.input) != 3:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        bits, block = attrs["bits"], attrs["block_size"]
        weight = node.input[1].removesuffix(f"_Q{bits}")
        packed_t, scales_t = inits[node.input[1]], inits[node.input[2]]
        packed = scales = None
        start = 0
        for name, rows in rows_from.get(weight, []):
            blocks = stored.get(name)
            if blocks is not None and blocks.matches(bits, block) and blocks.shape[0] == rows:
                if packed is None:
                    packed = numpy_helper.to_array(packed_t).copy()
                    scales = numpy_helper.to_array(scales_t).reshape(attrs["N"], -1).copy()
                codes, s = blocks.codes_and_scales()                      # [rows, nb, 32], [rows, nb]
                packed[start:start + rows] = pack_codes(codes, bits).reshape(packed[start:start + rows].shape)
                scales[start:start + rows] = s
                carried.append(name)
            else:
                requantized.append(name)
            start += rows
        if packed is not None:
            packed_t.CopyFrom(numpy_helper.from_array(packed, packed_t.name))
            scales_t.CopyFrom(numpy_helper.from_array(scales.reshape(numpy_helper.to_array(scales_t).shape)
                                                      .astype(numpy_helper.to_array(scales_t).dtype), scales_t.name))
    return {"carried": sorted(set(carried)), "requantized": sorted(set(requantized) - set(carried))}


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Offset-binary codes uint8 [rows, blocks, block] -> MatMulNBits' packed bytes [rows, blocks,
    block * bits / 8]: 4-bit element 2i in the low nibble of byte i, 2i + 1 in the high one."""
    if bits == 8:
        return codes
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def level(layout) -> int | None:
    """MatMulNBits accuracy_level: 4 quantizes activations to int8 per block; unset keeps float."""
    return 4 if layout.activations == "int8" else None


def to_fp16(model: onnx.ModelProto, keep_io: list[str] | None = None) -> onnx.ModelProto:
    """float16 weights and activations; graph inputs/outputs named in FP32_IO, the recurrent states and
    `keep_io` stay float32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel
    model.graph.value_info.extend(_value_types(model, keep=FP32_OPS))
    with _quiet(), typed_by_dims():
        model = convert_float_to_float16(model, keep_io_types=FP32_IO + _fp32_states(model) + (keep_io or []),
                                         disable_shape_infer=True,
                                         op_block_list=DEFAULT_OP_BLOCK_LIST + FP32_OPS + FP32_STATE_OPS)
        m = OnnxModel(model)
        m.topological_sort()                  # the converter appends its Casts at the end
    _after_subgraph_reads(m.model.graph)
    del m.model.graph.value_info[:]           # type hints for the converter; onnxruntime infers its own
    return m.model


def _after_subgraph_reads(graph: onnx.GraphProto) -> None:
    """Move each node after the producers of what its subgraphs read from the enclosing graph (an If branch
    reading a GroupQueryAttention's output: vision_decoder.py), which onnxruntime's topological_sort does not see;
    a graph already in order keeps its order."""
    producer = {o: n for n in graph.node for o in n.output if o}
    done: set[int] = set()
    order: list[onnx.NodeProto] = []
    for root in graph.node:
        stack = [(root, False)]
        while stack:
            node, ready = stack.pop()
            if id(node) in done:
                continue
            if ready:
                done.add(id(node))
                order.append(node)
                continue
            stack.append((node, True))
            for name in reversed([*node.input, *_outer_reads(node)]):
                before = producer.get(name)
                if before is not None and id(before) not in done and before is not node:
                    stack.append((before, False))
    del graph.node[:]
    graph.node.extend(order)


def _outer_reads(node: onnx.NodeProto) -> list[str]:
    """The values a node's subgraphs read that they do not make themselves."""
    reads: list[str] = []
    for a in node.attribute:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            made = {t.name for t in g.initializer} | {i.name for i in g.input} | {o for n in g.node for o in n.output}
            reads += [i for n in g.node for i in [*n.input, *_outer_reads(n)] if i and i not in made]
    return reads


def _fp32_states(model: onnx.ModelProto) -> list[str]:
    """RecurrentGemma's RG-LRU state inputs/outputs, which stay float32 (as its scan does)."""
    return [v.name for v in [*model.graph.input, *model.graph.output] if "rg_lru_state" in v.name]


def _value_types(model: onnx.ModelProto, keep: list[str]) -> list[onnx.ValueInfoProto]:
    """The element type of the intermediate tensors, which the float16 converter needs to place its
    Casts: onnx's type inference over a weightless copy of the graph (no 2 GB limit), told that the
    com.microsoft ops it does not know output float32 (true of every one our graphs use). Tensors
    passed between `keep` ops only are left untyped, so the converter leaves them alone: typed, it
    would round-trip them through float16 (the residual stream, from one norm to the next)."""
    g = model.graph
    weights = [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in g.initializer]
    contrib = [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None)
               for n in g.node if n.domain == "com.microsoft" for o in n.output if o]
    light = helper.make_model(helper.make_graph(g.node, "types", [*g.input, *weights], g.output, value_info=contrib),
                              opset_imports=model.opset_import, ir_version=model.ir_version)
    for node in light.graph.node:        # the copies' branches (an If's), so that the If's outputs get a type too
        _type_contrib_outputs(node)
    typed = onnx.shape_inference.infer_shapes(light).graph.value_info
    producer = {o: n.op_type for n in g.node for o in n.output}
    consumers: dict[str, set[str]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, set()).add(n.op_type)
    outputs = {o.name for o in g.output}
    internal = {v for v, op in producer.items() if op in keep and consumers.get(v, set()) <= set(keep)
                and v not in outputs}
    return [helper.make_tensor_value_info(v.name, v.type.tensor_type.elem_type, None) for v in typed
            if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type and v.name not in internal]


def _type_contrib_outputs(node: onnx.NodeProto) -> None:
    """In `node`'s subgraphs, declare the com.microsoft ops' outputs float32, as _value_types does in the graph."""
    for a in node.attribute:
        for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            sub.value_info.extend(helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None)
                                  for n in sub.node if n.domain == "com.microsoft" for o in n.output if o)
            for n in sub.node:
                _type_contrib_outputs(n)


def _matmul_nbits(model: onnx.ModelProto, bits: int, block: int, accuracy: int | None,
                  exclude: list[str] | None = None) -> onnx.ModelProto:
    """Every MatMul with a constant weight (not in `exclude`) -> MatMulNBits."""
    q = nbits_quantizer(model, bits, block, accuracy, exclude)
    q.process()
    return q.model.model


def nbits_quantizer(model: onnx.ModelProto | None, bits: int, block: int, accuracy: int | None,
                    exclude: list[str] | None = None):
    """onnxruntime's MatMulNBitsQuantizer as every recipe uses it: symmetric blocks, `accuracy` (level())."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    return MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=True, accuracy_level=accuracy,
                                nodes_to_exclude=exclude or [])


def quantize_embedding(model: onnx.ModelProto, bits: int, block: int, accuracy: int | None,
                       packed=None, shape: tuple[int, int] | None = None) -> onnx.ModelProto:
    """Pack the embedding table once for the LM head (MatMulNBits) and the lookup (GatherBlockQuantized).
    packed: the head's weight already packed (stream.Packed) from a table of `shape`, which the graph then
    holds no initializer for."""
    g = model.graph
    table_init = next((t for t in g.initializer if t.name == TABLE), None)
    gather = next((n for n in g.node if n.op_type == "Gather" and n.input[0] == TABLE), None)
    users = [n for n in g.node if TABLE in n.input and n is not gather]
    if (table_init is None and packed is None) or (gather is None and not users):
        return model
    vocab, width = table_init.dims if packed is None else shape
    padded = -(-width // block) * block           # the quantizer pads each row to whole blocks
    head = users[0] if users else None
    if len(users) > 1 or (head is not None and not _is_tied_head(head)):
        raise ValueError(f"{TABLE} has uses the quantizer does not know: {[n.name for n in users]}")
    tied = head is not None

    # The head as x @ table.T, a MatMul with a constant weight that MatMulNBitsQuantizer packs as
    # [V, d / block, block * bits / 8] plus scales [V, d / block]: row v of the table is row v of the blob.
    x, out = (head.input[0], head.output[0]) if tied else ("", "/lm_head/unused")
    if packed is None:
        weights = [numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(table_init).T), HEAD_WEIGHT)]
        matmul = helper.make_node("MatMul", [x, HEAD_WEIGHT], [out], name=HEAD)
    else:
        matmul = packed.node(x, out)
        weights = packed.tensors              # moved into the graph
    if tied:
        head.CopyFrom(matmul)
    else:
        g.node.append(matmul)
    _move(weights, g.initializer)
    others = [n.name for n in g.node if n.op_type == "MatMul" and n.name != HEAD]
    model = _matmul_nbits(model, bits, block, accuracy, exclude=others)    # packed: the pass's other steps only

    g = model.graph
    gather = next((n for n in g.node if n.op_type == "Gather" and n.input[0] == TABLE), None)
    if gather is None:           # a decoder fed inputs_embeds: the head is the table's only use
        return _drop_table(model)
    packed_head = next(n for n in g.node if n.op_type == "MatMulNBits" and n.input[1].startswith("lm_head.MatMul."))
    blob, scales = packed_head.input[1], packed_head.input[2]
    n = "/model/embed_tokens"
    consts = [numpy_helper.from_array(np.array(v, np.int64), f"{n}/{k}") for k, v in
              (("packed_shape", [vocab, padded * bits // 8]), ("zero", [0]), ("width", [width]), ("last", [-1]))]
    lookup = [helper.make_node("Reshape", [blob, consts[0].name], [f"{n}/Reshape/output_0"], name=f"{n}/Reshape"),
              helper.make_node("GatherBlockQuantized", [f"{n}/Reshape/output_0", gather.input[1], scales],
                               [f"{n}/GatherBlockQuantized/output_0"] if padded != width else gather.output,
                               name=f"{n}/GatherBlockQuantized", domain="com.microsoft",
                               bits=bits, block_size=block, gather_axis=0, quantize_axis=1)]
    if padded != width:
        lookup.append(helper.make_node("Slice", [lookup[1].output[0], *(c.name for c in consts[1:])],
                                       gather.output, name=f"{n}/Slice"))
    else:
        consts = consts[:1]
    nodes = []
    for node in g.node:
        if node.name == gather.name:
            nodes += lookup
        elif node.name != packed_head.name or tied:       # untied: drop the stand-in head
            nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    _drop_table(model, consts)
    return model


def _drop_table(model: onnx.ModelProto, add: list | None = None) -> onnx.ModelProto:
    g = model.graph
    for i in [i for i, t in enumerate(g.initializer) if t.name == TABLE][::-1]:
        del g.initializer[i]              # in place: the others are not copied
    g.initializer.extend(add or [])
    return model


def _is_tied_head(node: onnx.NodeProto) -> bool:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return (node.op_type == "Gemm" and len(node.input) == 2 and node.input[1] == TABLE
            and attrs.get("transB", 0) == 1 and attrs.get("transA", 0) == 0
            and attrs.get("alpha", 1.0) == 1.0)


class _quiet:
    """Silence onnxruntime's quantizers, which log every node: importing matmul_nbits_quantizer calls
    logging.basicConfig(level=INFO). Undo that on the way out."""

    def __enter__(self):
        root = logging.getLogger()
        self.level, self.handlers = root.level, list(root.handlers)
        import onnxruntime.quantization.matmul_nbits_quantizer  # noqa: F401
        root.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        root = logging.getLogger()
        for h in [h for h in root.handlers if h not in self.handlers]:
            root.removeHandler(h)
        root.setLevel(self.level)
