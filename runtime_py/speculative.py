"""Exact speculative decoding for greedy generation, drafted by prompt lookup.

Drafts are the tokens that followed the latest earlier occurrence of the last n tokens (n = MAX_NGRAM down to
MIN_NGRAM) in the prompt and the text generated so far. The model takes the current token and the draft in one
multi-token call; the draft's longest prefix equal to the model's own greedy picks is kept, plus the pick after it,
and the rest is rolled back from the caches. Every kept token is the model's argmax at its position, so the output
is plain greedy decoding's as far as a multi-row call computes what one-row calls do: bit for bit in float32 here;
kernels that quantize activations at run time (int4/int8 MatMulNBits) round a multi-row call differently, which
can flip a pick where two logits are close (README: exact speculative decoding).

A backend offers it through `stepper.verifier()` -> an object with `__call__(tokens, start) -> logits [T, V]`
(every row, all T tokens kept in the cache) and `rollback(length)`. numpy and the standard library only.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import numpy as np

MAX_NGRAM = 3     # the longest suffix looked up; shorter ones are tried when it has no earlier occurrence
# the shortest: one recurring token predicts its successor too rarely, and a rejected multi-row call costs several
# one-token steps (README: exact speculative decoding)
MIN_NGRAM = 2
MAX_DRAFT = 32    # the largest K accepted (a verify call runs K + 1 rows)


@dataclasses.dataclass
class Speculation:
    """What the drafts did: `calls` multi-token verify calls, `drafted` draft tokens checked, `accepted` kept."""
    k: int
    calls: int = 0
    drafted: int = 0
    accepted: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    def as_dict(self) -> dict:
        return {"k": self.k, "calls": self.calls, "drafted": self.drafted, "accepted": self.accepted,
                "acceptance": round(self.acceptance, 4)}


def check_speculate(k: int, greedy: bool, window: int | None = None) -> int:
    """K as an int; ValueError when it cannot be honoured (sampling, out of range, not below the sliding window)."""
    if not isinstance(k, int) or not 0 <= k <= MAX_DRAFT:
        raise ValueError(f"--speculate {k}: expected an integer in 0..{MAX_DRAFT}")
    if k and not greedy:
        raise ValueError(f"--speculate {k}: exact speculative decoding needs greedy decoding (--temperature 0)")
    if k and window and k >= window:
        raise ValueError(f"--speculate {k}: must be below the sliding window ({window})")
    return k


class NgramDrafter:
    """The token history with, for each n-gram (n <= max_ngram), where its latest earlier occurrence continues."""

    def __init__(self, tokens: Iterable[int] = (), max_ngram: int = MAX_NGRAM, min_ngram: int = MIN_NGRAM):
        self.tokens: list[int] = []
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.next_at: dict[tuple[int, ...], int] = {}
        for t in tokens:
            self.append(t)

    def append(self, token: int) -> None:
        # the n-grams ending at the old end continue with `token`; the new suffix itself is recorded only on the
        # next append, so a lookup of the suffix finds an earlier occurrence
        h, end = self.tokens, len(self.tokens)
        for n in range(self.min_ngram, min(self.max_ngram, end) + 1):
            self.next_at[tuple(h[end - n:end])] = end
        h.append(int(token))

    def draft(self, k: int) -> list[int]:
        """k tokens continuing the longest suffix as its latest earlier occurrence continued ([] when none). An
        occurrence close to the end repeats with that period: a run of one token drafts k more of it."""
        h = self.tokens
        if k <= 0:
            return []
        for n in range(min(self.max_ngram, len(h)), self.min_ngram - 1, -1):
            at = self.next_at.get(tuple(h[-n:]))
            if at is not None:
                out, period = h[at:at + k], len(h) - at       # h[at:] has `period` tokens
                while len(out) < k:
                    out.append(out[-period])
                return out
        return []


def speculative_tokens(step: Callable[[list[int], int], np.ndarray], verifier, prompt: list[int],
                       max_new_tokens: int, k: int, stop_ids: Iterable[int] = (),
                       on_token: Callable[[int], None] | None = None,
                       drafter=None) -> tuple[list[int], Speculation]:
    """Greedy generation as runtime_py.sampling.generate_tokens does it (prefill `prompt` through `step`, stop at a
    stop id or after `max_new_tokens`), with up to `k` draft tokens checked per call by `verifier` (same cache).
    drafter: NgramDrafter(prompt) by default; any object with its append(token) and draft(k). Returns the new ids
    (no stop id) and the draft statistics."""
    if not prompt:
        raise ValueError("the prompt is empty")
    stops, out, stats = set(stop_ids), [], Speculation(k)
    drafter = drafter or NgramDrafter(prompt)
    token = int(np.argmax(step(list(prompt), 0)))
    pos = len(prompt)                       # where `token` goes
    while len(out) < max_new_tokens and token not in stops:
        out.append(token)
        drafter.append(token)
        if on_token:
            on_token(token)
        if len(out) == max_new_tokens:
            break
        # a full acceptance plus the pick after it must fit the budget (and so the stepper's max_len)
        draft = drafter.draft(min(k, max_new_tokens - len(out) - 1))
        if not draft:
            token = int(np.argmax(step([token], pos)))
            pos += 1
            continue
        picks = np.argmax(verifier([token] + draft, pos), axis=-1)       # [1 + len(draft)]
        kept = 0
        while kept < len(draft) and picks[kept] == draft[kept]:
            kept += 1
        verifier.rollback(pos + 1 + kept)
        stats.calls, stats.drafted, stats.accepted = stats.calls + 1, stats.drafted + len(draft), stats.accepted + kept
        for t in draft[:kept]:
            if t in stops:
                return out, stats
            out.append(t)
            drafter.append(t)
            if on_token:
                on_token(t)
        token, pos = int(picks[kept]), pos + 1 + kept
    return out, stats
