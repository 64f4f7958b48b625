"""Artifact folders: written in a staging folder beside the output and swapped in whole (output.py), so a
failed export leaves nothing half-written; manifest.json records where the artifact came from."""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import json
import os
import sys
from pathlib import Path

from .. import __version__
from .output import MANIFEST, TOOL, staged_dir  # noqa: F401  (staged_dir: the exporters' import)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def as_plain(obj):
    if dataclasses.is_dataclass(obj):
        return {k: as_plain(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, dict):
        return {k: as_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [as_plain(v) for v in obj]
    return obj


# manifest.json: the mmproj GGUF joined to the text GGUF `source` (LoadedModel.mmproj), when there is one
SOURCE_MMPROJ = "source_mmproj"


def write_manifest(folder: Path, *, source: str, config, recipe, target: str, extra: dict | None = None,
                   mmproj: str | Path | None = None):
    """manifest.json over every file already in `folder` (no timestamps: re-exports are identical).
    recipe: its name, or the Recipe (a planned one's per-weight choices go in as `plan`). source and mmproj:
    what the reference model was loaded from (load_model's arguments), for `validate` to load it again."""
    files = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    plan = {"plan": recipe.choices()} if getattr(recipe, "plan", None) else {}
    manifest = {"tool": TOOL, "tool_version": __version__, "target": target,
                "recipe": getattr(recipe, "name", recipe), "source": source,
                **({SOURCE_MMPROJ: str(mmproj)} if mmproj is not None else {}), "config": as_plain(config),
                "files": files, **(extra or {}), **plan}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def import_record(loaded, carried: dict) -> dict:
    """manifest.json entries for the stored blocks carried into the artifact (`lossless_import`: the
    exporter's report) and for how the blocks not read from the checkpoint were rounded (`rounding`,
    LoadedModel.rounding, also inside the import report)."""
    rounding = getattr(loaded, "rounding", None) or {}
    out = {"rounding": rounding} if rounding else {}
    if carried.get("carried"):
        out["lossless_import"] = {**carried, **out}
    return out


@contextlib.contextmanager
def stdout_to_stderr():
    """litert-torch and ai-edge-quantizer print progress to standard output (Python's and the C++ side's):
    send it to standard error, where progress belongs, so that `--json` output stays JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 1)
        os.close(saved)
