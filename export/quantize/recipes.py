"""The table of quantization recipes: each with the targets that can build it, the file-name
suffix it produces and the fidelity thresholds `gemma-export validate` holds it to."""
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


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("fp32", "f32", ("onnx",), Thresholds(1e-3, 0.999, 1e-4, 64, 0.9999), "float32 weights and activations"),
)}


def recipe(name: str, target: str) -> Recipe:
    """The recipe `name`, checked against what `target` supports (before any work is done)."""
    if name not in RECIPES:
        raise ValueError(f"--quant {name}: unknown recipe; known: {', '.join(RECIPES)}")
    r = RECIPES[name]
    if target not in r.targets:
        ok = [n for n, x in RECIPES.items() if target in x.targets]
        raise ValueError(f"--quant {name} is not supported for --target {target}; supported: {', '.join(ok)}")
    return r
