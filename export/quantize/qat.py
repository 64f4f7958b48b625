"""Quantization-aware training, part 1: fake quantization and the module swap.

Weights are fake-quantized to the grids the QAT checkpoint stores, so that the exporters carry its
integers over unchanged on both targets:

- int4, blocks of 32: a positive scale s = max(max(x) / 7, -min(x) / 8) (the smallest that keeps
  every weight within [-8, 7] steps), rounded to bfloat16 precision (LiteRT's int4 blocks store
  their scales at bfloat16 precision, as float16) and to float16 (GGUF's Q4_0 stores d as float16),
  at least 2^-14 (float16's smallest normal); q = clip(round-half-even(x / s), -8, 7); value = s * q.
  Stored as Q4_0 with d = s and codes q + 8. llama.cpp's own Q4_0 rounding (d = the signed
  extreme / -8) gives half of all blocks a negative d, whose code 0 means +8|d|: LiteRT's int4
  (positive scales, [-8, 7]) cannot hold those blocks, this grid fits both.
- int8, blocks of 32: llama.cpp's Q8_0 (gguf-py's quants.py, ggml-quants.c
  `quantize_row_q8_0_ref`): d = max|x| / 127, q = round-half-away(x * (1/d)), value = fp16(d) * q.

Why not torchao's QAT (torchao.quantization.qat, 0.18): its SYMMETRIC_NO_CLIPPING_ERR mapping derives
the same max(min / qmin, max / qmax) scale, but keeps it in float32 (or float16) precision: the
integers it trains would not survive LiteRT's bfloat16 scales. The fake quantizers here are a few
lines, and tested against gguf-py's dequantization and ai-edge-quantizer's read-back.

Gradients are straight-through (identity) for weights and activations. Activations entering a
quantized matmul are fake-quantized to int8 per block of 32 along the input dimension when the
recipe says so (onnxruntime MatMulNBits accuracy_level 4: scale max|a| / 127, round to nearest).

The swap (gpt-fast style; no model code changes): every nn.Linear of the decoder layers becomes a
QATLinear (same parameter, so state-dict names are unchanged); the tied embedding / LM head table
is fake-quantized through a parametrization (the lookup and the head both read `.weight`), or,
when it is frozen, replaced once by its quantized values; a forward hook on the final norm
fake-quantizes the LM head's input activations. `finalize` undoes the swap and leaves every
quantized weight equal to its fake-quantized value.

Started from given int4 blocks (`prepare(init=...)`: GPTQ's rounding, export.quantize.gptq), a
tensor keeps the blocks' scales fixed and trains its integers: the latent weights start at the
blocks' values and are rounded with those scales (GPTQ's scales are often not the grid rule's of
its values: a shrunk scale, or extremes the error updates moved; recomputing them would re-round the
start). Any positive scale at bfloat16 precision with steps -8..7 is on the grid, so such tensors stay
on it; they are stored from their integers and scales (`finalize` returns them as blocks)."""
from __future__ import annotations

import dataclasses
import functools

import gguf
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ..models.checkpoints.gguf_blocks import StoredBlocks, pack_q4_0
from ..models.config import LayerType
from .recipes import Recipe
from .simulate import mlas_activations

BLOCK = 32
Q = gguf.GGMLQuantizationType


def _blocks(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-1] % BLOCK:
        raise ValueError(f"a quantized tensor's last dimension ({x.shape[-1]}) is not a multiple of {BLOCK}")
    return x.reshape(-1, BLOCK)                                  # [blocks, 32]


MIN_SCALE = 2.0 ** -14                # float16's smallest normal: every scale is exact in float16


def grid_scale(s: torch.Tensor) -> torch.Tensor:
    """Positive scales -> the nearest a block of the int4 grid can store (bfloat16 precision, >= 2^-14)."""
    return s.clamp(min=MIN_SCALE).to(torch.bfloat16).to(torch.float16).float()


def q4_scale(b: torch.Tensor) -> torch.Tensor:
    """[..., 32] -> the int4 grid's block scale [..., 1] > 0 (see the module docstring)."""
    return grid_scale(torch.maximum(b.amax(-1, keepdim=True) / 7, b.amin(-1, keepdim=True) / -8))


