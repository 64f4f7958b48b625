"""Multi-token verify calls and cache rollback on the LiteRT backend's stepper (runtime_py.speculative's contract).

Only for artifacts whose `prefill_{T}` signatures output logits at every row (`--target litert`; contract
PREFILL_LOGITS): a verify call is one prefill chunk (the shortest signature that holds it, tail padded), and its
rows are the model's picks. `.litertlm` bundles (`--target android|ios`) output no prefill logits: refused.
Caches are [1, G, S, D] with position q in slot q % S. Full-context caches keep rejected rows in slots the causal
mask hides from every earlier position, and the next call overwrites them. Window caches (S < the context) are
rings: a rejected token's write took the slot of a position still inside the window, so when the call reaches past
S the window caches are read before it and the rejected tokens' slots written back after.
"""
from __future__ import annotations

import numpy as np

from .contract import KV_CACHE_PREFIX, LOGITS
from .sampling import check_step


class Verifier:
    """`verifier(tokens, start)` -> logits [T, V] (every row), all T tokens kept in `stepper`'s caches;
    `rollback(length)` keeps the first `length` tokens of the sequence."""

    def __init__(self, stepper):
        b, sigs = stepper.backend, stepper.sigs
        why = ("its prefill signatures output no logits (a .litertlm bundle: LiteRT-LM never reads them)"
               if not sigs.has(LOGITS) else
               "it has recurrent states" if any(not c.startswith(KV_CACHE_PREFIX) for c in b.caches) else None)
        if why:
            raise ValueError(f"{b.path}: speculative decoding cannot check drafts on this artifact ({why})")
        self.stepper, self.longest = stepper, max(sigs.lengths)
        self.slots = {c: int(b.decode.inputs[c]["shape"][2]) for c in b.caches}
        self.rings = [c for c, s in self.slots.items() if s < b.context_length]
        self.before = self.count = 0
        self.saved: dict[str, np.ndarray] = {}

    def __call__(self, tokens: list[int], start: int) -> np.ndarray:
        s = self.stepper
        b = s.backend
        tokens = check_step(tokens, start, s.length, s.max_len, b.path, b.context_length)
        if len(tokens) > self.longest or any(len(tokens) > self.slots[c] for c in self.rings):
            raise ValueError(f"{len(tokens)} tokens in one verify call: at most {self.longest} (the longest prefill "
                             f"signature) and the smallest window")
        if s.state is None:
            s.state = b.new_state()
        self.before, self.count = s.length, len(tokens)
        self.saved = {c: s.state.read(c) for c in self.rings if s.length + len(tokens) > self.slots[c]}
        length = min(t for t in s.sigs.lengths if t >= len(tokens))
        ran = b.run_chunk(s.sigs.prefill[length], tokens, s.length, s.state, s.sigs.feeds)
        s.length += len(tokens)
        return b.logits_of(ran, len(tokens))

    def rollback(self, length: int) -> None:
        if not self.before < length <= self.before + self.count:
            raise ValueError(f"rollback to {length} tokens: the last call covered {self.before + 1}.."
                             f"{self.before + self.count}")
        state = self.stepper.state
        for c, saved in self.saved.items():
            if length < self.before + self.count:
                rows = state.read(c)
                taken = [q % self.slots[c] for q in range(length, self.before + self.count)]
                rows[:, :, taken] = saved[:, :, taken]
                state.current[c].write(rows)
        self.stepper.length = length
