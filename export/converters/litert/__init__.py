"""`--target litert`: model.tflite (signatures `prefill_{T}` and `decode`, LiteRT-LM's I/O names),
tokenizer.model, manifest.json. Converted with litert-torch from our reference model."""
from __future__ import annotations

import gc
from pathlib import Path

from runtime_py.contract import (DECODE_SIGNATURE, DEFAULT_CONTEXT, DEFAULT_PREFILL, INPUT_POS, LOGITS, PREFILL_LOGITS,
                                 SAE_KEY, TOKENS, embed_signature, prefill_signature)

from ...models.config import LayerType
from ...quantize.recipes import SAE_ENCODERS, recipe as recipe_for
from ..artifact import import_record, staged_dir, stdout_to_stderr, write_manifest
from .quantize import quantize_tflite
from .signatures import cache_names, cache_shapes

# Weights stay where torch has them (MLIR resource constants referencing the tensors, no copy) and
# the LiteRT runtime's constant folding, which would copy them again, is off, so a conversion holds the
# weights about once (README: Gemma 3 1B's conversion, with and without these flags).
LOW_MEMORY_FLAGS = dict(strict_export=False, lightweight_conversion=True, runtime_constant_folding=False)


def export_litert(loaded, out: str | Path, recipe: str = "fp32", prefill_lengths=None,
                  cache_length: int | None = None, *, composites: bool = True,
                  prefill_logits: bool = True, vision_quant: str | None = None, consume: bool = False,
                  sae=None) -> Path:
    """Export a causal LoadedModel (export.models.checkpoints) to a LiteRT artifact folder.

    prefill_lengths: the prefill signatures' lengths (default DEFAULT_PREFILL; EmbeddingGemma: its embed_{T}
    lengths, default embedder.DEFAULT_LENGTHS). cache_length: positions the caches hold (global layers' cache length; the manifest's
    context_length); default min(DEFAULT_CONTEXT, the model's context). composites: mark RMSNorm and the
    attention core as odml.rms_norm / odml.scaled_dot_product_attention. prefill_logits: prefill
    signatures output logits for every position (contract.PREFILL_ALL_ROWS), else none (PREFILL_NO_LOGITS: what
    LiteRT-LM needs; bundle.export_litertlm). A
    vision-language model: export.converters.litert.vision (vision_quant: its vision encoder's storage; consume:
    the caller is done with loaded.model, whose weights the vision exporter then frees before quantizing; a
    text model's are kept). sae: an export.models.sae.SaeRequest (sae.py: sae_prefill_{T} / sae_decode)."""
    r = recipe_for(recipe, "litert")
    c = loaded.config
    if sae is not None:
        from .sae import check_request
        check_request(sae, c)
    if hasattr(c, "vision"):
        from .vision import export_litert_vision
        return export_litert_vision(loaded, out, r, prefill_lengths, cache_length, vision_quant, consume)
    if vision_quant:
        raise ValueError(f"--vision-quant: {loaded.source} is a text model (no vision graph)")
    if c.embedding_head is not None:
        return _export_embedder(loaded, out, r, prefill_lengths, composites)
    context = cache_length or min(DEFAULT_CONTEXT, c.max_position)
    if not 1 <= context <= c.max_position:
        raise ValueError(f"--context {context}: must be between 1 and the model's context length {c.max_position}")
    lengths = sorted({int(t) for t in (DEFAULT_PREFILL if prefill_lengths is None else prefill_lengths)})
    if not lengths or lengths[0] < 1 or lengths[-1] > context:
        raise ValueError(f"prefill lengths {tuple(lengths)}: each must be between 1 and the context "
                         f"length {context}")
    edge = convert(loaded.model, lengths, context, composites=composites, prefill_logits=prefill_logits, sae=sae)
    with staged_dir(out) as tmp:
        _save(edge, tmp, r, sae)
        del edge
        carried = _finish(tmp, r, loaded, sae)
        write_manifest(tmp, source=str(loaded.source), config=c, recipe=r, target="litert", extra={
            **import_record(loaded, carried), **({SAE_KEY: sae.write_decoders(tmp)} if sae else {}),
            "kind": "causal_lm", "context_length": context, "prefill_lengths": lengths,
            "signatures": signature_names(lengths, sae), PREFILL_LOGITS: bool(prefill_logits),
            "composites": ["odml.rms_norm", "odml.scaled_dot_product_attention"] if composites else [],
            "kv_cache": {"layout": "[1, kv_heads, slots, head_dim]", "names": cache_names(c),
                         "slots": [c.cache_length(i, context) for i in range(c.num_layers)],
                         "sliding_window": c.sliding_window},
            **({"recurrent_state": {"layers": [i for i, t in enumerate(c.layer_types) if t is LayerType.RECURRENT],
                                    "rg_lru_state": "[1, lru_width] float32", "conv1d_state": "[1, conv1d_width - 1, "
                                    "lru_width] float32 (the last inputs, oldest first)"}}
               if LayerType.RECURRENT in c.layer_types else {})})
    return Path(out)


