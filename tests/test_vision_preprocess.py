"""runtime_py.images against transformers' image processors, built offline from the preprocessor_config.json
the released checkpoints carry (PaliGemma: SiglipImageProcessor, bicubic; Gemma 3 / ShieldGemma 2:
Gemma3ImageProcessor, bilinear), loaded by AutoImageProcessor as a user's code loads them.

Without torchvision (not a dependency here) AutoImageProcessor gives the PIL backend of both, and that is what
runtime_py matches: the same PIL resize and the same float64 rescale / float32 normalization, so the pixel
values are compared for equality, bit for bit (measured: max |diff| 0 on every image here). With torchvision
installed transformers picks its torchvision backend instead, whose resize rounds differently (README).
"""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from runtime_py.images import GEMMA3_IMAGE_SPEC, ImageSpec, load_image, paligemma_image_spec, preprocess

# Fields of the released preprocessor_config.json files (google/paligemma*-224 and -448; google/gemma-3-*-it).
PROCESSORS = {
    "paligemma-224": ({"image_processor_type": "SiglipImageProcessor", "resample": 3, "size": {"height": 224, "width": 224},
                       "image_seq_length": 256}, paligemma_image_spec(224)),
    "paligemma-448": ({"image_processor_type": "SiglipImageProcessor", "resample": 3, "size": {"height": 448, "width": 448},
                       "image_seq_length": 1024}, paligemma_image_spec(448)),
    "gemma3": ({"image_processor_type": "Gemma3ImageProcessor", "resample": 2, "size": {"height": 896, "width": 896},
                "do_pan_and_scan": None, "image_seq_length": 256}, GEMMA3_IMAGE_SPEC),
}
COMMON = {"do_normalize": True, "do_rescale": True, "do_resize": True,
          "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "rescale_factor": 0.00392156862745098}


def _pixels(rng, h, w, c=3):
    return rng.integers(0, 256, (h, w, c) if c else (h, w), dtype=np.uint8)


def _inputs():
    """name -> image, of odd sizes and aspect ratios and of every kind load_image takes."""
    rng = np.random.default_rng(17)
    yy, xx = np.mgrid[0:301, 0:517]
    gradient = np.stack([xx * 255 // 516, yy * 255 // 300, (3 * xx + yy) % 256], -1).astype(np.uint8)
    palette = Image.fromarray(_pixels(rng, 45, 61)).convert("P")
    palette.info["transparency"] = int(np.asarray(palette)[0, 0])
    rgba = _pixels(rng, 123, 77, 4)
    return {
        "noise 37x91": Image.fromarray(_pixels(rng, 37, 91)),
        "wide 150x1000": Image.fromarray(_pixels(rng, 150, 1000)),
        "tall 1000x150": Image.fromarray(_pixels(rng, 1000, 150)),
        "gradient 301x517": Image.fromarray(gradient),
        "tiny 1x1": Image.fromarray(_pixels(rng, 1, 1)),
        "exact 224x224": Image.fromarray(_pixels(rng, 224, 224)),
        "RGBA image": Image.fromarray(rgba, "RGBA"),
        "LA image": Image.fromarray(_pixels(rng, 33, 40, 2), "LA"),
        "P with transparency": palette,
        "L image": Image.fromarray(_pixels(rng, 50, 64, 0), "L"),
        "RGB array": _pixels(rng, 41, 29),
        "RGBA array": rgba,
        "grey array HxWx1": _pixels(rng, 52, 60, 1),
    }


INPUTS = _inputs()


@pytest.fixture(scope="module", params=list(PROCESSORS))
def processor(request, tmp_path_factory):
    """(transformers' image processor as AutoImageProcessor loads it, our ImageSpec for it)."""
    from transformers import AutoImageProcessor
    fields, spec = PROCESSORS[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    (folder / "preprocessor_config.json").write_text(json.dumps({**COMMON, **fields}))
    hf = AutoImageProcessor.from_pretrained(folder)
    assert hf.backend == "pil", "torchvision is installed: AutoImageProcessor now picks the backend runtime_py " \
                                "does not match bit for bit (see the README)"
    return hf, spec


def _reference(hf, image) -> np.ndarray:
    # do_convert_rgb as Gemma3Processor / ShieldGemma2Processor pass it (Gemma 3's config has it null), and as
    # SiglipImageProcessor defaults it
    return np.stack(hf(images=image, do_convert_rgb=True, return_tensors="np")["pixel_values"])


@pytest.mark.parametrize("name", list(INPUTS))
def test_pixel_values_match_transformers(processor, name):
    hf, spec = processor
    expected = _reference(hf, INPUTS[name])
    ours = preprocess(INPUTS[name], spec)
    assert ours.dtype == np.float32 and ours.shape == expected.shape == (1, 3, spec.size, spec.size)
    assert np.array_equal(ours, expected), f"max |diff| {np.abs(ours - expected).max()}"


def test_a_batch_keeps_its_order(processor):
    hf, spec = processor
    batch = [INPUTS["wide 150x1000"], INPUTS["RGBA array"], INPUTS["L image"]]
    assert np.array_equal(preprocess(batch, spec), np.concatenate([_reference(hf, im) for im in batch]))


def test_files_are_read_as_transformers_reads_a_path(processor, tmp_path):
    """A path goes through transformers' load_image: the EXIF orientation applied, then convert("RGB") (which
    drops the alpha channel: it is not composited there)."""
    hf, spec = processor
    rng = np.random.default_rng(3)
    exif = Image.Exif()
    exif[0x0112] = 6                       # orientation: rotate 90 degrees to show
    path = tmp_path / "rotated.png"
    Image.fromarray(_pixels(rng, 30, 70, 4), "RGBA").save(path, exif=exif)
    expected = _reference(hf, hf.fetch_images(str(path)))
    assert np.array_equal(preprocess(str(path), spec), expected)
    assert np.array_equal(preprocess(path.read_bytes(), spec), expected)
    assert load_image(path).shape == (70, 30, 3)


def test_float_arrays_are_their_256_levels():
    """Floats in [0, 1] are rounded to the nearest level (transformers' PIL conversion truncates them and then
    rescales twice, so they are compared with the uint8 image they stand for)."""
    levels = np.random.default_rng(5).integers(0, 256, (20, 33, 3), dtype=np.uint8)
    for dtype in (np.float16, np.float32, np.float64):
        floats = (levels / 255).astype(dtype)
        assert np.array_equal(load_image(floats), levels)
        assert np.array_equal(preprocess(floats, GEMMA3_IMAGE_SPEC), preprocess(levels, GEMMA3_IMAGE_SPEC))


def test_grey_arrays_of_rank_2_are_repeated():
    grey = np.random.default_rng(9).integers(0, 256, (21, 13), dtype=np.uint8)
    assert np.array_equal(load_image(grey), np.repeat(grey[:, :, None], 3, axis=2))


def test_image_spec_facts():
    assert (GEMMA3_IMAGE_SPEC.size, GEMMA3_IMAGE_SPEC.resample) == (896, "bilinear")
    assert paligemma_image_spec(448) == ImageSpec(448, "bicubic")
    for bad in ({"size": 0, "resample": "bicubic"}, {"size": 224, "resample": "area"},
                {"size": 224, "resample": "bicubic", "mean": (0.5, 0.5)},
                {"size": 224, "resample": "bicubic", "std": (0.5, 0.0, 0.5)}):
        with pytest.raises(ValueError, match="ImageSpec"):
            ImageSpec(**bad)


def _bad_inputs(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    truncated = tmp_path / "truncated.png"
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 100).save(buf, "PNG")
    truncated.write_bytes(buf.getvalue()[:60])
    return [
        (str(tmp_path / "missing.png"), "missing.png"),
        (text, "notes.png"),
        (truncated, "truncated.png"),
        (tmp_path, str(tmp_path)),
        (b"\x89PNG garbage", "image bytes"),
        (np.zeros((2, 8, 8, 3), np.uint8), r"shape \(2, 8, 8, 3\)"),
        (np.zeros((3, 16, 16), np.uint8), r"shape \(3, 16, 16\)"),
        (np.zeros((16, 16, 3), np.int16), "dtype int16"),
        (np.full((4, 4, 3), 1.5, np.float32), "in \\[0, 1\\]"),
        (np.full((4, 4, 3), np.nan), "finite"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        (42, "type int"),
    ]


def test_bad_input_is_a_value_error_naming_it(tmp_path):
    for image, name in _bad_inputs(tmp_path):
        with pytest.raises(ValueError, match=name):
            load_image(image)
        with pytest.raises(ValueError, match=f"^image 1: .*{name}"):
            preprocess([INPUTS["tiny 1x1"], image], GEMMA3_IMAGE_SPEC)
    with pytest.raises(ValueError, match="no images"):
        preprocess([], GEMMA3_IMAGE_SPEC)
    with pytest.raises(ValueError, match="ImageSpec"):
        preprocess(INPUTS["tiny 1x1"], 896)