def q4_round(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The int4 steps (float, -8..7) of x under scale s (broadcast): round half to even, clipped."""
    return (x / s).round_().clamp_(-8, 7)


def recovery_step(q: np.ndarray, top: int = 8) -> np.ndarray:
    """Integer steps [..., block] (|q| <= top) -> per block the step ai-edge-quantizer's
    dequantized-weight recovery reads the scale as (in units of the block's scale): the smallest gap
    between the distinct magnitudes present, 0 included (top + 1 for an all-zero block). The block
    is read back exactly when every q is a multiple of it."""
    mags = np.abs(q)
    step = np.full(mags.shape[:-1], top + 1, np.int16)
    prev = np.zeros(mags.shape[:-1], np.int16)
    for v in range(1, top + 1):
        p = (mags == v).any(-1)
        step = np.where(p, np.minimum(step, v - prev), step)
        prev = np.where(p, v, prev)
    return step


def recoverable(q: torch.Tensor, s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """q with every block LiteRT's lossless import reads back exactly (recovery_step): in the rare
    block whose magnitudes skip (say 0, 2 and 5, read as a step of 2), the one weight nearest to it
    becomes +-1 step, so the block's smallest gap is 1. q, w [R, C], s [R, C / 32]."""
    b = q.reshape(-1, BLOCK)
    bad = torch.from_numpy((b.abs().numpy().astype(np.int16) % recovery_step(b.numpy())[:, None]).any(-1))
    if not bad.any():
        return q
    b = b.clone()
    x = (w.float().reshape(-1, BLOCK) / s.reshape(-1, 1))[bad]            # the weights in steps
    one = torch.where(x < 0, -1.0, 1.0)
    pick = ((x - one).abs() - (x - b[bad]).abs()).argmin(-1)
    rows = bad.nonzero()[:, 0]
    b[rows, pick] = one[torch.arange(len(rows)), pick]
    return b.reshape(q.shape)


def to_blocks(q: torch.Tensor, s: torch.Tensor) -> StoredBlocks:
    """Steps q [R, C] (-8..7) and scales s [R, C / 32] -> Q4_0 StoredBlocks."""
    R, C = q.shape
    codes = (q + 8).to(torch.uint8).numpy().reshape(R, C // BLOCK, BLOCK)
    return StoredBlocks("Q4_0", pack_q4_0(codes, s.numpy()), (R, C))


def steps_and_scales(b: StoredBlocks) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_0 StoredBlocks -> (steps q [R, C] float in -8..7, scales s [R, C / 32]), to_blocks inverted."""
    codes, scales = b.codes_and_scales()
    return torch.from_numpy(codes.astype(np.float32) - 8).reshape(b.shape), torch.from_numpy(scales)


def q4_fixed(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """w [R, C] rounded to the int4 grid with fixed block scales s [R, C / 32] (positive, on the grid)."""
    b = _blocks(w.float())
    s = s.reshape(-1, 1)
    return q4_round(b, s).mul_(s).reshape(w.shape)


def _q4_grid(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[blocks, 32] -> (q [blocks, 32] float in -8..7, s [blocks, 1] > 0): see the module docstring.
    Idempotent: a block of grid values has its extreme at 7 s or -8 s, so it reads back the same s."""
    s = q4_scale(b)
    return q4_round(b, s), s


def q4_values(w: torch.Tensor) -> torch.Tensor:
    """float32 w -> its int4 grid values (blocks of 32 along the last dimension), same shape."""
    q, s = _q4_grid(_blocks(w.float()))
    return q.mul_(s).reshape(w.shape)


def q4_encode(w: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] -> the Q4_0 bytes [rows, cols / 32 * 18] of its int4 grid (q4_values)."""
    q, s = _q4_grid(_blocks(torch.from_numpy(np.ascontiguousarray(w, np.float32))))
    return pack_q4_0((q + 8).to(torch.uint8).numpy().reshape(w.shape[0], -1, BLOCK), s.numpy().reshape(w.shape[0], -1))


def q8_0_values(w: torch.Tensor) -> torch.Tensor:
    """float32 w -> the values gguf's Q8_0 quantize + dequantize gives, same shape."""
    b = _blocks(w.float())
    d = b.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    x = b * inv                                                  # round half away from zero:
    q = x.abs().add_(0.5).floor_().mul_(torch.sign(x))
    return q.mul_(d.half().float()).reshape(w.shape)


def int8_activations(x: torch.Tensor) -> torch.Tensor:
    """Dynamic int8 activations per block of 32 along the last dimension (MatMulNBits, level 4):
    the rounding the conversion check simulates (export.quantize.simulate)."""
    return mlas_activations(x, BLOCK).to(x.dtype)


# (bits, block) of a recipe -> the GGUF type the checkpoint stores and its fake quantizer.
FORMATS = {(4, BLOCK): (Q.Q4_0, q4_values), (8, BLOCK): (Q.Q8_0, q8_0_values)}
# GGUF type -> its encoder where gguf-py's own quantizer is not the grid (write_gguf's `encoders`)
ENCODERS = {Q.Q4_0: q4_encode}


class _STE(torch.autograd.Function):
    """Forward: fn(x) exactly; backward: the identity (straight-through estimator)."""

    @staticmethod
    def forward(ctx, x, fn):
        return fn(x)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def fake(fn, x: torch.Tensor) -> torch.Tensor:
    return _STE.apply(x, fn)


@dataclasses.dataclass(frozen=True)
class Scheme:
    """What QAT simulates for a recipe: the GGUF types of the body and the table, and activations."""
    body: gguf.GGMLQuantizationType
    table: gguf.GGMLQuantizationType
    int8_activations: bool

    @staticmethod
    def of(recipe: Recipe) -> "Scheme":
        body = FORMATS.get((recipe.weight_bits, recipe.block_size))
        table = FORMATS.get((recipe.embedding_bits, recipe.embedding_block))
        if body is None or table is None or recipe.activations not in ("int8", "fp32"):
            ok = [f"{b}-bit / block {s}" for b, s in FORMATS]
            raise ValueError(f"--recipe {recipe.name}: QAT trains {' or '.join(ok)} weights with int8 or float "
                             f"activations, not {recipe.weight_bits}-bit / block {recipe.block_size} "
                             f"(embedding {recipe.embedding_bits}-bit / block {recipe.embedding_block}, "
                             f"activations {recipe.activations})")
        return Scheme(body[0], table[0], recipe.activations == "int8")


def values_fn(qtype: gguf.GGMLQuantizationType):
    return next(fn for t, fn in FORMATS.values() if t == qtype)


class QATLinear(nn.Linear):
    """nn.Linear with fake-quantized weight (and activations); `weight` is the float latent. With
    `scales` (int4 only) the block scales are fixed, else the grid rule's of the latent."""

    def __init__(self, linear: nn.Linear, qtype: gguf.GGMLQuantizationType, act: bool,
                 scales: torch.Tensor | None = None):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.qtype, self.act, self.scales = qtype, act, scales
        self.fn = values_fn(qtype) if scales is None else functools.partial(q4_fixed, s=scales)

    def forward(self, x):
        if self.act:
            x = fake(int8_activations, x)
        return F.linear(x, fake(self.fn, self.weight), self.bias)


class _FakeTable(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, w):
        return fake(self.fn, w)


TABLE = "model.embed_tokens.weight"


def check_model(config, flag: str = "--model") -> None:
    """QAT distils a causal LM whose decoder layers are attention + MLP (Gemma 1-3)."""
    if getattr(config, "embedding_head", None) is not None:
        raise ValueError(f"{flag}: QAT distils a causal LM's logits; embedding models are not supported")
    if LayerType.RECURRENT in config.layer_types:
        raise ValueError(f"{flag}: QAT on RecurrentGemma is not supported (its recurrent blocks' weights "
                         f"have no fake quantizer nor carried int4 export)")


def _decoder_linears(model: nn.Module, kind: type = nn.Linear):
    """(parameter name, parent, child name, module) of every `kind` in the decoder layers."""
    for i, layer in enumerate(model.model.layers):
        for pname in ("self_attn", "mlp"):
            parent = getattr(layer, pname)
            for cname, child in list(parent.named_children()):
                if isinstance(child, kind):
                    yield f"model.layers.{i}.{pname}.{cname}.weight", parent, cname, child


def quantized_names(model: nn.Module) -> dict[str, gguf.GGMLQuantizationType]:
    """Parameter name -> GGUF type, for the parameters QAT quantizes (after `prepare`)."""
    out = {name: mod.qtype for name, _, _, mod in _decoder_linears(model, QATLinear)}
    out[TABLE] = model._qat_table_type
    return out


def _start(blocks: StoredBlocks | None, qtype) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Given int4 blocks to start from -> (their values, their fixed scales); (None, None) without."""
    if blocks is None:
        return None, None
    if qtype != Q.Q4_0 or blocks.kind != "Q4_0":
        raise ValueError(f"QAT starts from Q4_0 blocks for int4 weights, not {blocks.kind} for {qtype.name}")
    return torch.from_numpy(blocks.dequantized()), steps_and_scales(blocks)[1]


def prepare(model: nn.Module, scheme: Scheme, train_table: bool,
            init: dict[str, StoredBlocks] | None = None) -> nn.Module:
    """Swap in fake quantization (in place). The table (embedding + tied head) is trained only with
    `train_table`; otherwise its quantized values are computed once and frozen. `init`: int4 blocks
    to start from by parameter name (their scales stay fixed, see the module docstring).

    The latent weights start at their quantized values (the post-training grid points), not at the
    float weights: weights dequantized from another block format (the bundled Gemma 3 270M is
    Q5_0 / Q4_K / Q8_0) sit exactly on Q4_0's rounding ties in large numbers (a Q5_0 block's odd
    levels are Q4_0's half steps), and the first optimizer step of any size would then flip every one
    of them in the gradient's direction at once (README: QAT). From the grid points an integer changes
    only after its latent has moved half a step."""
    check_model(model.config)
    init = init or {}
    for name, parent, cname, child in _decoder_linears(model):
        values, scales = _start(init.get(name), scheme.body)
        q = QATLinear(child, scheme.body, scheme.int8_activations, scales)
        with torch.no_grad():                         # latent starts on the grid (see above)
            q.weight.copy_(q.fn(q.weight) if values is None else values)
        setattr(parent, cname, q)
    emb = model.model.embed_tokens
    values, scales = _start(init.get(TABLE), scheme.table)
    fn = values_fn(scheme.table) if scales is None else functools.partial(q4_fixed, s=scales)
    with torch.no_grad():
        emb.weight = nn.Parameter(fn(emb.weight) if values is None else values, requires_grad=train_table)
    if train_table:
        parametrize.register_parametrization(emb, "weight", _FakeTable(fn))
    if scheme.int8_activations:
        model._qat_hook = model.model.norm.register_forward_hook(lambda m, i, out: fake(int8_activations, out))
    model._qat_table_type, model._qat_table_scales = scheme.table, scales
    return model


def _fixed_blocks(latent: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, StoredBlocks]:
    """A latent int4 weight with fixed scales -> (its grid values, its blocks), every block one
    LiteRT's recovery reads back (`recoverable`)."""
    q = q4_round(_blocks(latent.float()), s.reshape(-1, 1)).reshape(latent.shape)
    q = recoverable(q, s, latent)
    return q * s.repeat_interleave(BLOCK, 1), to_blocks(q, s)


@torch.no_grad()
def finalize(model: nn.Module) -> tuple[dict[str, gguf.GGMLQuantizationType], dict[str, StoredBlocks]]:
    """Undo `prepare`: plain modules again, each quantized weight replaced by its fake-quantized
    value. Returns quantized_names (the parameters to store quantized) and the blocks of those
    trained with fixed scales (to be stored as they are)."""
    names, blocks = quantized_names(model), {}
    for name, parent, cname, child in _decoder_linears(model, QATLinear):
        plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None, device="meta")
        if child.scales is None:
            plain.weight = nn.Parameter(child.fn(child.weight))
        else:
            values, blocks[name] = _fixed_blocks(child.weight, child.scales)
            plain.weight = nn.Parameter(values)
        plain.bias = child.bias
        setattr(parent, cname, plain)
    emb = model.model.embed_tokens
    if parametrize.is_parametrized(emb, "weight"):
        parametrize.remove_parametrizations(emb, "weight", leave_parametrized=True)
    if model._qat_table_scales is not None:
        values, blocks[TABLE] = _fixed_blocks(emb.weight, model._qat_table_scales)
        emb.weight = nn.Parameter(values)
    emb.weight.requires_grad_(True)
    if hasattr(model, "_qat_hook"):
        model._qat_hook.remove()
        del model._qat_hook
    del model._qat_table_type, model._qat_table_scales
    return names, blocks
