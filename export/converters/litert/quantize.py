"""A quantization recipe (export.quantize.recipes) applied to a converted float32 .tflite with
ai-edge-quantizer, the library LiteRT's own tools use:

- the transformer body's FULLY_CONNECTED weights get the recipe's bits and granularity: dynamic
  (int8 activations quantized at run time by the kernel, `compute_precision=INTEGER`) or weight-only
  (dequantized to float before the op);
- the embedding table is one tensor shared by EMBEDDING_LOOKUP and the tied LM head (the FULLY_CONNECTED
  graph.weight_records takes for the head: it writes `*logits*`, or, where the logits are soft-capped as in
  Gemma 2, its weight is the converter's own copy of the table with 1/cap folded in): both ops get the recipe's
  embedding bits and granularity, so the table stays one tensor where the graph shares it;
- a recipe with `hadamard` uses ai-edge-quantizer's HADAMARD_ROTATION algorithm for all of them: each
  weight's rows are rotated by a Hadamard matrix along the input dimension (blocks of the largest power
  of two dividing it) and quantized with OCTAV clipping, and an `aeq.hadamard_rotation` op (in LiteRT's
  CPU op resolver) rotates the op's input alike at run time -- after the lookup for the table, whose
  rotated rows are rotated back. The table stays one tensor: the lookup and the head share the config.

ai-edge-quantizer skips a config it does not support without a word (int4 weight-only blockwise,
int8 blockwise): every FULLY_CONNECTED / EMBEDDING_LOOKUP weight is checked afterwards and a
float one left behind is an error, not a silently float artifact. A zero scale (an all-zero row) is made
positive so XNNPACK loads the model (zero_scales.py)."""
from __future__ import annotations

import collections
import logging
import re
from pathlib import Path

from ...quantize.recipes import Layout, Recipe
from ...quantize.simulate import TABLE
from ..artifact import stdout_to_stderr
from .graph import count_types, scope_regex, weight_records
from .lossless import ALGORITHM, carried_scopes, weight_scopes
from .zero_scales import nudge_zero_scales

FC, EMBEDDING = "FULLY_CONNECTED", "EMBEDDING_LOOKUP"
_DTYPE = {4: "INT4", 8: "INT8"}


def _granularity(block: int | None):
    from ai_edge_quantizer import qtyping
    return qtyping.QuantGranularity.CHANNELWISE if block is None else qtyping.QuantGranularity[f"BLOCKWISE_{block}"]


def aeq_recipe(r: Recipe, carried: list[tuple[str, str, Layout]] = (),
               planned: list[tuple[str, str, Layout]] = (),
               own: list[tuple[str, str, Layout | None]] = (), heads: tuple[str, ...] = ()) -> list[dict]:
    """The ai-edge-quantizer recipe (a list of op configs) for our recipe `r` (LiteRT numbers).
    heads: the LM head ops' scopes (head_scopes), stored as the table.
    carried: (scope regex, op name, layout) of the ops whose stored integers are kept
    (export.converters.litert.lossless); planned: the same for the ops a per-weight plan names; own: ops stored
    their own way whatever the recipe (SAE encoders, sae.py; None: left float32). Later configs win: the recipe's
    own, then the plan's, then the carried ones, then `own`."""
    from ai_edge_quantizer import recipe_manager
    rm = recipe_manager.RecipeManager()
    body, table = r.layout("", table=False), r.layout("", table=True)
    for lay in (body, table, *(lay for *_, lay in planned)):
        if lay is not None and lay.hadamard and lay.activations != "int8":
            # the rotation algorithm never inserts a DEQUANTIZE: the kernel would quantize the activations
            raise ValueError(f"--quant {r.name}: Hadamard rotation needs int8 activations, not {lay.activations}")
    if body is not None:
        _add(rm, ".*", FC, body)
    if table is not None:
        _add(rm, ".*", EMBEDDING, table)
        for regex, name, lay in _grouped([(scope_regex(scope), FC, table) for scope in heads]):
            _add(rm, regex, name, lay)
    for regex, name, lay in _grouped(planned):
        _add(rm, regex, name, lay)
    for regex, name, lay in _grouped(carried):
        _add(rm, regex, name, lay, algorithm=ALGORITHM)
    for regex, name, lay in own:
        if lay is None:
            from ai_edge_quantizer import qtyping
            from ai_edge_quantizer.algorithm_manager import AlgorithmName
            rm.add_quantization_config(regex, getattr(qtyping.TFLOperationName, name),
                                       algorithm_key=AlgorithmName.NO_QUANTIZE)
        else:
            _add(rm, regex, name, lay)
    return rm.get_quantization_recipe()


def _grouped(ops: list[tuple[str, str, Layout]]) -> list[tuple[str, str, Layout]]:
    """One config per (op name, layout), its regex the alternation of the ops' anchored scopes: ai-edge-quantizer
    searches every op's scope with every config's regex, and past the 512 patterns Python's `re` caches it
    compiles each one again for every op (a plan over a 270M model's 4 signatures: 14 minutes instead of 1)."""
    groups: dict[tuple[str, Layout], list[str]] = {}
    for regex, name, lay in ops:
        groups.setdefault((name, lay), []).append(regex.removeprefix("^").removesuffix("$"))
    return [(f"^(?:{'|'.join(scopes)})$", name, lay) for (name, lay), scopes in groups.items()]


