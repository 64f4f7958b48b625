"""What turns a prompt with images into a vision-language model's input, from the facts its manifest states
(`vision`: kind, image size, resampling, normalisation, image token ids): the token ids as the model's processor
lays them out (runtime_py.vision_prompts) and the preprocessed pixels (runtime_py.images). Used by
runtime_py.api.Model and by the reference path of `gemma-export generate`."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .images import ImageSpec, preprocess
from .tokenizer import SPECIAL_PIECE
from .vision_prompts import (SHIELDGEMMA2_POLICIES, START_OF_IMAGE, Gemma3ImageTokens, PaliGemmaImageTokens, gemma3_chat_prompt,
                             gemma3_prompt, paligemma_prompt, shieldgemma2_prompts)

PALIGEMMA = "paligemma"


class VisionFacts:
    """A manifest's `vision` section (export.models.vision_config.VisionLanguageConfig.runtime_facts)."""

    def __init__(self, facts: Mapping, where: str = "manifest.json"):
        try:
            self.kind = str(facts["kind"])
            self.spec = ImageSpec(int(facts["image_size"]), str(facts["resample"]), tuple(facts["mean"]),
                                  tuple(facts["std"]), float(facts["rescale"]))
            per = int(facts["tokens_per_image"])
            if self.kind == PALIGEMMA:
                self.tokens = PaliGemmaImageTokens(int(facts["image_token_id"]), per)
            else:
                self.tokens = Gemma3ImageTokens(int(facts["boi_id"]), int(facts["eoi_id"]),
                                                int(facts["image_token_id"]), per)
            self.classifier = tuple(facts["classifier"]) if facts.get("classifier") else None
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: the vision section lacks a valid field ({e})") from None

    def pixels(self, images: Sequence) -> np.ndarray:
        return preprocess(list(images), self.spec)

    def prompt_ids(self, tokenizer, prompt: str, count: int) -> list[int]:
        """The ids of `prompt` with `count` images. PaliGemma: its processor's layout (images, <bos>, prefix, "\\n").
        Gemma 3: each <start_of_image> marks where an image goes; a prompt without any gets them in front."""
        if self.kind == PALIGEMMA:
            return paligemma_prompt(tokenizer, prompt, count, self.tokens).input_ids
        if count and START_OF_IMAGE not in prompt:
            prompt = START_OF_IMAGE * count + prompt
        return gemma3_prompt(tokenizer, prompt, count, self.tokens).input_ids

    def chat_ids(self, tokenizer, messages: Sequence[Mapping]) -> tuple[list[int], list]:
        """Gemma 3's chat with image items ({"type": "image", "image": path | bytes | PIL image | array}) ->
        (ids, the images in order)."""
        if self.kind == PALIGEMMA:
            raise ValueError("PaliGemma has no chat format: use generate(prompt, images=...)")
        images = [item.get("image") for m in messages if isinstance(m.get("content"), (list, tuple))
                  for item in m["content"] if isinstance(item, Mapping) and item.get("type") == "image"]
        for i, m in enumerate(messages):     # the prompt is encoded whole (as the processor does): no forged markers
            content = m.get("content")
            texts = [content] if isinstance(content, str) else [
                str(item.get("text", "")) for item in content or () if isinstance(item, Mapping)]
            for text in texts:
                found = [p.group() for p in SPECIAL_PIECE.finditer(text) if p.group() in tokenizer]
                if found:
                    raise ValueError(f"chat message {i}: its text holds the control token {found[0]!r}; a chat with "
                                     f"images cannot take control tokens in its texts")
        if any(image is None for image in images):
            raise ValueError("an image item of the chat has no 'image'")
        return gemma3_chat_prompt(tokenizer, messages, True, self.tokens).input_ids, images

    def policy_prompts(self, tokenizer, policies=None, custom_policies=None) -> tuple[list[str], list[list[int]]]:
        """ShieldGemma 2: (policy names, one prompt's ids per policy) for one image. policies: names of the
        built-in policies or of `custom_policies` (name -> description); None: all of them, built-in first."""
        if self.classifier is None:
            raise ValueError("this model has no (Yes, No) classifier: classify_image needs ShieldGemma 2")
        names = list(policies) if policies is not None else list({**SHIELDGEMMA2_POLICIES, **(custom_policies or {})})
        prompts = shieldgemma2_prompts(tokenizer, 1, names, custom_policies, self.tokens)
        return names, [p.input_ids for p in prompts]


def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest prefix every sequence shares."""
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs[1:]):
            return i
    return n


def yes_probability(logits: np.ndarray, yes: int, no: int) -> float:
    """softmax over the (Yes, No) logits, its Yes entry (ShieldGemma's P(violation))."""
    pair = logits[[yes, no]].astype(np.float64)
    p = np.exp(pair - pair.max())
    return float(p[0] / p.sum())
