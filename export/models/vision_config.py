"""Frozen configs of the seeing Gemmas: the SigLIP tower and the vision-language model around a Gemma
decoder (PaliGemma 1/2, Gemma 3 4B/12B/27B, ShieldGemma 2). The decoder is a plain GemmaConfig."""
from __future__ import annotations

import dataclasses

from .config import GemmaConfig

PALIGEMMA, GEMMA3 = "paligemma", "gemma3"          # VisionLanguageConfig.kind
# kind -> the image resampling its Hugging Face image processor uses (SiglipImageProcessor: bicubic,
# Gemma3ImageProcessor: bilinear).
RESAMPLE = {PALIGEMMA: "bicubic", GEMMA3: "bilinear"}
# Both processors' normalisation after x / 255, to [-1, 1]; a checkpoint's own (preprocessor_config.json,
# an mmproj's clip.vision.image_mean / image_std) replaces it.
IMAGE_MEAN = IMAGE_STD = (0.5, 0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
    image_size: int = 224
    patch_size: int = 14
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_layers: int = 27
    num_heads: int = 16
    layer_norm_eps: float = 1e-6

    def __post_init__(self):
        for name in ("image_size", "patch_size", "hidden_size", "intermediate_size", "num_layers", "num_heads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= 1 << 16:
                raise ValueError(f"vision {name} {v!r}: must be a positive integer")
        if self.image_size % self.patch_size:
            raise ValueError(f"vision image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"vision hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.patches_per_side ** 2


@dataclasses.dataclass(frozen=True)
class VisionLanguageConfig:
    kind: str                          # PALIGEMMA | GEMMA3
    text: GemmaConfig                  # the decoder
    vision: SiglipConfig
    image_token_id: int                # the placeholder each image's rows replace
    tokens_per_image: int              # PaliGemma: every patch; Gemma 3: pooled to mm_tokens_per_image
    boi_id: int | None = None          # Gemma 3: <start_of_image>, <end_of_image>
    eoi_id: int | None = None
    classifier: tuple[int, int] | None = None   # ShieldGemma 2: the (Yes, No) token ids it reads
    image_mean: tuple[float, float, float] = IMAGE_MEAN    # per RGB channel, after x / 255
    image_std: tuple[float, float, float] = IMAGE_STD

    def __post_init__(self):
        if self.kind not in RESAMPLE:
            raise ValueError(f"vision-language kind {self.kind!r}: expected one of {', '.join(RESAMPLE)}")
        if self.kind == GEMMA3:
            side = round(self.tokens_per_image ** 0.5)
            if side * side != self.tokens_per_image or self.vision.patches_per_side % side:
                raise ValueError(f"mm_tokens_per_image {self.tokens_per_image}: must be a square whose side divides "
                                 f"the {self.vision.patches_per_side} patches per side")
        elif self.tokens_per_image != self.vision.num_patches:
            raise ValueError(f"PaliGemma has one token per patch ({self.vision.num_patches}), "
                             f"not {self.tokens_per_image}")
        for name in ("image_mean", "image_std"):
            v = getattr(self, name)
            if not isinstance(v, tuple) or len(v) != 3 or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and abs(x) < 1e6 for x in v):
                raise ValueError(f"{name} {v!r}: must be 3 numbers (R, G, B)")
        if not all(x > 0 for x in self.image_std):
            raise ValueError(f"image_std {self.image_std!r}: must be positive")
        for name in ("image_token_id", "boi_id", "eoi_id"):
            v = getattr(self, name)
            if v is not None and not 0 <= v < 1 << 22:
                raise ValueError(f"{name} {v!r}: must be a token id")

    def __getattr__(self, name: str):
        """Decoder facts (vocab_size, max_position, bos_id, layer_types, ...) read through to `text`: code that
        handles a causal LM's config handles the decoder of this one."""
        if name.startswith("__") or name == "text":
            raise AttributeError(name)
        return getattr(self.text, name)

    def runtime_facts(self) -> dict:
        """What runtime_py.vision_api.VisionFacts reads (an artifact's manifest `vision` section): how images are
        preprocessed and how prompts place their tokens."""
        return {"kind": self.kind, "image_size": self.vision.image_size, "resample": self.resample,
                "mean": list(self.image_mean), "std": list(self.image_std), "rescale": 1 / 255,
                "tokens_per_image": self.tokens_per_image, "image_token_id": self.image_token_id,
                "boi_id": self.boi_id, "eoi_id": self.eoi_id,
                "classifier": list(self.classifier) if self.classifier else None}

    @property
    def family(self) -> str:
        return f"{self.kind}-vision" if self.kind == GEMMA3 else self.kind

    @property
    def resample(self) -> str:
        return RESAMPLE[self.kind]

    def replace(self, **kw) -> "VisionLanguageConfig":
        return dataclasses.replace(self, **kw)
