"""`gemma-export validate` on a vision-language artifact: image prompts from the bundled image set
(export.data.images), each followed by the bundled text so that the sequence runs past the sliding window.

The conversion check is split where the artifact is: the vision graph (its image rows against the reference's,
relative RMS error, bounded by how the graph is stored) and the decoder (its logits against the reference
decoder with the recipe simulated, both fed the artifact's own image rows, over whole prompts and teacher-forced
decode steps through its caches, against the recipe's thresholds; a LiteRT artifact, whose prefill gives its last
row's logits only: each prompt's last position and the decode steps). The quantization figures compare the
artifact, end to end, with the float reference; ShieldGemma 2 also reports its largest probability change."""
from __future__ import annotations

import numpy as np
import torch

from .data.images import bundled_images
from .models.cache import init_cache
from .models.generate import generate
from .validate import agreement, compare_logits, greedy_match

IMAGES = 2                  # bundled images validated (each its own prompt)
DECODE_TOKENS = 16          # teacher-forced decode steps per image prompt
GREEDY_TOKENS = 16
# Largest relative RMS error of the vision graph's image rows, by how it is stored: float32 only reorders
# sums; float16 rounds every activation to 11 bits; int8 rounds the weights in blocks of 32.
VISION_FEATURE_ERROR = {"fp32": 1e-4, "fp16": 1e-2, "int8": 5e-2}


def relative_rms(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.sqrt(((got - want) ** 2).mean() / max(float((want ** 2).mean()), 1e-30)))


def _sequences(art, window: int | None, context: int, text_ids: list[int]):
    """(entry, prompt ids, prompt + text ids) per validated image."""
    facts, tok = art.vision, art.tokenizer
    for entry in bundled_images()[:IMAGES]:
        prompt = entry["paligemma_prompt"] if facts.kind == "paligemma" else entry["prompt"]
        ids = facts.prompt_ids(tok, prompt, 1)
        room = context - len(ids) - GREEDY_TOKENS
        want = max((window or 0) + 16 - len(ids), DECODE_TOKENS + 16)
        if room < DECODE_TOKENS:
            raise ValueError(f"{art.path}: the context ({context}) leaves no room after an image prompt "
                             f"of {len(ids)} tokens")
        yield entry, ids, ids + text_ids[:min(room, want)]


@torch.inference_mode()
def vision_logits(art, ref, sim, context: int, text_ids: list[int]) -> tuple[dict, dict]:
    """(figures, conversion) for validate(); sim: the reference decoder with the recipe simulated (the
    reference's own language_model for float recipes)."""
    model, facts = ref.model, art.vision
    quant = (art.manifest or {}).get("vision", {}).get("quant", "fp32")
    # a LiteRT vision artifact's prefill gives its last row's logits only: its whole prompts are checked at their
    # last position, with the decode steps
    whole = getattr(art.backend, "sequence_logits", True)
    refs, sims, arts, all_ids, dec_sim, dec_art, errors, greedy = [], [], [], [], [], [], [], []
    for entry, prompt, ids in _sequences(art, model.config.text.sliding_window, context, text_ids):
        pixels = facts.pixels([entry["file"]])
        art_rows = art.backend.encode_images(pixels)
        ref_rows = model.image_features(torch.from_numpy(pixels))
        errors.append(relative_rms(art_rows, ref_rows.numpy()))
        t, pos = torch.tensor([ids]), torch.arange(len(ids))
        # teacher-forced decode through the caches, on both sides (PaliGemma's decoded tokens are its causal
        # suffix, unlike the same tokens inside one call, which are all prefix); row 0: the prompt's last
        steps = min(DECODE_TOKENS, len(ids) - len(prompt))
        step = art.backend.stepper(len(ids), features=art_rows)
        first = step(prompt, 0)
        dec_art.append(np.stack([first] + [step([ids[p]], p) for p in range(len(prompt), len(prompt) + steps)]))
        dec_sim.append(_teacher_forced(model, sim, torch.from_numpy(art_rows), prompt, ids, steps))
        if whole:
            refs.append(model(t, pos, features=ref_rows)[0][0].numpy())
            sims.append(model(t, pos, features=torch.from_numpy(art_rows), decoder=sim)[0][0].numpy())
            arts.append(art.backend.logits(ids, art_rows))
            all_ids += ids
            dec_art[-1], dec_sim[-1] = dec_art[-1][1:], dec_sim[-1][1:]
        else:
            refs.append(_teacher_forced(model, None, ref_rows, prompt, ids, steps))
            arts.append(dec_art[-1])
            all_ids += ids[len(prompt) - 1:len(prompt) + steps]
        ref_ids = generate(model, prompt, GREEDY_TOKENS, pixels=torch.from_numpy(pixels))
        art_ids = art.generate(prompt, GREEDY_TOKENS, stop_ids=(), images=[entry["file"]]).token_ids
        greedy.append(greedy_match(ref_ids, art_ids))
    ref_all, art_all = np.concatenate(refs), np.concatenate(arts)
    figures = {**compare_logits(ref_all, art_all, all_ids), "tokens": len(all_ids), "images": len(refs),
               "greedy_match_tokens": min(greedy), "greedy_tokens": GREEDY_TOKENS,
               "vision_quant": quant, "vision_feature_error": max(errors)}
    if facts.classifier is not None:
        figures["violation_probability_max_diff"] = _shield_diff(art, ref)
    if not whole:
        figures["logits_checked"] = "each prompt's last position and the teacher-forced decode steps"
    conversion = {"vision": {"relative_error": max(errors), "bound": VISION_FEATURE_ERROR.get(quant, 0.0)},
                  **({"prefill": agreement(np.concatenate(sims), art_all)} if whole else {}),
                  "decode": agreement(np.concatenate(dec_sim), np.concatenate(dec_art))}
    return figures, conversion


def _teacher_forced(model, decoder, features, prompt: list[int], ids: list[int], steps: int) -> np.ndarray:
    """[1 + steps, V]: the prompt's last logits, then `steps` decode steps on ids past it, through the caches
    (decoder None: the model's own)."""
    cache = init_cache(model.config.text, len(ids))
    out, cache = model(torch.tensor([prompt]), torch.arange(len(prompt)), cache, features=features, decoder=decoder)
    rows = [out[0, -1].numpy()]
    for p in range(len(prompt), len(prompt) + steps):
        out, cache = model(torch.tensor([[ids[p]]]), torch.tensor([p]), cache, decoder=decoder)
        rows.append(out[0, -1].numpy())
    return np.stack(rows)


def _shield_diff(art, ref) -> float:
    """ShieldGemma 2: the largest |P(violation)| difference, artifact vs reference, over the built-in policies on
    the first bundled image."""
    entry = bundled_images()[0]
    got = art.classify_image(entry["file"])
    names, prompts = art.vision.policy_prompts(art.tokenizer)
    pixels = torch.from_numpy(art.vision.pixels([entry["file"]]))
    rows = ref.model.image_features(pixels)
    worst = 0.0
    for name, ids in zip(names, prompts):
        p = ref.model.classify(torch.tensor([ids]), features=rows)[0, 0].item()
        worst = max(worst, abs(got[name] - p))
    return worst


def vision_check(figures: dict) -> list[str]:
    """The vision graph's part of the conversion check."""
    v = figures["vision"]
    if not v["relative_error"] <= v["bound"]:
        return [f"vision rows relative error {v['relative_error']:.2e} > {v['bound']}"]
    return []
