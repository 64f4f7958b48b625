"""The seeing Gemmas as one module: SigLIP tower -> projector -> image rows spliced into a Gemma decoder's
input embeddings at the image placeholder tokens. PaliGemma 1/2 (linear projector, prefix-LM attention,
RoPE positions from 1) and Gemma 3 4B/12B/27B (4x4 average pool, soft-embedding RMSNorm, projection; image
tokens attend to each other both ways); ShieldGemma 2 is Gemma 3 read through two logits. Mirrors
transformers' PaliGemmaForConditionalGeneration, Gemma3ForConditionalGeneration and
ShieldGemma2ForImageClassification; parameter names match their checkpoints' older layout
(`vision_tower.*`, `multi_modal_projector.*`, `language_model.model.*`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cache import Cache
from .gemma import GemmaForCausalLM
from .layers import RMSNorm
from .siglip import SiglipVisionTower
from .vision_config import GEMMA3, PALIGEMMA, VisionLanguageConfig


class PaliGemmaProjector(nn.Module):
    def __init__(self, c: VisionLanguageConfig):
        super().__init__()
        self.linear = nn.Linear(c.vision.hidden_size, c.text.hidden_size)

    def forward(self, features):
        return self.linear(features)


class Gemma3Projector(nn.Module):
    """[N, p*p, h] patch features -> average pool to tokens_per_image -> RMSNorm (1 + w) -> [N, tokens, d]."""

    def __init__(self, c: VisionLanguageConfig):
        super().__init__()
        self.side = c.vision.patches_per_side
        self.kernel = self.side // round(c.tokens_per_image ** 0.5)
        self.mm_soft_emb_norm = RMSNorm(c.vision.hidden_size, c.vision.layer_norm_eps)
        self.mm_input_projection_weight = nn.Parameter(torch.zeros(c.vision.hidden_size, c.text.hidden_size))

    def forward(self, features):
        N, _, h = features.shape
        grid = features.transpose(1, 2).reshape(N, h, self.side, self.side)
        pooled = F.avg_pool2d(grid, self.kernel).flatten(2).transpose(1, 2)          # [N, tokens, h]
        return torch.matmul(self.mm_soft_emb_norm(pooled), self.mm_input_projection_weight).type_as(features)


PROJECTORS = {PALIGEMMA: PaliGemmaProjector, GEMMA3: Gemma3Projector}


class VisionLanguageModel(nn.Module):
    def __init__(self, config: VisionLanguageConfig):
        super().__init__()
        self.config = config
        self.vision_tower = SiglipVisionTower(config.vision)
        self.multi_modal_projector = PROJECTORS[config.kind](config)
        self.language_model = GemmaForCausalLM(config.text)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [N, 3, S, S], normalised as the model's processor does -> rows [N, tokens_per_image, d]
        in the decoder's input space (not scaled by the embedding scale)."""
        return self.multi_modal_projector(self.vision_tower(pixels))

    def embed(self, tokens: torch.Tensor, features: torch.Tensor | None = None, decoder=None) -> torch.Tensor:
        """The decoder's input rows: scaled token embeddings (of `decoder`, default language_model), with the
        image placeholders' rows replaced by `features` [N, tokens_per_image, d] in order (image n fills the
        n-th run of placeholders)."""
        is_image = tokens == self.config.image_token_id
        decoder = decoder or self.language_model
        # the placeholder id may lie outside the vocabulary: transformers looks up id 0 there
        outside = is_image if self.config.image_token_id >= decoder.config.vocab_size else torch.zeros_like(is_image)
        x = decoder.model.embed(torch.where(outside, torch.zeros_like(tokens), tokens))
        if features is None:         # no image with this call: a placeholder (e.g. generated) is an ordinary token
            return x
        count = int(is_image.sum())
        rows = features.reshape(-1, features.shape[-1]).to(x.dtype)
        if count != rows.shape[0]:
            raise ValueError(f"the prompt has {count} image tokens, the images give {rows.shape[0]} rows "
                             f"({features.shape[0]} images x {self.config.tokens_per_image})")
        x = x.clone()
        x[is_image] = rows
        return x

    def blocks(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor | None:
        """[B, T] ids of the bidirectional blocks of this call (layers.block_overlay), or None.
        Gemma 3: each run of image tokens is one block. PaliGemma: the prompt is the prefix, i.e. the whole
        first call (from position 0) is one block; later tokens are the causal suffix."""
        if self.config.kind == PALIGEMMA:
            return torch.zeros_like(tokens) if int(positions[0]) == 0 else None
        is_image = tokens == self.config.image_token_id
        if not bool(is_image.any()):
            return None
        start = is_image & ~F.pad(is_image, (1, 0))[:, :-1]
        return torch.where(is_image, torch.cumsum(start.long(), 1) - 1, torch.full_like(tokens, -1))

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, cache: Cache | None = None,
                pixels: torch.Tensor | None = None, features: torch.Tensor | None = None, decoder=None):
        """tokens [B, T] with image placeholders, positions [T] (from 0), pixels [N, 3, S, S] or their
        `features` (image_features) for the placeholders of this call -> (logits [B, T, V] fp32, cache).
        An image's placeholders must all be in one call (as with a whole prompt). decoder: a stand-in for
        language_model (validation passes its quantization-simulating copy)."""
        if features is None and pixels is not None:
            features = self.image_features(pixels)
        decoder = decoder or self.language_model
        embeds = self.embed(tokens, features, decoder)
        return decoder(None, positions, cache, embeds=embeds, blocks=self.blocks(tokens, positions))

    def classify(self, tokens: torch.Tensor, pixels: torch.Tensor | None = None,
                 features: torch.Tensor | None = None) -> torch.Tensor:
        """ShieldGemma 2: softmax over the last position's (Yes, No) logits -> [B, 2]; [:, 0] = P(violation)."""
        if self.config.classifier is None:
            raise ValueError("this model has no (Yes, No) classifier (ShieldGemma 2 has)")
        logits, _ = self(tokens, torch.arange(tokens.shape[1]), None, pixels, features)
        return torch.softmax(logits[:, -1, list(self.config.classifier)], dim=-1)
