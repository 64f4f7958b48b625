"""`--target litert` for a vision-language model: an artifact folder with the five .tflite models LiteRT-LM's
vision sections take (vision_graphs.py: model.tflite, embedder.tflite, vision_encoder.tflite,
vision_adapter.tflite, end_of_vision.tflite), tokenizer.model and manifest.json (its `vision` section: what
runtime_py and the bundler need). The decoder and the embedder get the recipe (the table stored as the
recipe stores the LM head); the vision encoder --vision-quant (fp32 | fp16 | int8); the adapter and the
end-of-vision row stay float32.

One prefill length only (LiteRT-LM's blocker 1, README): the engine cuts a prompt greedily into the longest
prefill signatures that fit and pads the rest into the shortest, so an image's rows can be split over two
chunks and lose their two-way attention unless every prompt (plus the held-back last token) fits the
shortest signature."""
from __future__ import annotations

import dataclasses
import gc
from pathlib import Path

from runtime_py.contract import (BIDIRECTIONAL, DECODE_SIGNATURE, DEFAULT_CONTEXT, DEFAULT_PREFILL,
                                 LITERT_VISION_FILES, PREFILL_LAST_ROW, PREFILL_LOGITS, VISION_BIDIRECTIONAL, VISION_KEY,
                                 prefill_signature)

from ...models.checkpoints import release
from ...quantize.recipes import RECIPES
from ..artifact import staged_dir, stdout_to_stderr, write_manifest
from .quantize import quantize_tflite
from .signatures import cache_names

# The one prefill length when --prefill is not given (capped by the context): the longest single-turn prompt
# with one image at Gemma 3's 256 rows per image, or PaliGemma 896's 4096 (above it: --prefill).
VISION_PREFILL = 1024
VISION_QUANT = ("fp32", "fp16", "int8")
# The vision encoder's storage: fp16 weights (float activations), or int8 weights per output channel with int8
# activations quantized per row at run time (XNNPACK's dynamic path; no rotation: SigLIP lacks Gemma's
# outlier channels, README's cost table).
_VISION_RECIPES = {"fp16": dataclasses.replace(RECIPES["fp32"], name="vision-fp16", weight_bits=16),
                   "int8": dataclasses.replace(RECIPES["fp32"], name="vision-int8", weight_bits=8,
                                               activations="int8")}
FILES = LITERT_VISION_FILES
DECODER, EMBEDDER, ENCODER, ADAPTER, END = FILES.values()


def vision_prefill(prefill_lengths, context: int) -> int:
    """The one prefill length: VISION_PREFILL (capped by the context) unless --prefill names one."""
    lengths = sorted({int(t) for t in prefill_lengths or ()})
    if not lengths or tuple(lengths) == tuple(DEFAULT_PREFILL):
        return min(VISION_PREFILL, context)
    if len(lengths) > 1:
        raise ValueError(f"--prefill {','.join(map(str, lengths))}: a vision-language LiteRT model takes one "
                         f"prefill length (LiteRT-LM splits a prompt longer than the shortest one, image rows "
                         f"included, and they lose their two-way attention)")
    if not 1 < lengths[0] <= context:
        raise ValueError(f"--prefill {lengths[0]}: must be between 2 and the context length {context}")
    return lengths[0]


def default_vision_quant(r) -> str:
    return "fp32" if r.float32 else "int8"


def check_vision_quant(quant: str) -> str:
    if quant not in VISION_QUANT:
        raise ValueError(f"--vision-quant {quant!r}: expected one of {', '.join(VISION_QUANT)}")
    return quant


def attention_mask_type(vc) -> str:
    """Gemma 3: each image's rows both ways; PaliGemma: its prefix (the whole first chunk) both ways."""
    return VISION_BIDIRECTIONAL if vc.kind == "gemma3" else BIDIRECTIONAL


