"""gemma-export's artifacts through runtime_py: the backend's stepper and runtime_py's Sampler (greedy), in the
same order of calls as runtime_py.sampling.generate_tokens (which has no "ignore end-of-sequence" mode)."""
from __future__ import annotations

import runtime_py
from runtime_py.sampling import Sampler


def open(path: str, threads: int):
    model = runtime_py.load(path, threads=threads)

    def stream(ids, n):
        step, pick = model.backend.stepper(len(ids) + n), Sampler()
        logits, pos = step(list(ids), 0), len(ids)
        for i in range(n):
            token = pick(logits)
            yield token
            if i + 1 < n:
                logits = step([token], pos)
                pos += 1
    return stream
