"""Draws the bundled image set (the PNG files beside this script) and writes images.json, deterministically:
the same numpy and Pillow give the same files. Run from the repository root:

    python -m export.data.images.make_images

Every image is drawn here (shapes, text in Pillow's built-in font, gradients, a checkerboard, smooth noise), so
the set carries no third-party content. Sizes and aspect ratios vary (square, wide, tall, tiny, one RGBA) to
exercise the resize and the alpha handling of runtime_py.images.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from . import MANIFEST

HERE = Path(__file__).resolve().parent
DESCRIBE = "<start_of_image>Describe the image."


def red_circle() -> Image.Image:
    img = Image.new("RGB", (256, 256), "white")
    ImageDraw.Draw(img).ellipse((48, 48, 208, 208), fill=(220, 20, 30))
    return img


def shapes() -> Image.Image:
    img = Image.new("RGB", (320, 240), (200, 200, 200))
    draw = ImageDraw.Draw(img)
    draw.rectangle((20, 60, 110, 150), fill=(30, 60, 200))
    draw.polygon([(160, 40), (110, 190), (210, 190)], fill=(20, 160, 60))
    draw.ellipse((220, 80, 300, 160), fill=(240, 200, 20))
    return img


def stop_sign() -> Image.Image:
    img = Image.new("RGB", (240, 240), (120, 170, 230))
    draw = ImageDraw.Draw(img)
    c, r = 120, 100
    octagon = [(c + r * np.cos(np.pi / 8 + k * np.pi / 4), c + r * np.sin(np.pi / 8 + k * np.pi / 4)) for k in range(8)]
    draw.polygon(octagon, fill=(200, 16, 30), outline="white", width=6)
    draw.text((c, c), "STOP", fill="white", font=ImageFont.load_default(size=56), anchor="mm")
    return img


def text_note() -> Image.Image:
    img = Image.new("RGB", (360, 120), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=28)
    draw.text((16, 18), "Hello, world!", fill="black", font=font)
    draw.text((16, 64), "12 + 30 = 42", fill=(0, 0, 160), font=font)
    return img


def gradient() -> Image.Image:
    x = np.linspace(0.0, 1.0, 300)[None, :, None]
    left, right = np.array([255, 0, 0]), np.array([0, 0, 255])
    return Image.fromarray(np.repeat((left * (1 - x) + right * x).round().astype(np.uint8), 200, axis=0))


def checkerboard() -> Image.Image:
    cells = (np.indices((8, 8)).sum(axis=0) % 2).astype(np.uint8) * 255
    return Image.fromarray(np.kron(cells, np.ones((32, 32), np.uint8))).convert("RGB")


def landscape(rng: np.random.Generator) -> Image.Image:
    """A photo-like scene: sky, sun, two hills textured with smooth noise."""
    h, w = 225, 400
    sky = np.linspace(0, 1, h)[:, None, None] * np.array([80, 60, 20]) + np.array([90, 150, 235])
    img = Image.fromarray(np.broadcast_to(sky, (h, w, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.ellipse((300, 25, 350, 75), fill=(255, 230, 90))
    draw.ellipse((-120, 120, 260, 420), fill=(60, 140, 50))
    draw.ellipse((150, 140, 560, 460), fill=(40, 115, 40))
    noise = Image.fromarray(rng.integers(0, 256, (h // 8, w // 8), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    texture = (np.asarray(noise.filter(ImageFilter.GaussianBlur(2)), np.float64) - 128) * 0.12
    return Image.fromarray(np.clip(np.asarray(img, np.float64) + texture[:, :, None], 0, 255).astype(np.uint8))


def traffic_light() -> Image.Image:
    img = Image.new("RGB", (120, 300), (235, 235, 235))
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle((20, 15, 100, 285), radius=18, fill=(35, 35, 35))
    for y, color in ((60, (230, 30, 30)), (150, (90, 80, 20)), (240, (30, 200, 70))):
        draw.ellipse((35, y - 30, 85, y + 20), fill=color)
    return img


def star_rgba() -> Image.Image:
    img = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
    angles = np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, 70, 28)
    points = [(80 + r * np.cos(a), 80 - r * np.sin(a)) for r, a in zip(radii, angles)]
    ImageDraw.Draw(img).polygon(points, fill=(250, 190, 0, 255))
    return img


def image_set() -> list[tuple[str, Image.Image, dict]]:
    """(file name, image, its prompts) of the whole set, in order."""
    rng = np.random.default_rng(2026)
    return [
        ("red_circle.png", red_circle(), {
            "caption": "A red circle on a white background.",
            "prompt": "<start_of_image>What shape is in the image, and what color is it?",
            "paligemma_prompt": "answer en What color is the circle?"}),
        ("shapes.png", shapes(), {
            "caption": "A blue square, a green triangle and a yellow circle on a grey background.",
            "prompt": DESCRIBE, "paligemma_prompt": "caption en"}),
        ("stop_sign.png", stop_sign(), {
            "caption": "A red octagonal stop sign with the word STOP in white, against a blue sky.",
            "prompt": "<start_of_image>What does the sign say?",
            "paligemma_prompt": "ocr"}),
        ("text_note.png", text_note(), {
            "caption": "Black text 'Hello, world!' above blue text '12 + 30 = 42' on white.",
            "prompt": "<start_of_image>Read the text in the image.",
            "paligemma_prompt": "ocr"}),
        ("gradient.png", gradient(), {
            "caption": "A horizontal gradient from red on the left to blue on the right.",
            "prompt": "<start_of_image>Which colors does the image fade between?",
            "paligemma_prompt": "caption en"}),
        ("checkerboard.png", checkerboard(), {
            "caption": "A black and white checkerboard of 8 by 8 squares.",
            "prompt": "<start_of_image>How many squares are in each row?",
            "paligemma_prompt": "answer en What pattern is this?"}),
        ("landscape.png", landscape(rng), {
            "caption": "Green hills under a blue sky with a yellow sun.",
            "prompt": DESCRIBE, "paligemma_prompt": "caption en"}),
        ("traffic_light.png", traffic_light(), {
            "caption": "A traffic light with the red and green lights on and the yellow one off.",
            "prompt": "<start_of_image>Which lights of the traffic light are on?",
            "paligemma_prompt": "answer en Which light is on?"}),
        ("star_rgba.png", star_rgba(), {
            "caption": "A yellow five-pointed star on a transparent background.",
            "prompt": DESCRIBE, "paligemma_prompt": "caption en"}),
    ]


def main(out: Path = HERE) -> list[dict]:
    entries = []
    for name, image, prompts in image_set():
        image.save(out / name, optimize=True)
        entries.append({"file": name, **prompts})
    (out / MANIFEST).write_text(json.dumps(entries, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return entries


if __name__ == "__main__":
    main()
