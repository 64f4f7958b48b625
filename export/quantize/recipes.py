"""The table of quantization recipes: each with the targets that can build it, the file-name
suffix it produces, the numbers every target reads (weight bits, block size, activation mode, the
tied embedding / LM head's bits and block) and the fidelity thresholds `gemma-export validate`
holds it to."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Thresholds:
    max_abs_logit_diff: float | None = None    # None: not checked (quantized recipes)
    min_top1_agreement: float = 0.0
    max_kl_divergence: float | None = None
    min_greedy_match: int | None = None        # None: not checked; an int: tokens (of 64)
    min_embedding_cosine: float = 0.0


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    suffix: str
    targets: tuple[str, ...]
    thresholds: Thresholds
    description: str
    weight_bits: int = 32             # the transformer body's linear layers (attention and MLP)
    block_size: int | None = None     # along the input dimension; None: one scale per output channel
    activations: str = "fp32"         # "fp32", "fp16", or "int8": quantized dynamically at run time
    embedding_bits: int = 32          # the embedding table, shared with the tied LM head
    embedding_block: int | None = None
    # Hadamard rotation of each quantized linear layer's input (and of its weight rows, so the product is
    # unchanged): spreads Gemma's outlier channels before activations and weights are rounded to int8.
    # Only with int8 activations (the rotated weight feeds the kernel directly, never a float op).
    hadamard: bool = False
    # Per-format differences forced by a library, as (format, {field: value}) pairs; each is
    # explained where the recipe is defined. `recipe(name, format)` returns the resolved recipe.
    overrides: tuple[tuple[str, dict], ...] = ()
    # How int4 weights are rounded by default: "rtn" (to nearest) or "gptq" (export.quantize.gptq;
    # `--gptq` / `--no-gptq` override it).
    rounding: str = "rtn"

    def for_format(self, fmt: str) -> "Recipe":
        changes = dict(self.overrides).get(fmt)
        return dataclasses.replace(self, overrides=(), **changes) if changes else self

    @property
    def quantized(self) -> bool:
        return self.weight_bits < 16 or self.embedding_bits < 16


# Thresholds: top-1 agreement is the product bar (int8 >= 0.98, int4 >= 0.92); KL divergence and
# greedy match are set from Gemma 3 270M measurements (ONNX target, `gemma-export validate`) with
# margin: measured top-1 / KL / greedy tokens are in each row's comment. The embedding cosines
# are not measured (no real EmbeddingGemma offline): reasoned placeholders.
# int8 per block of 32 is what onnxruntime does well: its per-channel int8 path (quantize_dynamic)
# quantizes activations per tensor, and Gemma's outlier channels then cost Gemma 3 270M top-1 0.79.
# ai-edge-quantizer builds int8 weights per channel only (its policy table has no int8 blockwise and
# skips the config silently; forced past the policy, XNNPACK rejects int8 blockwise tensors and the
# reference kernels return zeros), and LiteRT's kernels quantize activations per token. Per channel
# and per token cost Gemma 3 270M top-1 0.932 (KL 2.4e-2; PyTorch fake quantization: the per-token
# activations alone 0.938, the per-row table alone 0.966, the per-channel body alone 0.963). int8
# therefore rotates (ai-edge-quantizer's HADAMARD_ROTATION: the `aeq.hadamard_rotation` op of
# LiteRT's CPU op resolver before each linear layer; not run by the GPU delegate): 0.976 / 3.8e-3,
# greedy 11. int8-wo cannot: that algorithm always feeds the int8 weight to the kernel, which then
# quantizes the activations, so a weight-only recipe would silently become a dynamic one.
_INT8_PER_CHANNEL = (("litert", dict(block_size=None, embedding_block=None)),)
_INT8_ROTATED = (("litert", {**dict(_INT8_PER_CHANNEL)["litert"], "hadamard": True}),)

RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("fp32", "f32", ("onnx", "litert"), Thresholds(1e-3, 0.999, 1e-4, 64, 0.9999), "float32 weights and activations"),
    # 0.998 / 1.0e-5 / 64, max |logit diff| 0.076
    Recipe("fp16", "f16", ("onnx",), Thresholds(0.5, 0.99, 1e-4, 32, 0.999),
           "float16 weights and activations; the residual stream and the RMS norms stay float32 "
           "(Gemma 3 270M's residual reaches 1.0e5, past float16's 65504)",
           weight_bits=16, activations="fp16", embedding_bits=16),
    # 0.976 / 3.5e-3 / 11 (LiteRT, rotated per channel: 0.976 / 3.8e-3 / 11)
    Recipe("int8", "q8", ("onnx", "litert"), Thresholds(None, 0.98, 1e-2, 4, 0.99),
           "int8 symmetric weights in blocks of 32 (LiteRT: per output channel, inputs Hadamard-rotated), "
           "activations quantized to int8 at run time; embedding and tied LM head likewise",
           weight_bits=8, block_size=32, activations="int8", embedding_bits=8, embedding_block=32,
           overrides=_INT8_ROTATED),
    # 0.993 / 7.2e-4 / 43 (LiteRT: 0.949 / 6.1e-3 / 64)
    Recipe("int8-wo", "q8w", ("onnx", "litert"), Thresholds(None, 0.98, 3e-3, 16, 0.99),
           "int8 symmetric weights in blocks of 32 (LiteRT: per output channel), float32 activations "
           "(weight-only); embedding and tied LM head likewise",
           weight_bits=8, block_size=32, activations="fp32", embedding_bits=8, embedding_block=32,
           overrides=_INT8_PER_CHANNEL),
    # 0.674 / 0.52 / 1 (LiteRT rotated: 0.664 / 0.47; unrotated 0.583 / 0.71). int4-b128 and mixed
    # are not rotated on LiteRT: not measured rotated on the real model.
    Recipe("int4", "q4", ("onnx", "litert"), Thresholds(None, 0.92, 0.8, None, 0.95),
           "int4 symmetric weights in blocks of 32 (LiteRT: inputs Hadamard-rotated, except where a "
           "checkpoint's Q4_0 integers are carried), int8 activations; embedding and tied LM head likewise",
           weight_bits=4, block_size=32, activations="int8", embedding_bits=4, embedding_block=32,
           overrides=(("litert", dict(hadamard=True)),)),
    # 0.563 / 0.93 / 1
    Recipe("int4-b128", "q4b128", ("onnx", "litert"), Thresholds(None, 0.92, 1.4, None, 0.95),
           "int4 symmetric weights in blocks of 128, int8 activations; embedding and tied LM head likewise",
           weight_bits=4, block_size=128, activations="int8", embedding_bits=4, embedding_block=128),
    # 0.725 / 0.41 / 1
    Recipe("mixed", "q4e8", ("onnx", "litert"), Thresholds(None, 0.92, 0.6, None, 0.95),
           "int4 attention and MLP weights in blocks of 32 with int8 activations; embedding and tied LM "
           "head int8 in blocks of 32 (LiteRT: per row)",
           weight_bits=4, block_size=32, activations="int8", embedding_bits=8, embedding_block=32,
           overrides=(("litert", dict(embedding_block=None)),)),
)}


def recipe(name: str, target: str) -> Recipe:
    """The recipe `name` as format `target` builds it, checked against what `target` supports
    (before any work is done)."""
    if name not in RECIPES:
        raise ValueError(f"--quant {name}: unknown recipe; known: {', '.join(RECIPES)}")
    r = RECIPES[name]
    if target not in r.targets:
        ok = [n for n, x in RECIPES.items() if target in x.targets]
        raise ValueError(f"--quant {name} is not supported for --target {target}; supported: {', '.join(ok) or 'none'}")
    return r.for_format(target)
