"""Multi-token verify calls and cache rollback on the ONNX backend's stepper (runtime_py.speculative's contract).

Only for shared past/present buffers (our exporter's folders): there a global layer's cache is max_len rows
written at the absolute position, so rows past a rolled-back length are simply overwritten by the next call.
A sliding layer's cache (GroupQueryAttention with sliding_window_cache) holds the last W positions in order:
position q sits at row q - max(0, total - W), and a call that takes the total past W shifts the older rows out.
Rejected tokens shifted out rows still inside the window: before each call the first T rows (all a T-token call
can shift out) are saved, and a rollback moves the kept rows back and restores the saved ones in front.
"""
from __future__ import annotations

import ctypes

import numpy as np

from .sampling import check_step


def window_rollback(rows: np.ndarray, saved: np.ndarray, before: int, count: int, length: int, window: int) -> None:
    """In place: `rows` [..., W, D] is a sliding cache after a call appended `count` tokens to `before`; make it the
    cache of the first `length` tokens (before < length <= before + count <= before + W). `saved` holds the first
    `count` rows from before the call."""
    old0, mid0, new0 = (max(0, n - window) for n in (before, before + count, length))
    shift = mid0 - new0                      # rows shifted out by the call that must come back
    if shift <= 0:
        return
    live = min(length, window) - shift       # kept rows now at 0..live-1, moving to shift..shift+live-1
    rows[..., shift:shift + live, :] = rows[..., :live, :]           # numpy copies overlapping ranges safely
    rows[..., :shift, :] = saved[..., new0 - old0:mid0 - old0, :]


def _view(value, dtype) -> np.ndarray:
    """A writable numpy view of a CPU OrtValue's memory (OrtValue.numpy() copies)."""
    shape = tuple(value.shape())
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer((ctypes.c_byte * size).from_address(value.data_ptr()), dtype).reshape(shape)


class Verifier:
    """`verifier(tokens, start)` -> logits [T, V] (every row; a view reused by the next call of that length), all
    T tokens kept in `stepper`'s cache; `rollback(length)` keeps the first `length` tokens of the sequence."""

    def __init__(self, stepper):
        b = stepper.backend
        why = ("its caches are not shared past/present buffers" if stepper.binding is None else
               "it has recurrent states" if any(kind == "state" for _, _, kind in b.caches) else
               "it is a vision-language decoder" if b.vision_parts is not None else
               "steering inputs are set" if stepper.extra else None)
        if why:
            raise ValueError(f"{b.path}: speculative decoding cannot roll this artifact's caches back ({why})")
        self.stepper, self.window = stepper, b.window
        self.sliding = [past for past, _, kind in b.caches if kind == "sliding"]
        self.before = self.count = 0
        self.saved: dict[str, np.ndarray] = {}

    def _rows(self, name: str) -> np.ndarray:
        return _view(self.stepper.past[name], self.stepper.backend.cache_dtype)

    def __call__(self, tokens: list[int], start: int) -> np.ndarray:
        s = self.stepper
        b = s.backend
        tokens = check_step(tokens, start, s.length, s.max_len, b.path, b.context_length)
        if self.sliding and len(tokens) > self.window:
            raise ValueError(f"{len(tokens)} tokens in one verify call: at most the sliding window ({self.window})")
        self.before, self.count = s.length, len(tokens)
        shifts = self.sliding and s.length + len(tokens) > self.window
        self.saved = {name: self._rows(name)[..., :len(tokens), :].copy() for name in self.sliding} if shifts else {}
        return s.run_rows(tokens)

    def rollback(self, length: int) -> None:
        if not self.before < length <= self.before + self.count:
            raise ValueError(f"rollback to {length} tokens: the last call covered {self.before + 1}.."
                             f"{self.before + self.count}")
        for name, saved in self.saved.items():
            window_rollback(self._rows(name), saved, self.before, self.count, length, self.window)
        self.stepper.length = length
