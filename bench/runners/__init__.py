"""One module per runtime. Each exposes `open(path, threads) -> stream` where `stream(ids, n)` yields n greedy
token ids continuing the prompt `ids` (the prompt's forward pass happens before the first yield; end-of-sequence
is ignored), or `measure(path, threads, ids, n) -> Measurement` when the runtime times itself (LiteRT-LM).
bench.worker runs one in a child process and times it with `timed`."""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Iterator


@dataclasses.dataclass
class Measurement:
    prompt_tokens: int
    ttft_s: float            # request start -> first new token available (prompt forward pass + first pick)
    prefill_tok_s: float     # prompt tokens / prompt-processing time
    decode_tok_s: float      # forward passes after the first token / their wall time
    decoded: int             # tokens produced


def timed(stream: Callable[[list[int], int], Iterator[int]], ids: list[int], n: int) -> Measurement:
    """Time `stream(ids, n)`: TTFT at the first token, decode rate over the remaining n - 1 steps.
    prefill_tok_s = len(ids) / TTFT (TTFT includes picking the first token: well under 1 % of it here)."""
    t0 = time.perf_counter()
    first = last = None
    count = 0
    for _ in stream(ids, n):
        last = time.perf_counter()
        first = first or last
        count += 1
        if count == n:
            break
    if count < n:
        raise RuntimeError(f"the runtime stopped after {count} of {n} tokens")
    ttft = first - t0
    return Measurement(len(ids), ttft, len(ids) / ttft, (n - 1) / (last - first) if n > 1 else 0.0, count)