def export_litert_vision(loaded, out: str | Path, r, prefill_lengths=None, cache_length: int | None = None,
                         vision_quant: str | None = None, consume: bool = False) -> Path:
    """Convert the five models to float32 .tflite files first, then quantize them from disk. consume: the caller
    is done with loaded.model: its weights are freed (moved to the meta device) once no conversion needs them --
    the language model's after the decoder, the embedder and the end-of-vision row, the rest after the encoder
    and the adapter -- so that ai-edge-quantizer runs without the float32 torch model beside it (README, "LiteRT
    vision bundles: real shapes"). The files are the same either way."""
    from . import LOW_MEMORY_FLAGS
    vc = loaded.config
    context = cache_length or min(DEFAULT_CONTEXT, vc.max_position)
    if not 1 <= context <= vc.max_position:
        raise ValueError(f"--context {context}: must be between 1 and the model's context length {vc.max_position}")
    prefill = vision_prefill(prefill_lengths, context)
    quant = check_vision_quant(vision_quant or default_vision_quant(r))
    if loaded.tokenizer is None:
        raise ValueError(f"{loaded.source}: a vision-language LiteRT artifact needs the model's tokenizer.model")
    vlm = loaded.model.eval()
    lm = vlm.language_model
    from . import vision_graphs as g
    with staged_dir(out) as tmp:
        decoder = [(prefill_signature(prefill), g.Decoder(lm), g.decoder_sample(lm.config, prefill, context)),
                   (DECODE_SIGNATURE, g.Decoder(lm), g.decoder_sample(lm.config, 1, context))]
        pending = convert_to_tflite(decoder, lm, tmp, DECODER, r, LOW_MEMORY_FLAGS)
        del decoder
        # the embedder's module holds the whole backbone: a default conversion would copy its unused layers too
        pending += convert_to_tflite([("embedder", g.Embedder(lm), g.embedder_sample())], lm, tmp, EMBEDDER, r,
                                     LOW_MEMORY_FLAGS)
        pending += convert_to_tflite([("end_of_vision", g.EndOfVision(lm, g.end_of_vision_token(vc)), {})], None,
                                     tmp, END, RECIPES["fp32"])
        if consume:
            release(lm)
        pending += convert_to_tflite([("vision_encoder", g.VisionEncoder(vlm), g.encoder_sample(vc))],
                                     vlm.vision_tower, tmp, ENCODER, _VISION_RECIPES.get(quant, RECIPES["fp32"]))
        pending += convert_to_tflite([("vision_adapter", g.VisionAdapter(vlm), g.adapter_sample(vc))], None, tmp,
                                     ADAPTER, RECIPES["fp32"])
        if consume:
            release(vlm)
        del vlm, lm
        quantize_pending(tmp, pending)
        loaded.tokenizer.save(tmp / "tokenizer.model")
        write_manifest(tmp, source=str(loaded.source), config=vc, recipe=r, target="litert", extra={
            "kind": "vision_language", "context_length": context, "prefill_lengths": [prefill],
            "signatures": [prefill_signature(prefill), DECODE_SIGNATURE], PREFILL_LOGITS: PREFILL_LAST_ROW,
            "kv_cache": {"layout": "[1, kv_heads, slots, head_dim]", "names": cache_names(vc.text),
                         "slots": [vc.text.cache_length(i, context) for i in range(vc.text.num_layers)],
                         "sliding_window": vc.text.sliding_window},
            VISION_KEY: {**vc.runtime_facts(), "quant": quant, "files": FILES,
                         "attention_mask": attention_mask_type(vc),
                         "end_of_vision_token": g.end_of_vision_token(vc)}})
    return Path(out)


def quantize_pending(folder: Path, pending: list) -> None:
    """Quantize what convert_to_tflite left as float32 (folder/name.f32 -> folder/name) and drop the float files."""
    for name, recipe in pending:
        quantize_tflite(folder / f"{name}.f32", folder / name, recipe)
        (folder / f"{name}.f32").unlink()


def convert_to_tflite(signatures, composites_of, folder: Path, name: str, r, flags: dict | None = None) -> list:
    """Convert `signatures` [(name, module, sample kwargs)] into folder/name (composites marked on
    `composites_of`'s modules) -> [(name, r)] when recipe `r` quantizes it: then the float32 model is left in
    folder/name.f32 for quantize_tflite; [] when folder/name is final."""
    import litert_torch
    import torch

    from .composites import marked_composites
    converter = litert_torch.Converter()
    quantized = r.weight_bits < 32 or r.embedding_bits < 32
    with torch.no_grad(), marked_composites(composites_of or torch.nn.Module(), composites_of is not None), \
            stdout_to_stderr():
        for sig, module, sample in signatures:
            converter.signature(sig, module.eval(), sample_kwargs=sample)
        edge = converter.convert(**(flags or {}))
        edge.export(str(folder / (f"{name}.f32" if quantized else name)))
    del edge, converter, signatures
    gc.collect()
    return [(name, r)] if quantized else []
