"""Text generation on the reference model, through runtime_py's shared loop and sampler."""
from __future__ import annotations

import numpy as np
import torch

from runtime_py.sampling import Sampler, Sampling, generate_tokens, token_budget

from .cache import init_cache
from .gemma import GemmaForCausalLM


class ReferenceStepper:
    """`step(tokens, start) -> last logits` over a GemmaForCausalLM with its own cache."""

    def __init__(self, model: GemmaForCausalLM, max_len: int):
        self.model = model
        p = next(model.parameters())
        self.cache = init_cache(model.config, max_len, dtype=p.dtype, device=p.device)
        self.max_len = max_len

    @torch.inference_mode()
    def __call__(self, tokens: list[int], start: int) -> np.ndarray:
        if start + len(tokens) > self.max_len:
            raise ValueError(f"sequence of {start + len(tokens)} tokens exceeds the cache ({self.max_len})")
        ids = torch.tensor([tokens])
        logits, self.cache = self.model(ids, torch.arange(start, start + len(tokens)), self.cache)
        return logits[0, -1].float().numpy()


def generate(model: GemmaForCausalLM, prompt: list[int], max_new_tokens: int = 32,
             sampling: Sampling = Sampling(), stop_ids=(), on_token=None) -> list[int]:
    """Up to `max_new_tokens` new ids; fewer at a stop id or where the model's context ends."""
    sampler = Sampler(sampling, model.config.vocab_size)
    n = token_budget(len(prompt), max_new_tokens, model.config.max_position, "the model")
    stepper = ReferenceStepper(model, len(prompt) + n)
    return generate_tokens(stepper, prompt, n, sampler, stop_ids, on_token)
