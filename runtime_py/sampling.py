"""Token selection and the generation loop, shared by every backend (the reference PyTorch model,
ONNX, LiteRT): a backend supplies `step(tokens, start) -> last-position logits` and keeps its own
cache; this module never sees a tensor library other than numpy."""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Sampling:
    """temperature 0 = greedy. top_k 0 and top_p 1.0 disable those filters."""
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if not 0 <= self.temperature < math.inf:          # NaN fails this too
            raise ValueError(f"--temperature must be a finite number >= 0, got {self.temperature}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"--top-k must be an integer >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not (isinstance(self.seed, int) and self.seed >= 0):
            raise ValueError(f"--seed must be an integer >= 0, got {self.seed}")

    def check_vocab(self, vocab_size: int | None) -> None:
        """Refuse settings the model's vocabulary cannot honour (before any work)."""
        if vocab_size and self.top_k > vocab_size:
            raise ValueError(f"--top-k {self.top_k}: larger than the vocabulary ({vocab_size} tokens)")


class Sampler:
    def __init__(self, sampling: Sampling = Sampling(), vocab_size: int | None = None):
        sampling.check_vocab(vocab_size)
        self.s = sampling
        self.rng = np.random.default_rng(sampling.seed)

    def __call__(self, logits: np.ndarray) -> int:
        """logits: [V] -> the chosen token id."""
        if self.s.temperature == 0.0:
            return int(np.argmax(logits))       # on the logits as given: widening to float64 changes no order
        logits = np.asarray(logits, dtype=np.float64)
        logits = logits / self.s.temperature
        if self.s.top_k:
            kth = np.partition(logits, -self.s.top_k)[-self.s.top_k]
            logits = np.where(logits < kth, -np.inf, logits)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        if self.s.top_p < 1.0:
            order = np.argsort(-probs)
            cum = np.cumsum(probs[order])
            keep = order[: int(np.searchsorted(cum, self.s.top_p) + 1)]   # smallest set reaching top_p
            mask = np.zeros_like(probs)
            mask[keep] = probs[keep]
            probs = mask / mask.sum()
        return int(self.rng.choice(len(probs), p=probs))


def generate_tokens(step: Callable[[list[int], int], np.ndarray], prompt: list[int], max_new_tokens: int,
                    sampler: Sampler | None = None, stop_ids: Iterable[int] = (),
                    on_token: Callable[[int], None] | None = None) -> list[int]:
    """Prefill `prompt`, then decode until a stop id or `max_new_tokens`. Returns the new ids
    (a stop id that ended generation is not included)."""
    if not prompt:
        raise ValueError("the prompt is empty")
    sampler = sampler or Sampler()
    stops = set(stop_ids)
    out: list[int] = []
    logits = step(list(prompt), 0)
    pos = len(prompt)
    for _ in range(max_new_tokens):
        token = sampler(logits)
        if token in stops:
            break
        out.append(token)
        if on_token:
            on_token(token)
        if len(out) == max_new_tokens:
            break
        logits = step([token], pos)
        pos += 1
    return out


def token_budget(prompt_tokens: int, max_new_tokens: int, context: int, where) -> int:
    """How many new tokens to generate: `max_new_tokens`, or fewer where the context ends (generation then
    stops cleanly with finish reason "context"); ValueError when the prompt alone fills the context."""
    if max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens must be >= 0, got {max_new_tokens}")
    room = context - prompt_tokens
    if room <= 0:
        raise ValueError(f"the prompt has {prompt_tokens} tokens; {where} takes at most {context} in all")
    return min(int(max_new_tokens), room)


def finish_reason(new_tokens: int, budget: int, max_new_tokens: int) -> str:
    """"stop" (a stop id came first), "length" (max_new_tokens reached) or "context" (the context was full)."""
    return "stop" if new_tokens < budget else ("length" if budget == max_new_tokens else "context")


def check_step(tokens: list[int], start: int, length: int, max_len: int, path, context: int) -> list[int]:
    """The checks every backend's step(tokens, start) makes; returns the tokens as ints."""
    tokens = [int(t) for t in tokens]
    if not tokens:
        raise ValueError("step() needs at least one token")
    if start != length:
        raise ValueError(f"step(start={start}) but the cache holds {length} tokens: each step continues "
                         f"where the last one ended (use a new stepper to start over)")
    if start + len(tokens) > max_len:
        raise ValueError(f"{start + len(tokens)} tokens exceed this stepper's max_len {max_len} "
                         f"(context length of {path}: {context})")
    return tokens
