"""`gemma-export validate DIR`: run an artifact (through runtime_py) and the reference PyTorch model
on the same bundled multi-domain text, longer than the sliding window, and compare."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .models.checkpoints import load_model
from .models.generate import generate
from .quantize.recipes import RECIPES

GREEDY_TOKENS = 64
MIN_TOKENS = 256             # logits are compared over at least this many positions


def validation_text() -> str:
    return resources.files("export.data").joinpath("validation.txt").read_text(encoding="utf-8")


def validation_ids(tokenizer, window: int | None, context: int) -> list[int]:
    """The bundled text, repeated if needed to run past the window, BOS first."""
    ids = tokenizer.encode(validation_text())
    need = min((window or 0) + GREEDY_TOKENS + 16, context - GREEDY_TOKENS)
    while len(ids) < need:
        ids += tokenizer.encode(validation_text(), add_bos=False)
    return ids[:min(context, max(need, min(len(ids), MIN_TOKENS)))]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def compare_logits(ref: np.ndarray, art: np.ndarray, ids: list[int], rows: int = 64) -> dict:
    """ref, art: [T, V] logits at the same positions of `ids` (processed `rows` at a time, since
    float64 copies of a 262k vocabulary are large)."""
    T = len(ids)
    max_diff, agree, kl, nll_art, nll_ref = 0.0, 0, 0.0, 0.0, 0.0
    for s in range(0, T, rows):
        r, a = ref[s:s + rows], art[s:s + rows]
        lr, la = _log_softmax(r), _log_softmax(a)
        max_diff = float(np.maximum(max_diff, np.abs(r - a).max()))     # NaN propagates
        agree += int((r.argmax(-1) == a.argmax(-1)).sum())
        kl += float((np.exp(lr) * (lr - la)).sum())
        nxt = np.asarray(ids[s + 1:s + 1 + len(r)])          # next tokens; the last row has none
        pos = np.arange(len(nxt))
        nll_art -= float(la[pos, nxt].sum())
        nll_ref -= float(lr[pos, nxt].sum())
    return {
        "max_abs_logit_diff": max_diff,
        "top1_agreement": agree / T,
        "kl_divergence": kl / T,
        "perplexity": float(np.exp(nll_art / (T - 1))),
        "reference_perplexity": float(np.exp(nll_ref / (T - 1))),
    }


def greedy_match(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def validate(folder: str | Path, model_source: str | None = None) -> dict:
    import runtime_py
    folder = Path(folder)
    art = runtime_py.load(folder)
    manifest = art.manifest
    recipe = RECIPES.get(manifest.get("recipe", ""))
    if recipe is None:
        raise ValueError(f"{folder / 'manifest.json'}: unknown recipe {manifest.get('recipe')!r}")
    ref = load_model(model_source or manifest["source"])
    c = ref.config
    report = {"artifact": str(folder), "recipe": recipe.name, "source": str(ref.source)}
    with torch.inference_mode():
        if c.embedding_head is not None:
            report.update(_compare_embeddings(art, ref))
        else:
            context = manifest.get("context_length", c.max_position)
            ids = validation_ids(art.tokenizer, c.sliding_window, context)
            ref_logits = ref.model(torch.tensor([ids]), torch.arange(len(ids)))[0][0].numpy()
            report.update(compare_logits(ref_logits, art.logits(ids), ids), tokens=len(ids))
            # past the window when the context allows; a short-context artifact greedy-decodes what fits
            prompt = ids[:min(len(ids), (c.sliding_window or 0) + 16, context // 2)]
            count = min(GREEDY_TOKENS, context - len(prompt))
            ref_ids = generate(ref.model, prompt, count)
            art_ids = art.generate(prompt, count, stop_ids=()).token_ids
            report.update(greedy_match_tokens=greedy_match(ref_ids, art_ids), greedy_tokens=count,
                          greedy_prompt_tokens=len(prompt))
    report["failures"] = _check(report, recipe.thresholds)
    report["passed"] = not report["failures"]
    return report


def _compare_embeddings(art, ref) -> dict:
    texts = [t[:400] for t in validation_text().split("\n\n") if t.strip()][:8]
    got = art.embed(texts)
    cos = []
    for text, g in zip(texts, got):
        ids = torch.tensor([art.embedding_ids(text)])           # the runtime's own token ids
        cos.append(float(np.dot(ref.model(ids)[0].numpy(), g)))
    return {"embedding_cosine": min(cos), "texts": len(texts)}


def _check(r: dict, t) -> list[str]:
    bad = []
    if "embedding_cosine" in r:
        if not r["embedding_cosine"] >= t.min_embedding_cosine:
            bad.append(f"embedding cosine {r['embedding_cosine']:.6f} < {t.min_embedding_cosine}")
        return bad
    # written as `not (x <= bound)` so that NaN fails
    if t.max_abs_logit_diff is not None and not r["max_abs_logit_diff"] <= t.max_abs_logit_diff:
        bad.append(f"max |logit diff| {r['max_abs_logit_diff']:.2e} > {t.max_abs_logit_diff}")
    if not r["top1_agreement"] >= t.min_top1_agreement:
        bad.append(f"top-1 agreement {r['top1_agreement']:.4f} < {t.min_top1_agreement}")
    if t.max_kl_divergence is not None and not r["kl_divergence"] <= t.max_kl_divergence:
        bad.append(f"KL {r['kl_divergence']:.2e} > {t.max_kl_divergence}")
    want = None if t.min_greedy_match is None else min(t.min_greedy_match, r.get("greedy_tokens", GREEDY_TOKENS))
    if want is not None and r["greedy_match_tokens"] < want:
        bad.append(f"greedy match {r['greedy_match_tokens']} < {want} tokens")
    return bad


def format_report(r: dict) -> str:
    lines = [f"{k:>22}: {v}" for k, v in r.items() if k not in ("failures",)]
    lines += [f"  FAIL {f}" for f in r["failures"]]
    return "\n".join(lines)


__all__ = ["validate", "format_report", "compare_logits", "validation_ids"]
