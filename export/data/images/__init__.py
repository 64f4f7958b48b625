"""The bundled image set for validating vision artifacts: small PNG files drawn by make_images.py (no
third-party content), listed in images.json with a caption and a prompt for each model family."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

MANIFEST = "images.json"


def bundled_images() -> list[dict]:
    """images.json's entries: `file` (resolved to a path), `caption` (what the image shows), `prompt` (Gemma 3,
    with its <start_of_image> marker) and `paligemma_prompt` (a PaliGemma task prefix)."""
    folder = resources.files(__name__)
    entries = json.loads(folder.joinpath(MANIFEST).read_text(encoding="utf-8"))
    return [{**entry, "file": Path(str(folder.joinpath(entry["file"])))} for entry in entries]
