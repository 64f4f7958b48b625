"""Where XNNPACK keeps a model's packed weights: a file per model in a cache folder, as LiteRT-LM keeps them
(CpuOptions.xnnpack_weight_cache_path), or anonymous memory.

XNNPACK repacks every weight of a model for its kernels (one copy shared by the model's signatures). With an
in-memory cache it packs them at every load and keeps, for the model's lifetime, a build buffer as large as its
largest packed weight (the 262k-row table: ~92 MB for the 270M at int4). Loaded from a finished file it packs
nothing, allocates no build buffer, reads none of the model file's weights, and the packed weights are file
pages that the kernel can drop and read again. The file is named by the model's identity (resolved path, size,
modification time, inode, the bytes of a bundle's section) and LiteRT's version, so a changed model or runtime
never maps another's packing; it is built under a temporary name and renamed into place when complete. Beside
it a small `.source` file names the model: a new file removes the cache files of models that are gone or have
changed since (a packing is as large as the model's weights).

`RUNTIME_PY_CACHE`: the cache folder (default `$XDG_CACHE_HOME/runtime_py`, else `~/.cache/runtime_py`); set
to an empty string for no file (in-memory packing at every load).

Depends on the standard library only.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from importlib import metadata
from pathlib import Path

from .files import atomic_path

CACHE_ENV = "RUNTIME_PY_CACHE"
IN_MEMORY = ":memory:"          # XNNPACK's name for a cache in anonymous memory (a memfd)
_SUFFIX = ".xnnpack_cache"
# Packing may need more room than the model file (float weights are packed whole): XNNPACK aborts the process
# when a write to the cache fails, so a file is only built with this many times the model's size free.
_ROOM = 2


def cache_folder() -> Path | None:
    """The folder of packed-weight files, or None (RUNTIME_PY_CACHE set empty: none)."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return Path(value) if value else None
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "runtime_py"


def _litert_version() -> str:
    try:
        return metadata.version("ai-edge-litert")
    except metadata.PackageNotFoundError:
        return "unknown"


def _identity(source: Path, span) -> list:
    st = source.stat()
    return [str(source.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, list(span or ())]


def cache_file(source: str | os.PathLike, span: tuple[int, int] | None = None) -> Path | None:
    """The packed-weight file of the model at `source` (bytes `span` of it: a bundle's TFLite section), or None
    when there is no cache folder."""
    folder = cache_folder()
    if folder is None:
        return None
    key = json.dumps([*_identity(Path(source), span), _litert_version()])
    return folder / f"{Path(source).name}.{hashlib.sha256(key.encode()).hexdigest()[:20]}{_SUFFIX}"


def _prune(folder: Path) -> None:
    """Remove the cache files of models that no longer exist as they were when packed."""
    for note in folder.glob(f"*{_SUFFIX}.source"):
        try:
            source, span = json.loads(note.read_text())
            current = _identity(Path(source[0]), span) if Path(source[0]).exists() else None
        except (OSError, ValueError, TypeError, IndexError):
            current = None
        if current != source:
            note.with_suffix("").unlink(missing_ok=True)
            note.unlink(missing_ok=True)


class _NothingPacked(Exception):
    """The model has no weights for XNNPACK to pack: the compiled model is kept, no cache file."""


def compile_cached(compile_with, source: str | os.PathLike, span: tuple[int, int] | None = None):
    """compile_with(weight_cache_path) -> a compiled model, with its packed weights in source's cache file:
    mapped when it exists; else built under a temporary name, renamed into place, and the model compiled again
    from it (which frees the build buffer the first compile keeps). In memory when there is no cache folder,
    it cannot be written, or the disk lacks room."""
    try:
        path = cache_file(source, span)
        if path is not None and not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            size = (span[1] - span[0]) if span else Path(source).stat().st_size
            if shutil.disk_usage(path.parent).free < _ROOM * size + (64 << 20):
                path = None
    except OSError:
        path = None
    if path is None:
        return compile_with(IN_MEMORY)
    if path.is_file():
        return compile_with(str(path))
    unpacked = None
    try:
        with atomic_path(path) as partial:
            model = compile_with(str(partial))
            if not partial.is_file() or partial.stat().st_size == 0:       # nothing to pack (no XNNPACK weights)
                unpacked = model
                raise _NothingPacked
            del model              # its build buffer goes with it; the file stays complete
        path.with_name(path.name + ".source").write_text(json.dumps([_identity(Path(source), span), span]))
        _prune(path.parent)
    except _NothingPacked:
        return unpacked
    except OSError:
        return compile_with(IN_MEMORY)
    return compile_with(str(path))
