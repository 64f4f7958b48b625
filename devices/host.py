"""`gemma-export profile ARTIFACT --device host`: load the artifact with runtime_py and time it here.

Each run loads the artifact afresh (load_s), warms it up (one short prefill and two decode steps, not
timed: XNNPACK packs weights and onnxruntime allocates on the first calls), then for every prompt length
prefills a prompt of that many tokens from an empty cache; after the first (shortest) prompt it also
decodes `decode_tokens` tokens greedily. Time to first token is the shortest prompt's prefill plus picking
its first token. A vision-language artifact also times one request with a bundled image (devices.vision:
preprocessing, the image's encode, the prefill of its prompt), before the text prompts. Peak RSS is the
process's high-water mark (VmHWM), reset at the start of each run where the kernel allows it
(/proc/self/clear_refs). The median over runs is reported."""
from __future__ import annotations

import gc
import os
import time
from pathlib import Path

import numpy as np

import runtime_py

from .measure import cpu_model, peak_rss_mb, reset_peak_rss
from .profile import summarize
from .vision import image_settings, special_ids, time_image

PROMPT_LENGTHS = (128, 512)
DECODE_TOKENS = 128


def host_info(threads: int | None) -> dict:
    return {"name": "host", "cpu": cpu_model(), "cores": os.cpu_count(), "threads": threads or "runtime default"}


def prompt_ids(vocab: int, n: int, seed: int = 0, skip=frozenset()) -> list[int]:
    """A fixed prompt of n token ids: <bos> then ids drawn from the vocabulary past the special tokens, none of
    `skip` (a vision model's image markers: a text prompt cannot hold them)."""
    rng = np.random.default_rng(seed)
    low = min(16, vocab - 1)
    return [2] + [low if i in skip else i for i in rng.integers(low, vocab, n - 1).tolist()]


def one_run(artifact: str | Path, threads: int | None, lengths, decode_tokens: int, spin: bool = True) -> dict:
    gc.collect()
    reset_peak_rss()
    t0 = time.perf_counter()
    model = runtime_py.load(artifact, threads=threads, spin=spin)
    load_s = time.perf_counter() - t0
    if model.kind != "causal":
        raise ValueError(f"{artifact}: an embedding model; profiling times text generation")
    vocab = int(model.config.get("vocab_size") or model.backend.vocab_size)
    context = model.backend.context_length
    if max(lengths) + 1 > context or min(lengths) + decode_tokens > context:
        raise ValueError(f"--prompt-lengths {','.join(map(str, lengths))} / --decode-tokens {decode_tokens}: "
                         f"do not fit {artifact}'s context length {context}")
    skip = special_ids(model)
    model.time_steps(prompt_ids(vocab, min(8, context - 2), seed=1, skip=skip), 2)          # warm-up, not timed
    image = time_image(model) if model.vision is not None else {}
    prefill, ttft_ms, decode = {}, None, None
    for i, n in enumerate(sorted(lengths)):
        t = model.time_steps(prompt_ids(vocab, n, skip=skip), decode_tokens if i == 0 else 0)
        prefill[str(n)] = round(n / t.prefill_s, 3)
        if i == 0:
            ttft_ms = round(t.first_token_s * 1e3, 3)
            decode = round(len(t.decode_s) / sum(t.decode_s), 3) if t.decode_s else None
    del model
    return {"ttft_ms": ttft_ms, "prefill_tok_s": prefill, "decode_tok_s": decode,
            "peak_rss_mb": peak_rss_mb(), "load_s": round(load_s, 3), **image}


def profile_host(artifact: str | Path, *, threads: int | None = None, runs: int = 3,
                 prompt_lengths=PROMPT_LENGTHS, decode_tokens: int = DECODE_TOKENS, on_run=None,
                 spin: bool = True) -> dict:
    """Profile `artifact` on this machine; `on_run(i, run)` is called after each run."""
    if runs < 1:
        raise ValueError(f"--runs {runs}: must be at least 1")
    lengths = sorted({int(n) for n in prompt_lengths})
    if not lengths or lengths[0] < 1:
        raise ValueError(f"--prompt-lengths {prompt_lengths}: each must be at least 1")
    results = []
    for i in range(runs):
        results.append(one_run(artifact, threads, lengths, decode_tokens, spin))
        if on_run:
            on_run(i, results[-1])
    settings = {"threads": threads, "spin": spin, "runs": runs, "prompt_lengths": lengths,
                "decode_tokens": decode_tokens, "runtime": "runtime_py",
                **(image_settings() if "image_encode_ms" in results[0] else {})}
    return summarize(results, artifact=artifact, device=host_info(threads), settings=settings)
