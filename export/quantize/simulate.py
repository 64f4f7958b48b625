"""A quantization recipe simulated in PyTorch: what a quantized artifact should compute. The
conversion check (export.validate) holds an artifact against this, so that "did the converter do
what the recipe says" is answered apart from "what does the recipe cost on this checkpoint".

The simulation is a copy of the reference model with every nn.Linear (and the tied embedding / LM
head table) swapped for its quantized counterpart (gpt-fast style; no model code changes):

- weights rounded exactly as the target's quantizer stores them, written here from each library's
  published rule (not by calling it):
  - onnxruntime's MatMulNBits quantizer (MLAS, symmetric): per block of `block` along the input,
    s = -(the block's value of largest magnitude) / 2^(bits-1) in float32, code = roundf(x * (1/s) +
    2^(bits-1)) clipped to [0, 2^bits - 1], value = s * (code - 2^(bits-1));
  - ai-edge-quantizer's min/max rule (symmetric): s = max|x| / qmax per output channel or block, a
    block's scale rounded to bfloat16 precision; q = clip(rint(x / s), qmin, qmax), with [-127, 127]
    for int8 (narrow range) and [-8, 7] for int4;
  - ai-edge-quantizer's HADAMARD_ROTATION: the weight's input dimension rotated by the normalised
    Sylvester-Hadamard matrix of the largest power of two dividing it (block-diagonal), then the
    min/max rule with OCTAV clipping (Sakr et al. 2022, eq. 6: c <- sum_{|x|>=c} |x| /
    (n_{|x|>=c} (1 - 4^-b/3) + n 4^-b/3), from c = 1, at most 10 iterations);
  - a checkpoint tensor the artifact carried (manifest `lossless_import`): its stored values;
- the quantized matmuls' inputs rounded as the target's kernels do at run time: onnxruntime's
  MatMulNBits (accuracy level 4) quantizes them to int8 per block of the weight's block size (scale
  max|a| / 127); XNNPACK's dynamic int8 (LiteRT) per row, asymmetric (scale (max - min) / 255 with a
  zero point), after the Hadamard rotation where the recipe rotates.

What it cannot reproduce exactly: the kernels' accumulation order and their rounding of ties in the
activations, the float32 summation order of OCTAV's sums, and (fp16 recipe) the float16 activations
of the ONNX graph (only its weights are rounded here). The conversion thresholds in
export.quantize.recipes are set from measurements with that slack."""
from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .recipes import Recipe

TABLE = "model.embed_tokens.weight"


