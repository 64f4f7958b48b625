"""The table of quantization recipes: each with the targets that can build it, the file-name
suffix it produces, the numbers every target reads (weight bits, block size, activation mode, the
tied embedding / LM head's bits and block) and the fidelity thresholds `gemma-export validate`
holds it to."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """The conversion check: the artifact against the reference model with the same recipe simulated
    in PyTorch (export.quantize.simulate), on the validation text, over the whole-sequence (prefill)
    logits and teacher-forced decode steps alike. Model-independent: a miss is a converter bug."""
    min_top1_agreement: float = 0.0
    max_kl_divergence: float | None = None
    max_relative_error: float | None = None       # RMS(artifact - simulation) / RMS(simulation's spread)
    max_abs_logit_diff: float | None = None        # None: not checked
    min_embedding_cosine: float = 0.0


@dataclasses.dataclass(frozen=True)
class Bar:
    """The quantization cost a user accepts: the artifact against the float reference model."""
    min_top1_agreement: float | None = None
    max_kl_divergence: float | None = None
    min_embedding_cosine: float | None = None

    def merged(self, other: "Bar") -> "Bar":
        """The stricter of two bars, field by field."""
        pick = lambda a, b, f: b if a is None else a if b is None else f(a, b)  # noqa: E731
        return Bar(pick(self.min_top1_agreement, other.min_top1_agreement, max),
                   pick(self.max_kl_divergence, other.max_kl_divergence, min),
                   pick(self.min_embedding_cosine, other.min_embedding_cosine, max))


# What fails any recipe by default: a catastrophe, not a cost. A causal LM whose next-token distribution
# is more than 3 nats from its float model's no longer models the text: a uniform guess over Gemma's
# 262k vocabulary is ~10 nats away, while every 4-bit recipe measured on Gemma 3 270M stays below 1.2
# (README). Top-1 agreement has no floor: on a model with near-flat logits (a tiny random test model)
# it is noise, so it is the user's bar to set. An embedding model whose vectors point less than 0.9
# the same way as its float model's no longer ranks like it.
FLOOR = Bar(max_kl_divergence=3.0, min_embedding_cosine=0.9)


@dataclasses.dataclass(frozen=True)
class Layout:
    """How an artifact stores one weight and feeds its matmul."""
    bits: int                   # 4, 8: integers; 16: float16 weight with float activations
    block: int | None           # scale per block of this many inputs; None: per output channel
    activations: str            # "int8" (quantized at run time by the kernel), "int8-tensor" (by DynamicQuantizeLinear:
                                # one asymmetric scale per tensor; the web target's table) or "fp32"
    hadamard: bool = False      # inputs and weight rows Hadamard-rotated (LiteRT)


# What `--quant auto` chooses among, per weight, and how each format stores the choice: onnxruntime's
# MatMulNBits (int4 / int8 blocks, int8 activations per block) or a float16 initializer; ai-edge-quantizer's
# int4 blocks and int8 per channel (rotated, as the fixed recipes do: XNNPACK quantizes activations per
# row, which Gemma's outlier channels punish unrotated) or float16 weights (FLOAT_CASTING).
# In order of size; the auto planner starts every weight at the first.
CHOICES: dict[str, dict[str, Layout]] = {
    "int4-b128": {"onnx": Layout(4, 128, "int8"), "litert": Layout(4, 128, "int8", True)},
    "int4": {"onnx": Layout(4, 32, "int8"), "litert": Layout(4, 32, "int8", True)},
    "int8": {"onnx": Layout(8, 32, "int8"), "litert": Layout(8, None, "int8", True)},
    "fp16": {"onnx": Layout(16, None, "fp32"), "litert": Layout(16, None, "fp32")},
}


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
    table_activations: str | None = None    # the tied head's input when not `activations` (the web table's)
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
    # A per-weight plan (`--quant auto`): (parameter name, CHOICES key, its Layout in this recipe's
    # format); weights it does not name follow the fields above.
    plan: tuple[tuple[str, str, Layout], ...] = ()

    def layout(self, name: str, table: bool) -> Layout | None:
        """How weight `name` (the tied embedding / LM head table when `table`) is stored; None: float32."""
        for n, _, lay in self.plan:
            if n == name:
                return lay
        bits, block = (self.embedding_bits, self.embedding_block) if table else (self.weight_bits, self.block_size)
        if bits >= 32:
            return None
        act = "int8" if self.activations == "int8" else "fp32"
        if table and self.table_activations:
            act = self.table_activations
        return Layout(bits, block, act if bits < 16 else "fp32", self.hadamard and bits < 16)

    def choices(self) -> dict[str, str]:
        """The plan as {parameter name: choice} (what manifest.json records)."""
        return {n: c for n, c, _ in self.plan}

    def for_format(self, fmt: str) -> "Recipe":
        changes = dict(self.overrides).get(fmt)
        return dataclasses.replace(self, overrides=(), **changes) if changes else self

    @property
    def float32(self) -> bool:
        """Every weight stays float32 (the artifact computes what the reference model does)."""
        return self.weight_bits >= 32 and self.embedding_bits >= 32 and not self.plan

    @property
    def quantized(self) -> bool:
        return self.weight_bits < 16 or self.embedding_bits < 16 or bool(self.plan)


# Why the per-format differences (figures: README, "Quantization recipes"):
# int8 per block of 32 is what onnxruntime does well: its per-channel int8 path (quantize_dynamic)
# quantizes activations per tensor, which Gemma's outlier channels punish. ai-edge-quantizer builds
# int8 weights per channel only (its policy table has no int8 blockwise and skips the config silently;
# forced past the policy, XNNPACK rejects int8 blockwise tensors and the reference kernels return
# zeros), and LiteRT's kernels quantize activations per token. int8 therefore rotates on LiteRT
# (ai-edge-quantizer's HADAMARD_ROTATION: the `aeq.hadamard_rotation` op of LiteRT's CPU op resolver
# before each linear layer; not run by the GPU delegate), which spreads the outlier channels. int8-wo
# cannot: that algorithm always feeds the int8 weight to the kernel, which then quantizes the
# activations, so a weight-only recipe would silently become a dynamic one.
_INT8_PER_CHANNEL = (("litert", dict(block_size=None, embedding_block=None)),)
_INT8_ROTATED = (("litert", {**dict(_INT8_PER_CHANNEL)["litert"], "hadamard": True}),)

# Conversion thresholds (the artifact against the simulated recipe; export.quantize.simulate). Float
# recipes are exact up to float summation order. Where activations are re-quantized at run time, any
# float difference (an op's summation order) flips an occasional int8 rounding, and the flips grow
# through the layers: on the real Gemma 3 270M the measured gap is a few percent of the logits' spread
# on both formats (README), a broken artifact's (a shifted scale block, a skipped layer, a cache of
# another layer) is of the order of the spread itself. The bounds sit a few times above the former.
EXACT = Thresholds(min_top1_agreement=0.999, max_kl_divergence=1e-4, max_relative_error=1e-3,
                   max_abs_logit_diff=1e-3, min_embedding_cosine=0.9999)
HALF = Thresholds(min_top1_agreement=0.99, max_kl_divergence=1e-3, max_relative_error=2e-2,
                  min_embedding_cosine=0.999)
QUANTIZED = Thresholds(min_top1_agreement=0.9, max_kl_divergence=2e-2, max_relative_error=0.15,
                       min_embedding_cosine=0.99)

# LiteRT with int8 activations into an unrotated matmul (a checkpoint's carried int4 integers -- GPTQ, QAT --
# or a recipe without the rotation): XNNPACK quantizes each row of activations with one scale, which Gemma's
# outlier channels make ~100x the typical value's, so each kernel-order flip costs that much more. Measured
# on the real Gemma 3 270M, all 127 tensors carried: --gptq 0.902 / 3.8e-2 / 0.152, a QAT checkpoint 0.914 /
# 2.5e-2 / 0.133 (top-1 / KL / relative error); an artifact broken on purpose stands at relative error >= 1.
QUANTIZED_UNROTATED = Thresholds(min_top1_agreement=0.85, max_kl_divergence=0.1, max_relative_error=0.3,
                                 min_embedding_cosine=0.99)


def conversion_thresholds(r: Recipe, fmt: str, carried=()) -> Thresholds:
    """The conversion thresholds of format-resolved recipe `r` on `fmt`, `carried` naming the checkpoint
    tensors the artifact holds as stored (never rotated)."""
    int8 = [lay for lay in (r.layout("", False), r.layout("", True), *(lay for *_, lay in r.plan))
            if lay is not None and lay.activations == "int8"]
    unrotated = fmt == "litert" and int8 and (bool(carried) or not all(lay.hadamard for lay in int8))
    return QUANTIZED_UNROTATED if unrotated and r.thresholds == QUANTIZED else r.thresholds


# The web target's table (export/converters/onnx/web_table.py): int8, one scale per row, the tied head's
# activations quantized per tensor by DynamicQuantizeLinear; every recipe with an integer table stores it so there
# (web_recipe), since onnxruntime-web's default bundles lack GatherBlockQuantized.
WEB_RECIPE, WEB_TARGET = "web", "web"      # the web target's default recipe; the targets field naming it
# EmbeddingGemma's default on the web target, measured in headless Chromium with transformers.js's default build
# (bench/browser_embedding.py; README "EmbeddingGemma on the web"): the smallest download that holds the int8
# fidelity goal; a whole text per call keeps MatMulNBits' wasm kernels close to float speed (unlike a causal LM's
# one-token decode), and the table (two thirds of the weights) is read by the lookup alone
WEB_EMBEDDER_RECIPE = "int8"
WEB_TABLE = dict(embedding_block=None, table_activations="int8-tensor")

RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("fp32", "f32", ("onnx", "litert"), EXACT, "float32 weights and activations"),
    Recipe("fp16", "f16", ("onnx",), HALF,
           "float16 weights and activations; the residual stream and the RMS norms stay float32 "
           "(Gemma's residual stream can outgrow float16's 65504)",
           weight_bits=16, activations="fp16", embedding_bits=16),
    Recipe("int8", "q8", ("onnx", "litert"), QUANTIZED,
           "int8 symmetric weights in blocks of 32 (LiteRT: per output channel, inputs Hadamard-rotated), "
           "activations quantized to int8 at run time; embedding and tied LM head likewise",
           weight_bits=8, block_size=32, activations="int8", embedding_bits=8, embedding_block=32,
           overrides=_INT8_ROTATED),
    Recipe("int8-wo", "q8w", ("onnx", "litert"), QUANTIZED,
           "int8 symmetric weights in blocks of 32 (LiteRT: per output channel), float32 activations "
           "(weight-only); embedding and tied LM head likewise",
           weight_bits=8, block_size=32, activations="fp32", embedding_bits=8, embedding_block=32,
           overrides=_INT8_PER_CHANNEL),
    Recipe("int4", "q4", ("onnx", "litert"), QUANTIZED,
           "int4 symmetric weights in blocks of 32 (LiteRT: inputs Hadamard-rotated, except where a "
           "checkpoint's Q4_0 integers are carried), int8 activations; embedding and tied LM head likewise",
           weight_bits=4, block_size=32, activations="int8", embedding_bits=4, embedding_block=32,
           overrides=(("litert", dict(hadamard=True)),)),
    Recipe("int4-b128", "q4b128", ("onnx", "litert"), QUANTIZED,
           "int4 symmetric weights in blocks of 128, int8 activations; embedding and tied LM head likewise",
           weight_bits=4, block_size=128, activations="int8", embedding_bits=4, embedding_block=128),
    Recipe(WEB_RECIPE, "web", (WEB_TARGET,), HALF,
           "--target web only: every weight float16, cast to float32 in the graph (onnxruntime folds the casts: "
           "float32 matmuls, the fastest per byte on onnxruntime-web's wasm build), float32 activations",
           weight_bits=16, embedding_bits=16, table_activations="fp32"),
    Recipe("web-q8", "webq8", (WEB_TARGET,), QUANTIZED,
           "--target web only: float16 attention and MLP weights as `web`; embedding and tied LM head int8 per row, "
           "the head's activations int8 per tensor (DynamicQuantizeLinear + MatMulInteger): half the table's "
           "download, ~3x its time per step on wasm",
           weight_bits=16, embedding_bits=8, **WEB_TABLE),
    Recipe("mixed", "q4e8", ("onnx", "litert"), QUANTIZED,
           "int4 attention and MLP weights in blocks of 32 with int8 activations; embedding and tied LM "
           "head int8 in blocks of 32 (LiteRT: per row)",
           weight_bits=4, block_size=32, activations="int8", embedding_bits=8, embedding_block=32,
           overrides=(("litert", dict(embedding_block=None)),)),
)}


# Weights the ONNX body packs into one MatMul (export/converters/onnx/body.py): one layout, one rotation.
PACKED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


AUTO = "auto"
# GPTQ's calibration (export.quantize.gptq): tokens by default, in windows of this many.
GPTQ_TOKENS = 8192
GPTQ_SEQ = 512


def planned(choices: dict[str, str], fmt: str, base: str = "int4") -> Recipe:
    """The `--quant auto` recipe for format `fmt`: `base`'s numbers for anything `choices` ({parameter
    name: CHOICES key}) does not name."""
    bad = sorted({c for c in choices.values() if c not in CHOICES})
    if bad:
        raise ValueError(f"plan: unknown choice(s) {bad}; known: {', '.join(CHOICES)}")
    plan = tuple((n, c, CHOICES[c][fmt]) for n, c in sorted(choices.items()))
    return dataclasses.replace(RECIPES[base].for_format(fmt), name=AUTO, suffix=AUTO, plan=plan,
                               description="per-weight plan chosen for a fidelity bar (--quant auto)")


def recipe(name: "str | Recipe", target: str) -> Recipe:
    """The recipe `name` as format `target` builds it, checked against what `target` supports
    (before any work is done). A Recipe (a planned one) is taken as already resolved."""
    if isinstance(name, Recipe):
        return name
    if name == AUTO:
        raise ValueError("--quant auto needs a bar to plan for: --min-top1 X")
    if name not in RECIPES:
        raise ValueError(f"--quant {name}: unknown recipe; known: {', '.join(RECIPES)}")
    if target == WEB_TARGET:
        return web_recipe(name)
    r = RECIPES[name]
    if target not in r.targets:
        ok = [n for n, x in RECIPES.items() if target in x.targets]
        raise ValueError(f"--quant {name} is not supported for --target {target}; supported: {', '.join(ok) or 'none'}")
    return r.for_format(target)

# A sparse autoencoder's encoder (--sae-encoder), apart from the model's recipe, per format: None = float32 (the
# published weights as they are). ONNX: (bits, block, accuracy level) of onnxruntime's MatMulNBits; level 4
# quantizes the activations to int8 per block too: its kernel is the fast one (level 0 dequantizes 16k columns
# each call, ~100x slower; README). LiteRT: int8 per channel as the int8 recipe stores a weight (Hadamard-rotated:
# XNNPACK quantizes the residual stream per row, outlier channels included). Biases and thresholds stay float32.
SAE_ENCODERS = {"fp32": {"onnx": None, "litert": None},
                "int8": {"onnx": (8, 32, 4), "litert": CHOICES["int8"]["litert"]}}


def web_recipe(name: "str | Recipe") -> Recipe:
    """The recipe `name` as `--target web` builds it (a causal LM or EmbeddingGemma): the ONNX recipe with an integer
    table stored as WEB_TABLE (int8 per row); float tables as they are."""
    if isinstance(name, str) and name in RECIPES and RECIPES[name].targets == (WEB_TARGET,):
        return RECIPES[name]
    r = recipe(name, "onnx")
    if r.plan:
        raise ValueError("--quant auto: --target web has no per-weight plans yet")
    if r.embedding_bits < 16 and not r.table_activations:
        r = dataclasses.replace(r, embedding_bits=8, **WEB_TABLE)
    return r
