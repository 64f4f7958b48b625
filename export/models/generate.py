"""Text generation on the reference model, through runtime_py's shared loop and sampler."""
from __future__ import annotations

import numpy as np
import torch

from runtime_py.sampling import Sampler, Sampling, generate_tokens, token_budget

from .cache import init_cache
from .gemma import GemmaForCausalLM


def decoder_config(model):
    """The decoder's GemmaConfig of a causal LM or a vision-language model (export.models.vlm)."""
    return getattr(model.config, "text", model.config)


class ReferenceStepper:
    """`step(tokens, start) -> last logits` over a GemmaForCausalLM (or a VisionLanguageModel, given the
    image rows its prompt's placeholders take: `features` [N, tokens_per_image, d]) with its own cache."""

    def __init__(self, model: GemmaForCausalLM, max_len: int, features: torch.Tensor | None = None):
        self.model = model
        p = next(model.parameters())
        self.cache = init_cache(decoder_config(model), max_len, dtype=p.dtype, device=p.device)
        self.max_len = max_len
        self.features = features

    @torch.inference_mode()
    def __call__(self, tokens: list[int], start: int) -> np.ndarray:
        if start + len(tokens) > self.max_len:
            raise ValueError(f"sequence of {start + len(tokens)} tokens exceeds the cache ({self.max_len})")
        ids = torch.tensor([tokens])
        positions = torch.arange(start, start + len(tokens))
        if self.features is not None:                  # the prompt: its image rows go in with it
            logits, self.cache = self.model(ids, positions, self.cache, features=self.features)
            self.features = None
        else:
            logits, self.cache = self.model(ids, positions, self.cache)
        return logits[0, -1].float().numpy()


def generate(model: GemmaForCausalLM, prompt: list[int], max_new_tokens: int = 32,
             sampling: Sampling = Sampling(), stop_ids=(), on_token=None,
             pixels: torch.Tensor | None = None) -> list[int]:
    """Up to `max_new_tokens` new ids; fewer at a stop id or where the model's context ends. pixels
    [N, 3, S, S]: the images of a vision-language model's prompt."""
    config = decoder_config(model)
    sampler = Sampler(sampling, config.vocab_size)
    n = token_budget(len(prompt), max_new_tokens, config.max_position, "the model")
    features = None
    if pixels is not None:
        with torch.inference_mode():
            features = model.image_features(pixels)
    stepper = ReferenceStepper(model, len(prompt) + n, features)
    return generate_tokens(stepper, prompt, n, sampler, stop_ids, on_token)
