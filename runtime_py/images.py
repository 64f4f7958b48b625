"""Images for the seeing Gemmas (PaliGemma 1/2, Gemma 3 4B/12B/27B, ShieldGemma 2): reading them and turning
them into the vision tower's `pixel_values`, float32 [N, 3, S, S], as Hugging Face's image processors do.

numpy and PIL only. What is matched is transformers' PIL backend (`SiglipImageProcessorPil`, which
PaliGemmaProcessor uses, and `Gemma3ImageProcessorPil`, which Gemma3Processor and ShieldGemma2Processor use):
the class AutoImageProcessor picks where torchvision is not installed, as here. Each image is made RGB, resized
to S x S by PIL with the processor's filter (PaliGemma: bicubic; Gemma 3: bilinear), rescaled by 1/255 in
float64 and cast to float32, normalized as (x - mean) / std in float32 and put channels first.
transformers' default backend where torchvision is installed (`SiglipImageProcessor`, `Gemma3ImageProcessor`)
resizes with torchvision instead, whose antialiased filters round differently: see the README.

Gemma 3's Pan & Scan (extra crops of very wide or tall images, off by default in Gemma3Processor and refused
by ShieldGemma2Processor) is not done: every image is one S x S view.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# transformers' IMAGENET_STANDARD_MEAN / _STD, which every Gemma vision processor uses
STANDARD_MEAN = (0.5, 0.5, 0.5)
STANDARD_STD = (0.5, 0.5, 0.5)
RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


@dataclass(frozen=True)
class ImageSpec:
    """How one model's processor prepares an image: resize to `size` x `size` with `resample` (a RESAMPLE
    key), multiply by `rescale`, then (x - mean) / std per channel."""
    size: int
    resample: str
    mean: tuple[float, float, float] = STANDARD_MEAN
    std: tuple[float, float, float] = STANDARD_STD
    rescale: float = 1 / 255

    def __post_init__(self):
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"ImageSpec size must be a positive int, not {self.size!r}")
        if self.resample not in RESAMPLE:
            raise ValueError(f"ImageSpec resample {self.resample!r}: expected one of {', '.join(RESAMPLE)}")
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ValueError(f"ImageSpec {name} needs 3 values (R, G, B), not {len(value)}")
            object.__setattr__(self, name, value)
        if any(s == 0 for s in self.std):
            raise ValueError("ImageSpec std must not be 0")


def paligemma_image_spec(size: int = 224) -> ImageSpec:
    """PaliGemma 1 / 2 at `size` (224, 448 or 896): SiglipImageProcessor, bicubic (resample 3 in their
    preprocessor_config.json)."""
    return ImageSpec(size, "bicubic")


# Gemma 3 4B/12B/27B and ShieldGemma 2: Gemma3ImageProcessor at 896 x 896, bilinear (resample 2)
GEMMA3_IMAGE_SPEC = ImageSpec(896, "bilinear")


def load_image(image) -> np.ndarray:
    """`image` as RGB, uint8 [H, W, 3]. Accepts:

    - a path (str / os.PathLike) or the bytes of an image file: read as transformers' `load_image` reads a
      path (EXIF orientation applied, then PIL's convert("RGB"), which drops an alpha channel);
    - a PIL image: as its image processors convert one (an alpha channel, or a palette's transparency, is
      composited onto white; no EXIF rotation);
    - a numpy array [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] (channels last), uint8, or float in [0, 1]
      (rounded to the nearest of 256 levels: transformers truncates instead); grey is repeated to 3 channels,
      RGBA composited onto white as transformers does for arrays.

    ValueError naming the input for anything unreadable or of the wrong rank, shape or dtype.
    """
    if isinstance(image, (str, os.PathLike)):
        return _read_file(Path(image), str(image))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _read_file(io.BytesIO(bytes(image)), f"image bytes ({len(image)} bytes)")
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    raise ValueError(f"image of type {type(image).__name__}: expected a path, bytes, a PIL image or a numpy array")


def preprocess(images, spec: ImageSpec) -> np.ndarray:
    """`pixel_values` float32 [N, 3, S, S] of one image or a list / tuple of them (anything load_image
    takes), as `spec`'s processor makes them."""
    if not isinstance(spec, ImageSpec):
        raise ValueError(f"preprocess needs an ImageSpec, not {type(spec).__name__}")
    batch = list(images) if isinstance(images, (list, tuple)) else [images]
    if not batch:
        raise ValueError("preprocess: no images given")
    out = np.empty((len(batch), 3, spec.size, spec.size), np.float32)
    for i, image in enumerate(batch):
        try:
            rgb = load_image(image)
        except ValueError as e:
            raise ValueError(f"image {i}: {e}" if len(batch) > 1 else str(e)) from None
        out[i] = _normalize(_resize(rgb, spec), spec)
    return out


def _resize(rgb: np.ndarray, spec: ImageSpec) -> np.ndarray:
    resized = Image.fromarray(rgb, "RGB").resize((spec.size, spec.size), resample=RESAMPLE[spec.resample])
    return np.asarray(resized)


def _normalize(rgb: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """[S, S, 3] uint8 -> [3, S, S] float32, in transformers' order and precisions (the rescale in float64,
    then the normalization in float32), so that the values agree bit for bit."""
    x = (rgb.astype(np.float64) * spec.rescale).astype(np.float32)
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return x.transpose(2, 0, 1)


def _read_file(source, name: str) -> np.ndarray:
    try:
        with Image.open(source) as opened:
            opened.load()
            return np.asarray(ImageOps.exif_transpose(opened).convert("RGB")).copy()
    except FileNotFoundError:
        raise ValueError(f"{name}: no such image file") from None
    except IsADirectoryError:
        raise ValueError(f"{name}: is a directory, not an image file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:   # PIL raises all of these
        raise ValueError(f"{name}: not a readable image ({' '.join(str(e).split())[:200]})") from None


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    try:
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(white, rgba).convert("RGB")).copy()
        return np.asarray(image.convert("RGB")).copy()
    except (OSError, ValueError) as e:
        raise ValueError(f"PIL image (mode {image.mode}, size {image.size}): cannot be made RGB ({e})") from None


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    name = f"image array of shape {tuple(array.shape)} and dtype {array.dtype}"
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"{name}: expected [H, W] or channels-last [H, W, C] with C = 1, 3 or 4")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name}: the image is empty")
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 1:
            raise ValueError(f"{name}: float pixels must be finite and in [0, 1]")
        array = np.round(array.astype(np.float64) * 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8, or float in [0, 1]")
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    if array.shape[2] == 4:
        # transformers' convert_to_rgb for arrays: blend onto white in float64, rounded
        alpha = array[..., 3:4] / 255
        return np.round(alpha * array[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    return np.ascontiguousarray(array)