def _padded_blocks(w: torch.Tensor, block: int | None) -> tuple[torch.Tensor, int]:
    """[rows, K] -> ([rows * K' / block, block] float32 with K zero-padded to whole blocks, K'); one
    block per row when block is None."""
    w = w.float().reshape(-1, w.shape[-1])
    K = w.shape[-1]
    block = block or K
    padded = -(-K // block) * block
    if padded != K:
        w = F.pad(w, (0, padded - K))
    return w.reshape(-1, block), padded


def _unblock(b: torch.Tensor, shape: torch.Size, padded: int) -> torch.Tensor:
    return b.reshape(-1, padded)[:, :shape[-1]].reshape(shape)


def mlas_values(w: torch.Tensor, bits: int, block: int) -> torch.Tensor:
    """onnxruntime MatMulNBits' symmetric blockwise rounding of `w` [out, in] (blocks along `in`)."""
    half = float(1 << (bits - 1))
    b, padded = _padded_blocks(w, block)
    hi, lo = b.amax(-1, keepdim=True), b.amin(-1, keepdim=True)
    extreme = torch.where(hi.abs() > lo.abs(), hi, lo)
    s = extreme / -half
    inv = torch.where(s == 0, torch.zeros_like(s), 1 / s)
    codes = torch.floor((b * inv + half) + 0.5).clamp_(0, 2 * half - 1)
    return _unblock((codes - half) * s, w.shape, padded)


def _octav_clip(b: torch.Tensor, bits: int) -> torch.Tensor:
    """OCTAV's clipping constant per row of b [rows, n] (ai-edge-quantizer's iteration)."""
    a = b.abs()
    n = b.shape[-1]
    k = torch.tensor(4.0 ** -bits / 3.0, dtype=torch.float32)
    c = torch.ones(b.shape[0], 1)
    for _ in range(10):
        over = a >= c
        new = (a * over).sum(-1, keepdim=True) / (over.sum(-1, keepdim=True).float() * (1 - k) + k * n)
        done = torch.allclose(c, new, rtol=1e-5, atol=1e-8)
        c = new
        if done:
            break
    return c


def aeq_values(w: torch.Tensor, bits: int, block: int | None, octav: bool = False) -> torch.Tensor:
    """ai-edge-quantizer's symmetric rounding of `w` [out, in]: per output channel (block None) or per
    block along `in`; with OCTAV clipping when `octav`."""
    qmax = float((1 << (bits - 1)) - 1)
    qmin = -qmax if bits >= 8 else -qmax - 1
    b, padded = _padded_blocks(w, block)
    bound = b.abs().amax(-1, keepdim=True)
    if octav:
        bound = torch.minimum(bound, _octav_clip(b, bits))
    s = bound.clamp(min=1e-9) / qmax                      # an all-zero row (OCTAV's clip 0 too) stays zeros
    if block is not None:
        s = s.to(torch.bfloat16).to(torch.float16).float()
        s = torch.where(s == 0, torch.ones_like(s), s)   # underflowed in float16: an all-zero block
    q = torch.round(b / s).clamp_(qmin, qmax)
    return _unblock(q * s, w.shape, padded)


def hadamard_size(k: int) -> int:
    return math.gcd(k, 1 << 30)


def hadamard(n: int) -> torch.Tensor:
    """The normalised Sylvester-Hadamard matrix of order n (a power of two), float32."""
    h = np.ones((1, 1), np.int8)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return torch.from_numpy(h.astype(np.float32) / np.float32(math.sqrt(n)))


def rotate(x: torch.Tensor, n: int) -> torch.Tensor:
    """x [..., K] with each run of n along K multiplied by the order-n Hadamard matrix."""
    return (x.reshape(-1, n).float() @ hadamard(n)).reshape(x.shape)


def mlas_activations(x: torch.Tensor, block: int) -> torch.Tensor:
    """MatMulNBits accuracy level 4: int8 per block of `block` along the last dim, scale max|a| / 127."""
    b, padded = _padded_blocks(x, block)
    s = b.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(s == 0, torch.zeros_like(s), 1 / s)
    return _unblock(torch.round(b * inv) * s, x.shape, padded)


def dql_activations(x: torch.Tensor) -> torch.Tensor:
    """ONNX DynamicQuantizeLinear's uint8: one scale and zero point for the whole tensor, range widened to
    include 0, rounded half to even (the web target's table head)."""
    x32 = x.float()
    lo, hi = x32.amin().clamp(max=0), x32.amax().clamp(min=0)
    s = (hi - lo) / 255
    s = torch.where(s == 0, torch.ones_like(s), s)
    zp = torch.round(-lo / s).clamp(0, 255)
    q = (torch.round(x32 / s) + zp).clamp_(0, 255)
    return ((q - zp) * s).reshape(x.shape)


def xnnpack_activations(x: torch.Tensor) -> torch.Tensor:
    """XNNPACK's dynamic int8 (qd8): per row, asymmetric, range widened to include 0."""
    rows = x.float().reshape(-1, x.shape[-1])
    lo = rows.amin(-1, keepdim=True).clamp(max=0)
    hi = rows.amax(-1, keepdim=True).clamp(min=0)
    s = (hi - lo) / 255
    s = torch.where(s == 0, torch.ones_like(s), s)
    zp = torch.round(-128 - lo / s).clamp(-128, 127)
    q = (torch.round(rows / s) + zp).clamp_(-128, 127)
    return ((q - zp) * s).reshape(x.shape)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one format runs one quantized matmul: its weight rounding, input rounding, rotation."""
    fmt: str
    bits: int
    block: int | None
    activations: str            # "fp32" or "int8"
    rotate: bool

    def weight(self, w: torch.Tensor) -> torch.Tensor:
        """-> the float values the artifact computes with (in the rotated basis when rotating)."""
        if self.bits == 16:
            return w.half().float()
        if self.fmt == "onnx":
            return mlas_values(w, self.bits, self.block)
        if self.rotate:
            return aeq_values(rotate(w, hadamard_size(w.shape[-1])), self.bits, self.block, octav=True)
        return aeq_values(w, self.bits, self.block)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        if self.rotate:
            x = rotate(x, hadamard_size(x.shape[-1]))
        if self.activations == "int8-tensor":
            return dql_activations(x)
        if self.activations != "int8":
            return x
        return mlas_activations(x, self.block) if self.fmt == "onnx" else xnnpack_activations(x)


class SimLinear(nn.Module):
    """nn.Linear as the artifact runs it (`weight`: the stored values, rotated basis if rotating)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, plan: Plan | None):
        super().__init__()
        self.weight, self.bias, self.plan = nn.Parameter(weight, requires_grad=False), bias, plan

    def forward(self, x):
        if self.plan is not None:
            x = self.plan.inputs(x).to(x.dtype)
        return F.linear(x, self.weight, self.bias)


