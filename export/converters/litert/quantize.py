"""A quantization recipe (export.quantize.recipes) applied to a converted float32 .tflite with
ai-edge-quantizer, the library LiteRT's own tools use:

- the transformer body's FULLY_CONNECTED weights get the recipe's bits and granularity: dynamic
  (int8 activations quantized at run time by the kernel, `compute_precision=INTEGER`) or weight-only
  (dequantized to float before the op);
- the embedding table is one tensor shared by EMBEDDING_LOOKUP and the tied LM head (a
  FULLY_CONNECTED writing `*logits*`): both ops get the recipe's embedding bits and granularity, so
  the table stays one tensor;
- a recipe with `hadamard` uses ai-edge-quantizer's HADAMARD_ROTATION algorithm for all of them: each
  weight's rows are rotated by a Hadamard matrix along the input dimension (blocks of the largest power
  of two dividing it) and quantized with OCTAV clipping, and an `aeq.hadamard_rotation` op (in LiteRT's
  CPU op resolver) rotates the op's input alike at run time -- after the lookup for the table, whose
  rotated rows are rotated back. The table stays one tensor: the lookup and the head share the config.

ai-edge-quantizer skips a config it does not support without a word (int4 weight-only blockwise,
int8 blockwise): every FULLY_CONNECTED / EMBEDDING_LOOKUP weight is checked afterwards and a
float one left behind is an error, not a silently float artifact."""
from __future__ import annotations

import logging
from pathlib import Path

from ...quantize.recipes import Recipe
from ..artifact import stdout_to_stderr
from .graph import weight_types
from .lossless import ALGORITHM, carried_scopes

FC, EMBEDDING = "FULLY_CONNECTED", "EMBEDDING_LOOKUP"
HEAD_REGEX = ".*logits.*"                # the tied LM head's output tensor (`{signature}_logits_output`)
_DTYPE = {4: "INT4", 8: "INT8"}


def _granularity(block: int | None):
    from ai_edge_quantizer import qtyping
    return qtyping.QuantGranularity.CHANNELWISE if block is None else qtyping.QuantGranularity[f"BLOCKWISE_{block}"]


def aeq_recipe(r: Recipe, carried: list[tuple[str, str, bool]] = ()) -> list[dict]:
    """The ai-edge-quantizer recipe (a list of op configs) for our recipe `r` (LiteRT numbers).
    carried: (scope regex, op name, is the table) of the ops whose stored integers are kept
    (export.converters.litert.lossless); their configs come last, so they win."""
    from ai_edge_quantizer import qtyping, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    op = qtyping.TFLOperationName
    rm = recipe_manager.RecipeManager()
    dynamic = r.activations == "int8"
    if r.hadamard and not dynamic:
        # the rotation algorithm never inserts a DEQUANTIZE: the kernel would quantize the activations
        raise ValueError(f"--quant {r.name}: Hadamard rotation needs int8 activations, not {r.activations}")
    add = rm.add_dynamic_config if dynamic else rm.add_weight_only_config
    key = AlgorithmName.HADAMARD_ROTATION if r.hadamard else AlgorithmName.MIN_MAX_UNIFORM_QUANT
    if r.weight_bits < 16:
        add(regex=".*", operation_name=op.FULLY_CONNECTED, num_bits=r.weight_bits,
            granularity=_granularity(r.block_size), algorithm_key=key)
    if r.embedding_bits < 16:
        for regex, name in ((".*", op.EMBEDDING_LOOKUP), (HEAD_REGEX, op.FULLY_CONNECTED)):
            add(regex=regex, operation_name=name, num_bits=r.embedding_bits,
                granularity=_granularity(r.embedding_block), algorithm_key=key)
    for regex, name, table in carried:
        bits, block = (r.embedding_bits, r.embedding_block) if table else (r.weight_bits, r.block_size)
        add(regex=regex, operation_name=getattr(op, name), num_bits=bits, granularity=_granularity(block),
            algorithm_key=ALGORITHM)
    return rm.get_quantization_recipe()


def quantize_tflite(src: Path, dst: Path, r: Recipe, model=None, stored: dict | None = None) -> dict:
    """Write `src` quantized by recipe `r` to `dst` and check that every weight was quantized.
    model, stored: the PyTorch model `src` was converted from and its checkpoint's stored blocks
    (LoadedModel.stored): stored Q4_0 tensors under an int4 block-32 layout keep their integers.
    -> the lossless-import report ({} when nothing was carried)."""
    from ai_edge_quantizer import quantizer
    carried, report = [], {}
    if stored and model is not None:
        carried, report = carried_scopes(src, model, stored, r.weight_bits, r.block_size,
                                         r.embedding_bits, r.embedding_block)
    q = quantizer.Quantizer(str(src))
    q.load_quantization_recipe(aeq_recipe(r, carried))
    root = logging.getLogger()
    level = root.level
    try:
        with stdout_to_stderr():                  # it prints a size summary
            result = q.quantize()
    finally:
        root.setLevel(level)
    dst.write_bytes(result.quantized_model)
    del result, q
    check_quantized(dst, r)
    return report if report.get("carried") else {}


def check_quantized(path: Path, r: Recipe) -> None:
    """Every FULLY_CONNECTED / EMBEDDING_LOOKUP weight has the dtype `r` asks for."""
    bad = []
    for (op, is_head), dtypes in weight_types(path).items():
        bits = r.embedding_bits if (op == EMBEDDING or is_head) else r.weight_bits
        want = _DTYPE.get(bits, "FLOAT32")
        wrong = {d: n for d, n in dtypes.items() if d != want}
        if wrong:
            bad.append(f"{op}{' (LM head)' if is_head else ''}: {wrong} where {want} was asked")
    if bad:
        raise ValueError(f"{path}: ai-edge-quantizer did not apply --quant {r.name}: " + "; ".join(bad))
