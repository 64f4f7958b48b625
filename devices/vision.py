"""What profiling adds for a vision-language artifact (a manifest or bundle with a `vision` section): one bundled
image (export.data.images) timed through preprocessing, the vision graph(s) and the prefill of its prompt; the
vision tower's FLOPs per image (for the estimates); and which bytes a decode step reads (the decoder's, not the
vision graphs' or the embedding table's, whose one row per token is all a lookup reads).

The image is encoded once per run: the first image after load, as a user's first image (the decoder's warm-up
is text only, so the vision graph's first call is in the figure, whatever a runtime does on it)."""
from __future__ import annotations

import time
from pathlib import Path

from runtime_py.contract import EMBEDDING_FILE, LITERT_VISION_FILES, PREFILL_DECODE_SECTION, VISION_FILE, VISION_KEY

IMAGE = 0                      # the bundled image profiled (export.data.images' first entry)
METRICS = ("image_preprocess_ms", "image_encode_ms", "image_prefill_tok_s", "image_ttft_ms")
DECODER_SECTION = PREFILL_DECODE_SECTION


def text_config(config: dict) -> dict:
    """The decoder's config: a vision-language manifest's `text`, or the config itself."""
    return config["text"] if isinstance(config.get("text"), dict) and VISION_KEY in config else config


def special_ids(model) -> set[int]:
    """Token ids a text prompt must not hold on this model: its image markers and placeholder."""
    v = model.vision
    if v is None:
        return set()
    return {i for i in (getattr(v.tokens, k, None) for k in ("boi_id", "eoi_id", "image_id")) if i is not None}


def image_prompt(model) -> tuple[Path, list[int]]:
    """The bundled image's file and its prompt's ids as the model's processor lays them out (one image)."""
    from export.data.images import bundled_images
    entry = bundled_images()[IMAGE]
    v = model.vision
    text = entry["paligemma_prompt"] if v.kind == "paligemma" else entry["prompt"]
    return entry["file"], v.prompt_ids(model._tok(), text, 1)


def time_image(model) -> dict:
    """One request with the bundled image: preprocessing (runtime_py.images), the vision graph(s) once per image,
    the prompt's prefill with the image's rows and the first token. -> the run's image fields (METRICS)."""
    path, ids = image_prompt(model)
    t0 = time.perf_counter()
    pixels = model.vision.pixels([path])
    t1 = time.perf_counter()
    rows = model.backend.encode_images(pixels)
    t2 = time.perf_counter()
    steps = model.time_steps(ids, 0, features=rows)
    return {"image_preprocess_ms": round((t1 - t0) * 1e3, 3),
            "image_encode_ms": round((t2 - t1) * 1e3 / len(pixels), 3),
            "image_prompt_tokens": len(ids), "image_prefill_tok_s": round(len(ids) / steps.prefill_s, 3),
            "image_ttft_ms": round((t2 - t0 + steps.first_token_s) * 1e3, 3)}


def image_settings() -> dict:
    from export.data.images import bundled_images
    return {"image": bundled_images()[IMAGE]["file"].name, "images": 1}


def encoder_flops(config: dict) -> int:
    """FLOPs of one image through the SigLIP tower and the projector (2 per multiply-add of the patch embedding,
    the layers' matmuls and attention, the projection; norms, GELU, softmax and pooling left out).
    config: a vision-language manifest's model config (export.models.vision_config.VisionLanguageConfig)."""
    v, d = config["vision"], config["text"]["hidden_size"]
    h, f, p = v["hidden_size"], v["intermediate_size"], v["patch_size"]
    n = (v["image_size"] // p) ** 2                                   # patches
    patch = n * 3 * p * p * h
    layer = n * (4 * h * h + 2 * h * f) + 2 * n * n * h               # q, k, v, o, the MLP; QK^T and PV
    rows = config["tokens_per_image"] if config["kind"] == "gemma3" else n     # Gemma 3 pools before projecting
    return 2 * (patch + v["num_layers"] * layer + rows * h * d)


def decoder_files(artifact: Path, manifest: dict) -> list[Path] | None:
    """A vision-language artifact folder's decoder file(s) (what decode reads); None for a text model."""
    facts = manifest.get(VISION_KEY)
    if not isinstance(facts, dict):
        return None
    files = facts.get("files") or {}
    if DECODER_SECTION in files:                                          # LiteRT folder
        return [artifact / files[DECODER_SECTION]]
    skip = {files.get("vision", VISION_FILE), files.get("embedding", EMBEDDING_FILE)}
    return [p for p in artifact.iterdir() if p.suffix in (".onnx", ".data") and p.name not in skip
            and not any(p.name.startswith(s) for s in skip)]               # ONNX: model.onnx (+ .data)


def bundle_decoder_bytes(bundle: Path) -> int | None:
    """The decoder section's bytes of a vision-language .litertlm (None: a text bundle)."""
    from runtime_py.litert_backend import tflite_section_sizes
    sizes = tflite_section_sizes(bundle)
    return sizes[DECODER_SECTION] if set(LITERT_VISION_FILES) - {DECODER_SECTION} <= set(sizes) else None


def decoder_bytes(artifact: Path) -> int | None:
    """Bytes a decode step streams of a vision-language artifact (file or folder): its decoder's; None for a text
    model (every model file counts)."""
    from runtime_py.files import read_json
    manifest_path = (artifact if artifact.is_dir() else artifact.parent) / "manifest.json"
    manifest = read_json(manifest_path) if manifest_path.exists() else {}
    bundle = artifact if artifact.suffix == ".litertlm" else \
        artifact / manifest["bundle"] if artifact.is_dir() and manifest.get("bundle") else None
    if bundle is not None and bundle.is_file():
        return bundle_decoder_bytes(bundle)
    files = decoder_files(artifact, manifest) if artifact.is_dir() else None
    return None if files is None else sum(p.stat().st_size for p in files)