def _add(rm, regex: str, op_name: str, lay: Layout, algorithm: str | None = None) -> None:
    """One op config: int8 / int4 weights (dynamic int8 activations or weight-only; rotated where the
    layout says so), or float16 weights (FLOAT_CASTING, float activations)."""
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    op = getattr(qtyping.TFLOperationName, op_name)
    if lay.bits == 16:
        rm.add_weight_only_config(regex=regex, operation_name=op, num_bits=16,
                                  algorithm_key=algorithm or AlgorithmName.FLOAT_CASTING)
        return
    dynamic = lay.activations == "int8"
    add = rm.add_dynamic_config if dynamic else rm.add_weight_only_config
    key = AlgorithmName.HADAMARD_ROTATION if lay.hadamard else AlgorithmName.MIN_MAX_UNIFORM_QUANT
    add(regex=regex, operation_name=op, num_bits=lay.bits, granularity=_granularity(lay.block),
        algorithm_key=algorithm or key)


def quantize_tflite(src: Path, dst: Path, r: Recipe, model=None, stored: dict | None = None, sae=None) -> dict:
    """Write `src` quantized by recipe `r` to `dst` and check that every weight was quantized.
    model, stored: the PyTorch model `src` was converted from and its checkpoint's stored blocks
    (LoadedModel.stored): stored Q4_0 tensors under an int4 block-32 layout keep their integers.
    sae: an SaeRequest, whose encoders are stored as its `encoder` says (sae.py).
    -> the lossless-import report ({} when nothing was carried)."""
    from ai_edge_quantizer import quantizer
    carried, report, planned = [], {}, []
    own = []
    if sae is not None:
        from .sae import sae_ops
        own = sae_ops(src, sae)
    if stored and model is not None:
        carried, report = carried_scopes(src, model, stored, r)
    # an SAE encoder as wide as the vocabulary (Gemma Scope's 262k on Gemma 3) has the table's shape: it is `own`'s
    heads = tuple(h for h in head_scopes(src) if not any(re.fullmatch(regex, h) for regex, _, _ in own))
    if r.plan:
        if model is None:
            raise ValueError(f"--quant {r.name}: a per-weight plan needs the model {src} was converted from")
        planned = planned_scopes(r, weight_scopes(src, model), heads)
    q = quantizer.Quantizer(str(src))
    q.load_quantization_recipe(aeq_recipe(r, carried, planned, own, heads))
    root = logging.getLogger()
    level = root.level
    try:
        with stdout_to_stderr():                  # it prints a size summary
            result = q.quantize()
    finally:
        root.setLevel(level)
    dst.write_bytes(result.quantized_model)
    del result, q
    nudge_zero_scales(dst)
    check_quantized(dst, r, planned, own, heads)
    return report if report.get("carried") else {}


def head_scopes(path: Path) -> tuple[str, ...]:
    """The scopes of the LM head ops (graph.weight_records' is-the-head) of the .tflite at `path`."""
    return tuple(sorted({scope for scope, _, head, _ in weight_records(path) if head}))


def planned_scopes(r: Recipe, scopes_of: dict, heads: tuple[str, ...] = ()) -> list[tuple[str, str, Layout]]:
    """(scope regex, op name, layout) of every op whose weight the plan of `r` names. The LM head ops (`heads`)
    go with the tied table (Gemma always ties them: export.models.checkpoints refuses a differing lm_head) also
    where the converter folded a constant into the head's copy (Gemma 2's final soft-cap: x (W / cap)^T), which
    no checkpoint tensor's bytes then match."""
    folded = {(scope, kind) for scope, kind in scopes_of.get("?", ()) if kind == FC and scope in heads}
    out = []
    for name, _, lay in r.plan:
        ops = set(scopes_of.get(name, ())) | (folded if name == TABLE else set())
        if not ops:
            raise ValueError(f"--quant {r.name}: the plan names {name}, which no LiteRT op uses")
        out += [(scope_regex(scope), kind, lay) for scope, kind in sorted(ops)]
    return out


def _dtype(lay: Layout | None) -> str:
    return _DTYPE.get(lay.bits, "FLOAT16" if lay.bits == 16 else "FLOAT32") if lay else "FLOAT32"


def check_quantized(path: Path, r: Recipe, planned: list[tuple[str, str, Layout]] = (),
                    own: list[tuple[str, str, Layout | None]] = (), heads: tuple[str, ...] = ()) -> None:
    """Every FULLY_CONNECTED / EMBEDDING_LOOKUP weight has the dtype `r` asks for (with a plan: as many
    weights of each dtype, per op kind, as the plan's ops ask for); the ops of `own` (aeq_recipe's) their own."""
    bad = []
    records = []
    for scope, op, head, dtype in weight_records(path):
        lay = next((lay for regex, kind, lay in own if kind == op and re.fullmatch(regex, scope)), False)
        if lay is False:
            records.append((scope, op, head, dtype))
        elif dtype != _dtype(lay):
            bad.append(f"{op} {scope}: {dtype} where {_dtype(lay)} was asked")
    got = count_types(records)
    if planned:
        head = {scope_regex(scope) for scope in heads}
        want = collections.Counter((kind, regex in head, _dtype(lay)) for regex, kind, lay in planned)
        have = collections.Counter({(op, head, d): n for (op, head), ds in got.items() for d, n in ds.items()})
        if want != have:
            bad.append(f"per-op dtypes {dict(have)} where the plan asks for {dict(want)}")
    for (op, is_head), dtypes in ([] if planned else got.items()):
        want = _dtype(r.layout("", table=op == EMBEDDING or is_head))
        wrong = {d: n for d, n in dtypes.items() if d != want}
        if wrong:
            bad.append(f"{op}{' (LM head)' if is_head else ''}: {wrong} where {want} was asked")
    if bad:
        raise ValueError(f"{path}: ai-edge-quantizer did not apply --quant {r.name}: " + "; ".join(bad))
