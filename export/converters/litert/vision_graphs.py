"""The five models of a vision-language LiteRT artifact, as LiteRT-LM 0.18 runs them (README, "LiteRT vision
bundles"; the contract verified by tools/litertlm_vision_probe.py):

  vision_encoder  images f32 [1, S, S, 3] in [0, 1] (NHWC, what the engine makes of an image: x / 255) ->
                  features [1, patches, h]: the processor's normalisation folded in front of the SigLIP tower
  vision_adapter  soft_tokens [1, patches, h] -> mm_embedding [1, tokens_per_image, d]: the projector (rows in
                  the decoder's input space, copied verbatim by the engine)
  embedder        token_ids int32 [1, 1] -> embeddings [1, 1, d]: the scaled token embedding
  end_of_vision   no input -> embeddings [1, 1, d]: the row after an image's rows (Gemma 3: <end_of_image>;
                  PaliGemma: <bos>, which its prompt has after the image)
  prefill_decode  prefill_{T} / decode: embeddings [1, T, d], input_pos int32 [T], mask f32 [1, 1, T, S],
                  kv_cache_k_{i} / kv_cache_v_{i} -> the caches and logits [1, 1, V]: the last real row's (the
                  engine reads decode's only; runtime_py reads prefill's to end a prompt inside one two-way
                  chunk, as PaliGemma's prefix needs: LiteRT-LM itself holds the last prompt token back)

The decoder takes the engine's global `mask` (0 = visible): which earlier positions and which rows of its own
chunk each row sees, image blocks included. The sliding window is applied in the graph on top of it (the engine's
own local mask puts ring slots in its own layout), and only the chunk's real rows are kept (padded rows arrive
with input_pos 0, as for the text signatures: padding.py)."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from runtime_py.contract import (ATTENTION_MASK, EMBEDDINGS, FEATURES, IMAGES, INPUT_POS, LOGITS, MASK_HIDDEN,
                                 MM_EMBEDDING, TOKEN_IDS)

from ...models.cache import AttentionCache
from ...models.config import LayerType
from ...models.vision_config import GEMMA3
from .padding import padded_chunk
from .signatures import cache_names, cache_shapes


class VisionEncoder(nn.Module):
    """images [1, S, S, 3] in [0, 1] -> {features: the SigLIP tower's [1, patches, h]}."""

    def __init__(self, vlm):
        super().__init__()
        c = vlm.config
        self.tower = vlm.vision_tower
        self.register_buffer("mean", torch.tensor(c.image_mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(c.image_std, dtype=torch.float32))

    def forward(self, images):
        return {FEATURES: self.tower(((images - self.mean) / self.std).permute(0, 3, 1, 2))}


class VisionAdapter(nn.Module):
    def __init__(self, vlm):
        super().__init__()
        self.projector = vlm.multi_modal_projector

    def forward(self, soft_tokens):
        return {MM_EMBEDDING: self.projector(soft_tokens)}


class Embedder(nn.Module):
    def __init__(self, lm):
        super().__init__()
        self.backbone = lm.model

    def forward(self, token_ids):
        return {EMBEDDINGS: self.backbone.embed(token_ids)}


class EndOfVision(nn.Module):
    """The embedder's row of one fixed token, computed once and stored as that row alone (looking it up in the
    graph would store the whole table: 2.7 GB for Gemma 3 4B)."""

    def __init__(self, lm, token: int):
        super().__init__()
        with torch.no_grad():
            row = lm.model.embed(torch.tensor([[token]])).detach().float().clone()      # [1, 1, d]
        self.register_buffer("row", row)

    def forward(self):
        return {EMBEDDINGS: self.row + 0.0}


def end_of_vision_token(vc) -> int:
    """The id whose row follows an image's rows: Gemma 3's <end_of_image>, PaliGemma's <bos>."""
    return vc.eoi_id if vc.kind == GEMMA3 else vc.text.bos_id


@contextlib.contextmanager
def engine_masks(backbone, visible: torch.Tensor, end: torch.Tensor):
    """While active, `backbone` (a GemmaBackbone) attends as LiteRT-LM's `mask` says: visible bool [T, S] over
    absolute positions. Keys are the cache slots' positions and the call's rows; a key at or past `end` (a
    padded row) is never seen. On sliding layers the window applies on top (past keys only); PaliGemma's prefix
    (blocks_in_window False, as transformers ORs it in) is exempt within the call."""
    c = backbone.config
    own = backbone.attention_inputs

    def inputs(positions, cache=None, padding_mask=None, blocks=None):
        ropes, _ = own(positions, None)
        masks, S = {}, visible.shape[-1]
        for i, t in enumerate(c.layer_types):
            if t in masks:
                continue
            keys = torch.cat((cache[i].slot_positions(positions[0]).to(positions.dtype), positions))
            seen = visible.index_select(1, keys.clamp(0, S - 1)) & ((keys >= 0) & (keys < end))[None, :]
            if t is LayerType.LOCAL:
                near = (positions[:, None] - keys[None, :]) < c.sliding_window
                if not c.blocks_in_window:
                    near = near | (keys >= positions[0])[None, :]
                seen = seen & near
            masks[t] = seen[None]
        return ropes, masks

    backbone.attention_inputs = inputs
    try:
        yield
    finally:
        del backbone.attention_inputs


class Decoder(nn.Module):
    """forward(embeddings, input_pos, mask, **caches) -> {"logits": the last real row's [1, 1, V], caches}: the
    decoder on the engine's rows."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm
        names = cache_names(lm.config)
        self.names = list(zip(names[::2], names[1::2]))

    def forward(self, embeddings, input_pos, mask, **caches):
        T = embeddings.shape[1]
        start = input_pos[0]
        positions = start + torch.arange(T, dtype=input_pos.dtype)
        real = (input_pos == positions).sum()
        cache = tuple(AttentionCache(caches[a], caches[b]) for a, b in self.names)
        backbone = self.lm.model
        with engine_masks(backbone, mask[0, 0] > MASK_HIDDEN / 2, start + real):
            if T == 1:
                h, new = backbone(None, positions, cache, embeds=embeddings)
            else:
                with padded_chunk(self.lm, cache, start, real) as chunk:
                    h, new = backbone(None, positions, chunk, embeds=embeddings)
        out = {LOGITS: self.lm.logits(h if T == 1 else h.index_select(1, (real - 1).reshape(1)))}
        for (a, b), entry in zip(self.names, new):
            out[a], out[b] = entry
        return out


def decoder_sample(config, length: int, cache_length: int) -> dict[str, torch.Tensor]:
    return {EMBEDDINGS: torch.zeros(1, length, config.hidden_size),
            INPUT_POS: torch.arange(length, dtype=torch.int32),
            ATTENTION_MASK: torch.zeros(1, 1, length, cache_length),
            **{name: torch.zeros(shape) for name, shape in cache_shapes(config, cache_length).items()}}


def encoder_sample(vc) -> dict[str, torch.Tensor]:
    S = vc.vision.image_size
    return {IMAGES: torch.zeros(1, S, S, 3)}


def adapter_sample(vc) -> dict[str, torch.Tensor]:
    return {"soft_tokens": torch.zeros(1, vc.vision.num_patches, vc.vision.hidden_size)}


def embedder_sample() -> dict[str, torch.Tensor]:
    return {TOKEN_IDS: torch.zeros(1, 1, dtype=torch.int32)}