def _quantized(r, sae) -> bool:
    """Does the converted model go through the quantizer: a quantized recipe, or an SAE encoder stored in integers."""
    return r.quantized or (sae is not None and SAE_ENCODERS[sae.encoder]["litert"] is not None)


def _save(edge, tmp: Path, r, sae=None) -> None:
    """Write the converted model: model.tflite, or for a quantized recipe a float model.f32.tflite
    that _finish quantizes (the caller drops its reference to `edge` first: the quantizer reads the
    file, and a 1B float model is 4 GB)."""
    save_model(edge, tmp / ("model.f32.tflite" if _quantized(r, sae) else "model.tflite"))


def _finish(tmp: Path, r, loaded, sae=None) -> dict:
    """Quantize (keeping the checkpoint's stored integers where the recipe's layout allows; SAE encoders as
    --sae-encoder says) and add the tokenizer. -> the lossless-import report."""
    gc.collect()
    carried = {}
    if _quantized(r, sae):
        carried = quantize_tflite(tmp / "model.f32.tflite", tmp / "model.tflite", r, loaded.model, loaded.stored,
                                  sae=sae)
        (tmp / "model.f32.tflite").unlink()
    if loaded.tokenizer is not None:
        loaded.tokenizer.save(tmp / "tokenizer.model")
    return carried


def _export_embedder(loaded, out, r, lengths, composites: bool) -> Path:
    """EmbeddingGemma: signatures embed_{T} (export.converters.litert.embedder)."""
    from .embedder import DEFAULT_LENGTHS, convert_embedder
    c = loaded.config
    lengths = sorted({min(int(t), c.max_position) for t in (lengths or DEFAULT_LENGTHS)})
    if lengths[0] < 1:
        raise ValueError(f"sequence lengths {lengths}: each must be at least 1")
    edge = convert_embedder(loaded.model, lengths, composites)
    with staged_dir(out) as tmp:
        _save(edge, tmp, r)
        del edge
        carried = _finish(tmp, r, loaded)
        write_manifest(tmp, source=str(loaded.source), config=c, recipe=r, target="litert", extra={
            **import_record(loaded, carried),
            "kind": "embedder", "context_length": lengths[-1], "sequence_lengths": lengths,
            "signatures": [embed_signature(t) for t in lengths],
            "composites": ["odml.rms_norm", "odml.scaled_dot_product_attention"] if composites else []})
    return Path(out)


def signature_names(prefill_lengths, sae=None) -> list[str]:
    from .sae import signature_names as sae_signatures
    return [prefill_signature(t) for t in sorted(prefill_lengths)] + [DECODE_SIGNATURE] + \
        sae_signatures(sae, prefill_lengths)


def convert(model, prefill_lengths, cache_length: int, *, composites: bool = True, prefill_logits: bool = True,
            sae=None, **flags):
    """One litert-torch conversion with every signature -> litert_torch LiteRTModel. sae: an SaeRequest, whose
    signatures are added (sae.py). `flags` go to litert_torch's Converter.convert (defaults: LOW_MEMORY_FLAGS)."""
    import litert_torch
    import torch

    from .composites import marked_composites
    from .signatures import SignatureModule, sample_inputs

    model = model.eval()
    config = model.config
    converter = litert_torch.Converter()
    with torch.no_grad(), marked_composites(model, composites), stdout_to_stderr():
        for t in sorted(prefill_lengths):
            converter.signature(prefill_signature(t), SignatureModule(model, logits=prefill_logits).eval(),
                                sample_kwargs=sample_inputs(config, t, cache_length))
        converter.signature(DECODE_SIGNATURE, SignatureModule(model).eval(),
                            sample_kwargs=sample_inputs(config, 1, cache_length))
        if sae is not None:
            from .sae import add_signatures
            add_signatures(converter, model, sae, prefill_lengths, cache_length, prefill_logits)
        return converter.convert(**{**LOW_MEMORY_FLAGS, **flags})


def save_model(edge, path: Path):
    with stdout_to_stderr():
        edge.export(str(path))


def expected_io(config, prefill_lengths, cache_length: int, prefill_logits: bool = True) -> dict:
    """{signature: {"inputs": {name: shape}, "outputs": {name: shape}}} the .tflite must have."""
    caches = cache_shapes(config, cache_length)
    io = {}
    for name, t in [(prefill_signature(t), t) for t in sorted(prefill_lengths)] + [(DECODE_SIGNATURE, 1)]:
        logits = {LOGITS: (1, t, config.vocab_size)} if prefill_logits or name == DECODE_SIGNATURE else {}
        outputs = {**logits, **caches}
        io[name] = {"inputs": {TOKENS: (1, t), INPUT_POS: (t,), **caches}, "outputs": outputs}
    return io