class SimEmbedding(nn.Module):
    """The table as the artifact stores it: `weight` feeds the tied head (rotated basis if rotating);
    the lookup reads `rows`, the stored rows rotated back."""

    def __init__(self, weight: torch.Tensor, rows: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.rows = rows

    def forward(self, tokens):
        return F.embedding(tokens, self.rows)


def plan_of(recipe: Recipe, fmt: str, name: str, table: bool = False) -> Plan | None:
    """How format `fmt` runs weight `name` under a format-resolved recipe; None where it stays float32."""
    lay = recipe.layout(name, table)
    return None if lay is None else Plan(fmt, lay.bits, lay.block, lay.activations, lay.hadamard)


def stored_values(blocks) -> torch.Tensor:
    """A checkpoint's stored blocks (StoredBlocks) -> their float values [rows, cols]."""
    codes, scales = blocks.codes_and_scales()
    q = codes.astype(np.float32) - (1 << (blocks.bits - 1))
    return torch.from_numpy((q * scales[..., None]).reshape(blocks.shape))


@torch.no_grad()
def simulate(model: nn.Module, recipe: Recipe, fmt: str, stored: dict | None = None,
             carried: list[str] = ()) -> nn.Module:
    """A copy of `model` computing what `recipe` (resolved for `fmt`: recipe(name, fmt)) makes of it.
    carried: the parameter names the artifact holds as the checkpoint's stored blocks (`stored`)."""
    if recipe.float32:
        return model
    # a copy that shares the float parameters (only the swapped weights are new tensors)
    sim = copy.deepcopy(model, memo={id(p): p for p in model.parameters()}).eval()
    stored, carried = stored or {}, set(carried)
    for name, mod in list(sim.named_modules()):
        for cname, child in list(mod.named_children()):
            full = f"{name}.{cname}.weight" if name else f"{cname}.weight"
            plan = plan_of(recipe, fmt, full) if isinstance(child, nn.Linear) else None
            if plan is None:
                continue
            if full in carried:     # stored integers, never rotated (export.converters.litert.lossless)
                w, plan = stored_values(stored[full]), dataclasses.replace(plan, rotate=False)
            else:
                w = plan.weight(child.weight)
            setattr(mod, cname, SimLinear(w, child.bias, plan if plan.activations == "int8" or plan.rotate
                                          else None))
    table = plan_of(recipe, fmt, TABLE, table=True)
    if table is not None and hasattr(sim, "model") and hasattr(sim.model, "embed_tokens"):
        _swap_table(sim, table, stored.get(TABLE) if TABLE in carried else None)
    return sim


def _swap_table(sim: nn.Module, plan: Plan, carried_blocks) -> None:
    w = sim.model.embed_tokens.weight
    if carried_blocks is not None:
        values, plan = stored_values(carried_blocks), dataclasses.replace(plan, rotate=False)
        rows = values
    else:
        values = plan.weight(w)
        rows = rotate(values, hadamard_size(w.shape[-1])) if plan.rotate else values   # H is its own inverse
    sim.model.embed_tokens = SimEmbedding(values, rows)
    if hasattr(sim, "lm_head") or sim.config.embedding_head is not None:
        return                        # no tied head reads the final norm
    if plan.activations != "fp32" or plan.rotate:
        sim.model.norm.register_forward_hook(lambda m, i, out: plan.inputs(out).to(out.dtype))


__all__ = ["simulate", "plan_of", "Plan", "mlas_values", "aeq_values", "mlas_activations", "xnnpack_activations", "dql_activations",
           "hadamard", "rotate", "stored_values"]
