"""The bundled image set (export/data/images): the committed PNG files are what make_images.py draws, small,
listed whole in images.json with prompts runtime_py can build, and shipped as package data."""
from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
from PIL import Image

from export.data.images import bundled_images, make_images
from runtime_py.images import GEMMA3_IMAGE_SPEC, preprocess
from runtime_py.vision_prompts import PALIGEMMA_IMAGE_MARKER, START_OF_IMAGE

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "export" / "data" / "images"


def test_committed_files_are_what_the_script_draws(tmp_path):
    entries = make_images.main(tmp_path)
    assert entries == [{**e, "file": e["file"].name} for e in bundled_images()]
    for entry in entries:
        drawn, committed = Image.open(tmp_path / entry["file"]), Image.open(FOLDER / entry["file"])
        assert drawn.mode == committed.mode and np.array_equal(np.asarray(drawn), np.asarray(committed)), entry["file"]


def test_the_set_is_small_listed_whole_and_varied():
    entries = bundled_images()
    files = sorted(p.name for p in FOLDER.glob("*.png"))
    assert sorted(e["file"].name for e in entries) == files and len(files) >= 8
    assert sum((FOLDER / f).stat().st_size for f in files) < 300_000
    shapes = {Image.open(e["file"]).size for e in entries}
    assert any(w > h for w, h in shapes) and any(w < h for w, h in shapes) and any(w == h for w, h in shapes)
    assert any(Image.open(e["file"]).mode == "RGBA" for e in entries)
    for e in entries:
        assert e["caption"] and e["prompt"].count(START_OF_IMAGE) == 1, e
        assert PALIGEMMA_IMAGE_MARKER not in e["paligemma_prompt"] and e["paligemma_prompt"], e
    pixels = preprocess([e["file"] for e in entries], GEMMA3_IMAGE_SPEC)
    assert pixels.shape == (len(entries), 3, 896, 896) and -1 <= pixels.min() < pixels.max() <= 1


def test_the_pngs_are_package_data():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "*.png" in package_data["*"] and "*.json" in package_data["*"]
    assert (FOLDER / "__init__.py").exists()      # a package, so that packages.find ships the folder
