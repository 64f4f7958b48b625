"""`gemma-export validate DIR`: run an artifact (through runtime_py) and the reference PyTorch model
on the same bundled multi-domain text, longer than the sliding window, and answer two questions:

- conversion (the gate): does the artifact compute what its recipe says? It is compared with the
  reference model with the same recipe simulated in PyTorch (export.quantize.simulate), over the
  whole-sequence logits and over teacher-forced decode steps through the artifact's caches, against
  the recipe's model-independent thresholds. A miss is a converter bug on any model. A LiteRT bundle's
  prefill signatures output no logits (what LiteRT-LM needs): its whole sequence is read through decode
  steps, and each prefill signature through the decode steps after a prompt it ran.
- quantization (reported): what did the recipe cost on this checkpoint? The artifact against the
  float reference: top-1 agreement, KL, perplexity, greedy match (embedding models: cosine and top-10
  retrieval overlap on a bundled query/document set, export.validate_embedding). Only a floor that catches a catastrophe fails it by default; users set their own bar.

The report's top-level figures are the float comparison; `passed` is true only when the conversion
check and every bar pass."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .converters.artifact import SOURCE_MMPROJ
from .converters.onnx.web_folder import WEB_LAYOUT
from .models.checkpoints import load_model
from .models.generate import generate
from .quantize.recipes import AUTO, FLOOR, RECIPES, Bar, conversion_thresholds, planned, recipe as recipe_for, web_recipe
from .quantize.simulate import simulate

GREEDY_TOKENS = 64
DECODE_TOKENS = 32           # teacher-forced decode steps checked against the simulation
MIN_TOKENS = 256             # logits are compared over at least this many positions
FORMATS = {"onnx": "onnx", "litert": "litert", "litertlm": "litert"}     # manifest target -> recipe format


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
        nxt = np.asarray(ids[s + 1:s + 1 + len(r)], np.int64)    # next tokens; the last row has none
        pos = np.arange(len(nxt))
        nll_art -= float(la[pos, nxt].sum())
        nll_ref -= float(lr[pos, nxt].sum())
    return {
        "max_abs_logit_diff": max_diff,
        "top1_agreement": agree / T,
        "kl_divergence": kl / T,
        "perplexity": float(np.exp(nll_art / max(T - 1, 1))),
        "reference_perplexity": float(np.exp(nll_ref / max(T - 1, 1))),
    }


def agreement(sim: np.ndarray, art: np.ndarray, rows: int = 64) -> dict:
    """The conversion figures of art [T, V] against sim [T, V]: top-1 agreement, KL(sim || art), max
    |logit diff| and the relative error RMS(art - sim) / RMS(sim - its mean over the vocabulary), a
    scale-free measure that means the same on a tiny random model and on a real one."""
    T = len(sim)
    agree, kl, err, spread, max_diff = 0, 0.0, 0.0, 0.0, 0.0
    for s in range(0, T, rows):
        r, a = sim[s:s + rows].astype(np.float64), art[s:s + rows].astype(np.float64)
        lr, la = _log_softmax(r), _log_softmax(a)
        agree += int((r.argmax(-1) == a.argmax(-1)).sum())
        kl += float((np.exp(lr) * (lr - la)).sum())
        err += float(((a - r) ** 2).sum())
        spread += float(((r - r.mean(-1, keepdims=True)) ** 2).sum())
        max_diff = float(np.maximum(max_diff, np.abs(r - a).max()))
    return {"top1_agreement": agree / T, "kl_divergence": kl / T,
            "relative_error": float(np.sqrt(err / spread)) if spread > 0 else float(np.sqrt(err)),
            "max_abs_logit_diff": max_diff, "positions": T}


def greedy_match(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def validate(folder: str | Path, model_source: str | None = None, *, loaded=None, bar: Bar = Bar(),
             mmproj: str | None = None) -> dict:
    """Validate the artifact in `folder`. loaded: the reference LoadedModel if the caller has it (the
    export pipeline does), else it is loaded from `model_source` or the manifest's source (with `mmproj`,
    or without `model_source` the manifest's mmproj, as the export loaded it). bar: the user's quantization
    bar (merged with FLOOR)."""
    import runtime_py
    folder = Path(folder)
    art = runtime_py.load(folder)
    manifest = art.manifest or {}
    fmt = FORMATS.get(str(manifest.get("target", "")))
    if (manifest.get("recipe") not in RECIPES and manifest.get("recipe") != AUTO) or fmt is None:
        raise ValueError(f"{folder / 'manifest.json'}: unknown recipe {manifest.get('recipe')!r} or target "
                         f"{manifest.get('target')!r}")
    if manifest["recipe"] == AUTO:
        if not isinstance(manifest.get("plan"), dict):
            raise ValueError(f"{folder / 'manifest.json'}: recipe auto without its per-weight plan")
        recipe = planned(manifest["plan"], fmt)
    elif manifest.get("layout") == WEB_LAYOUT:
        recipe = web_recipe(manifest["recipe"])      # the web graph's table (export/converters/onnx/web_table.py)
    else:
        recipe = recipe_for(manifest["recipe"], fmt)
    if loaded is None and mmproj is None and model_source is None:
        mmproj = manifest.get(SOURCE_MMPROJ)
    ref = loaded if loaded is not None else load_model(model_source or manifest["source"], mmproj=mmproj)
    c = ref.config
    carried = (manifest.get("lossless_import") or {}).get("carried", [])
    if any(n not in ref.stored for n in carried):
        ref = _rounded_again(ref, recipe, manifest, folder)
    vision = manifest.get("kind") == "vision_language"
    sim = simulate(ref.model.language_model if vision else ref.model, recipe, fmt, ref.stored, carried)
    report = {"artifact": str(folder), "recipe": recipe.name, "format": fmt, "source": str(ref.source),
              **({SOURCE_MMPROJ: str(ref.mmproj)} if getattr(ref, "mmproj", None) else {})}
    with torch.inference_mode():
        if vision:
            from .validate_vision import vision_logits
            text = art.tokenizer.encode(validation_text(), add_bos=False)
            figures, conversion = vision_logits(art, ref, sim, manifest.get("context_length", c.max_position), text)
            report.update(figures)
        elif c.embedding_head is not None:
            from .validate_embedding import embedding_figures
            figures, conversion = embedding_figures(art, ref, sim, validation_text().split("\n\n"))
            report.update(figures)
        else:
            figures, conversion = _logits(art, ref.model, sim, manifest.get("context_length", c.max_position))
            report.update(figures)
    del sim
    vision_rows = conversion.pop("vision", None)
    report["conversion"] = _conversion_check(conversion, conversion_thresholds(recipe, fmt, carried))
    if vision_rows is not None:          # the vision graph's part (validate_vision)
        from .validate_vision import vision_check
        report["conversion"]["vision"] = vision_rows
        report["conversion"]["failures"] += vision_check({"vision": vision_rows})
        report["conversion"]["passed"] = not report["conversion"]["failures"]
    report["quantization"] = _quantization_check(report, FLOOR.merged(bar))
    report["failures"] = [f"conversion: {f}" for f in report["conversion"]["failures"]] + \
                         [f"quantization: {f}" for f in report["quantization"]["failures"]]
    report["passed"] = not report["failures"]
    return report


def _rounded_again(ref, recipe, manifest: dict, folder: Path):
    """The reference with the blocks the export computed itself (GPTQ, manifest `rounding`) computed
    again, so that the simulation holds what the artifact should: GPTQ is deterministic given its text."""
    import dataclasses

    from .quantize.gptq import Options, gptq_blocks
    r = manifest.get("rounding") or {}
    if r.get("method") != "gptq":
        raise ValueError(f"{folder / 'manifest.json'}: carried tensors that {ref.source} does not store; "
                         f"validate with the checkpoint it was exported from (--model)")
    source = str(r.get("calibration", ""))
    if not source.startswith("the bundled") and not Path(source).is_file():
        raise ValueError(f"{folder / 'manifest.json'}: GPTQ calibration text {source!r} not found; validate where "
                         f"it is, or let the export validate (gemma-export --target ...)")
    text = None if source.startswith("the bundled") else Path(source).read_text(encoding="utf-8")
    fields = {f.name for f in dataclasses.fields(Options)}
    options = Options(**{k: v for k, v in r.items() if k in fields and k != "table"},
                      **({"table": r["table"]} if r.get("table") else {}))
    blocks = gptq_blocks(ref, recipe, text, tokens=r.get("calibration_tokens", 0), options=options)
    return dataclasses.replace(ref, stored={**ref.stored, **blocks})


def _logits(art, model, sim, context: int) -> tuple[dict, dict]:
    c = model.config
    ids = validation_ids(art.tokenizer, c.sliding_window, context)
    positions = torch.arange(len(ids))
    ref_logits = model(torch.tensor([ids]), positions)[0][0].numpy()
    # a float recipe's simulation is the reference itself: its logits are not computed twice
    sim_logits = ref_logits if sim is model else sim(torch.tensor([ids]), positions)[0][0].numpy()
    # every position: from the prefill chunks, or token by token through decode where the prefill signatures
    # output no logits (a .litertlm bundle's: what LiteRT-LM needs), whose caches are then checked by the steps
    # that follow each of them (below)
    art_logits = art.logits(ids)
    chunks = getattr(art.backend, "prefill_logits", True)
    figures = {**compare_logits(ref_logits, art_logits, ids), "tokens": len(ids),
               **({} if chunks else {"logits_checked": "every position through decode steps (the prefill signatures "
                                                       "output no logits); each prefill signature through the "
                                                       "decode steps after it"})}
    # past the window when the context allows; a short-context artifact greedy-decodes what fits
    prompt = ids[:min(len(ids), (c.sliding_window or 0) + 16, context // 2)]
    count = min(GREEDY_TOKENS, context - len(prompt))
    ref_ids = generate(model, prompt, count)
    art_ids = art.generate(prompt, count, stop_ids=()).token_ids
    figures.update(greedy_match_tokens=greedy_match(ref_ids, art_ids), greedy_tokens=count,
                   greedy_prompt_tokens=len(prompt))
    # teacher-forced decode: the prompt in one prefill, then one token per step through the caches
    steps = min(DECODE_TOKENS, len(ids) - len(prompt))
    step = art.backend.stepper(len(prompt) + steps)
    step(prompt, 0)
    decode = np.stack([step([ids[p]], p) for p in range(len(prompt), len(prompt) + steps)])
    conversion = {"prefill": agreement(sim_logits, art_logits)} if chunks else {
        "sequence": agreement(sim_logits, art_logits), **_after_each_prefill(art.backend, ids, sim_logits)}
    conversion["decode"] = agreement(sim_logits[len(prompt):len(prompt) + steps], decode)
    return figures, conversion


def _after_each_prefill(backend, ids: list[int], sim_logits: np.ndarray) -> dict:
    """{"prefill": figures}: the prefill signatures of an artifact whose prefill outputs no logits, checked through
    what they leave in the caches: for each length T < len(ids), ids[:T] through `prefill_T` in one full chunk, then
    DECODE_TOKENS teacher-forced decode steps from position T (the first one the prompt's held-back last token, as
    LiteRT-LM runs a prompt). {} if no length fits."""
    rows, want = [], []
    for t in backend.prefill_lengths:
        n = min(DECODE_TOKENS, len(ids) - t)
        if n < 1:
            continue
        step = backend.stepper(t + n)
        rows.append(step(ids[:t + 1], 0))
        rows += [step([ids[p]], p) for p in range(t + 1, t + n)]
        want.append(sim_logits[t:t + n])
    return {"prefill": agreement(np.concatenate(want), np.stack(rows))} if rows else {}


def _conversion_check(figures: dict, t) -> dict:
    bad = []
    for path, f in figures.items():
        # written as `not (x <= bound)` so that NaN fails
        if "embedding_cosine" in f:
            if not f["embedding_cosine"] >= t.min_embedding_cosine:
                bad.append(f"embedding cosine {f['embedding_cosine']:.6f} < {t.min_embedding_cosine}")
            continue
        if not f["top1_agreement"] >= t.min_top1_agreement:
            bad.append(f"{path} top-1 agreement {f['top1_agreement']:.4f} < {t.min_top1_agreement}")
        if t.max_kl_divergence is not None and not f["kl_divergence"] <= t.max_kl_divergence:
            bad.append(f"{path} KL {f['kl_divergence']:.2e} > {t.max_kl_divergence}")
        if t.max_relative_error is not None and not f["relative_error"] <= t.max_relative_error:
            bad.append(f"{path} relative logit error {f['relative_error']:.2e} > {t.max_relative_error}")
        if t.max_abs_logit_diff is not None and not f["max_abs_logit_diff"] <= t.max_abs_logit_diff:
            bad.append(f"{path} max |logit diff| {f['max_abs_logit_diff']:.2e} > {t.max_abs_logit_diff}")
    thresholds = {k: v for k, v in vars(t).items() if v is not None}
    return {**figures, "thresholds": thresholds, "failures": bad, "passed": not bad}


def _quantization_check(r: dict, bar: Bar) -> dict:
    bad = []
    if "embedding_cosine" in r:
        figures = {k: r[k] for k in ("embedding_cosine", "embedding_cosine_mean", "retrieval_top10_overlap",
                                     "retrieval_top10_overlap_min")}
        if bar.min_embedding_cosine is not None and not r["embedding_cosine"] >= bar.min_embedding_cosine:
            bad.append(f"embedding cosine {r['embedding_cosine']:.6f} < {bar.min_embedding_cosine}")
    else:
        figures = {k: r[k] for k in ("top1_agreement", "kl_divergence", "perplexity", "reference_perplexity",
                                     "greedy_match_tokens", "greedy_tokens")}
        figures["perplexity_delta"] = r["perplexity"] - r["reference_perplexity"]
        if bar.min_top1_agreement is not None and not r["top1_agreement"] >= bar.min_top1_agreement:
            bad.append(f"top-1 agreement {r['top1_agreement']:.4f} < {bar.min_top1_agreement}")
        if bar.max_kl_divergence is not None and not r["kl_divergence"] <= bar.max_kl_divergence:
            bad.append(f"KL {r['kl_divergence']:.2e} > {bar.max_kl_divergence}")
    kind = ("min_embedding_cosine",) if "embedding_cosine" in r else ("min_top1_agreement", "max_kl_divergence")
    bars = {k: v for k, v in vars(bar).items() if v is not None and k in kind}
    return {**figures, "bar": bars, "failures": bad, "passed": not bad}


def format_report(r: dict) -> str:
    skip = ("failures", "conversion", "quantization")
    lines = [f"{k:>22}: {v}" for k, v in r.items() if k not in skip]
    for path, f in r["conversion"].items():
        if isinstance(f, dict) and path != "thresholds":
            lines.append(f"{'conversion ' + path:>22}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in f.items()))
    lines.append(f"{'conversion':>22}: {'passed' if r['conversion']['passed'] else 'FAILED'} (thresholds "
                 + ", ".join(f"{k} {v}" for k, v in r["conversion"]["thresholds"].items()) + ")")
    q = r["quantization"]
    lines.append(f"{'quantization':>22}: {'passed' if q['passed'] else 'FAILED'} (bar "
                 + ", ".join(f"{k} {v}" for k, v in q["bar"].items()) + ")")
    lines += [f"  FAIL {f}" for f in r["failures"]]
    return "\n".join(lines)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


__all__ = ["validate", "format_report", "compare_logits", "agreement", "validation_ids"]
