"""Lossless import on LiteRT: a checkpoint tensor stored as Q4_0 keeps its integers when the recipe
quantizes it to int4 in blocks of 32 and LiteRT's int4 can hold its blocks.

ai-edge-quantizer's `dequantized_weight_recovery` algorithm does the work: it reads each block's
scale back from the dequantized floats (the smallest step between the block's distinct magnitudes)
and re-derives the integers. This module picks the ops it may run on: those whose weight buffer in
the float .tflite is, byte for byte, a stored Q4_0 tensor whose every block that algorithm recovers
exactly (`recoverable` checks it on the stored integers). Every other op keeps the recipe's
min/max quantization, and the manifest lists it as re-quantized.

Which Q4_0 files qualify: LiteRT's int4 blocks have positive scales, at bfloat16 precision (stored as
float16), and steps -8..7. `gemma-export qat` writes exactly that grid (export.quantize.qat), so its
checkpoints carry over bit for bit. llama.cpp's own Q4_0 rounding gives every block whose extreme is
positive a negative scale, with the extreme at step -8 (+8 |d|), one step past LiteRT's range: such
tensors (Google's QAT GGUFs among them) are re-quantized on LiteRT, and carried exactly on ONNX."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ...quantize.qat import recovery_step
from .graph import op_scope, read_model, scope_regex, weight_ops

ALGORITHM = "dequantized_weight_recovery"


def recoverable(codes: np.ndarray, scales: np.ndarray, bits: int = 4) -> bool:
    """codes: offset-binary uint8 [rows, blocks, 32], scales [rows, blocks] (StoredBlocks.codes_and_scales).
    True when the recovery reads every block back exactly: it takes the block's smallest step g
    between distinct magnitudes (0 included) as the scale, g |d|, so each q must be a multiple of g,
    and the integers it writes, sign(d) q / g, must fit int4's [-8, 7]. (llama.cpp's own Q4_0 rounding
    gives a negative d to every block whose extreme is positive, with that extreme at q = -8:
    +8 |d|, one step past LiteRT's range.)"""
    top = 1 << (bits - 1)
    q = codes.astype(np.int16) - top                                      # [R, nb, 32], -8..7
    step = recovery_step(q, top)
    if (np.abs(q) % step[..., None]).any():
        return False
    ints = np.where(scales[..., None] < 0, -q, q) // step[..., None]     # exact: step divides q
    return bool((ints >= -top).all() and (ints < top).all())


def _digest(data) -> bytes:
    return hashlib.blake2b(memoryview(data), digest_size=16).digest()


def carried_scopes(tflite: str | Path, model, stored: dict, recipe) -> tuple[list[tuple], dict]:
    """[(scope regex, op name, the weight's Layout under `recipe`)] for the FULLY_CONNECTED / EMBEDDING_LOOKUP
    ops whose weight is a stored tensor carried exactly under the recipe's layout for it; a regex is the op's output names as ai-edge-quantizer's
    `get_op_scope` joins them. And the report {"carried": [names], "requantized": [names]} over the
    model's 2-D weights."""
    params = {name: p for name, p in model.named_parameters() if p.dim() == 2}
    table = "model.embed_tokens.weight"
    carry = set()
    for name, blocks in stored.items():
        lay = recipe.layout(name, table=name == table)
        if name in params and lay is not None and blocks.kind == "Q4_0" and blocks.matches(lay.bits, lay.block) and \
                tuple(params[name].shape) == blocks.shape and recoverable(*blocks.codes_and_scales()):
            carry.add(name)
    if not carry:
        return [], {}
    scopes_of = weight_scopes(tflite, model)

    def scopes(names):
        return {s for n in names for s, _ in scopes_of.get(n, ())}
    others = scopes(n for n in scopes_of if n not in carry)
    # one scope string over a carried and a re-quantized weight: a regex can't tell them apart
    carry = {n for n in carry if not scopes([n]) & others}
    found = sorted(n for n in scopes_of if n != "?")
    report = {"carried": sorted(n for n in carry if n in scopes_of),
              "requantized": [n for n in found if n not in carry]}
    ops = sorted(((scope_regex(s), kind, recipe.layout(n, table=n == table))
                  for n in carry for s, kind in scopes_of.get(n, ())), key=lambda o: o[:2])
    return ops, report


def weight_scopes(tflite: str | Path, model) -> dict[str, set[tuple[str, str]]]:
    """{parameter name of `model` ("?" for a weight that is none): {(op scope, op name)}} over the
    FULLY_CONNECTED / EMBEDDING_LOOKUP ops of the float .tflite converted from it; a weight is
    recognised by its buffer's bytes, a scope is the op's output names as ai-edge-quantizer's
    `get_op_scope` joins them."""
    by_digest = {_digest(p.detach().contiguous().numpy()): name for name, p in model.named_parameters()
                 if p.dim() == 2}
    return read_model(tflite, lambda m, buf: _weight_scopes(m, buf, by_digest))


def _weight_scopes(m, buf, by_digest: dict[bytes, str]) -> dict[str, set[tuple[str, str]]]:
    """weight's parameter name (by the digest of its buffer; "?" when none matches) -> {(op scope, op name)}."""
    scopes_of: dict[str, set[tuple[str, str]]] = {}
    for g, op, kind, weight in weight_ops(m):
        b = m.Buffers(weight.Buffer())
        data = buf[b.Offset():b.Offset() + b.Size()] if b.Offset() > 1 else b.DataAsNumpy()
        name = by_digest.get(_digest(data), "?") if isinstance(data, (bytes, np.ndarray)) else "?"
        scopes_of.setdefault(name, set()).add((op_scope(g, op), kind))
    return scopes_of
