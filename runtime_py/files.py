"""Reading and writing files: JSON objects whose errors name the file, and atomic writes (readers see the
old file or the complete new one, never a half-written one). Standard library only."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path


def read_json(path: Path) -> dict:
    """A JSON object from `path`; errors name the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def inside(folder: str | os.PathLike, name, where: str) -> Path:
    """`folder / name` for a relative path `name` read from a file (`where`, named in the error) that may come
    from anyone: ValueError unless it is a non-empty string that stays inside `folder` (no absolute path, no
    `..` out of it, no symbolic link leading out of it)."""
    folder = Path(folder)
    if not isinstance(name, str) or not name or "\0" in name:
        raise ValueError(f"{where}: {name!r} is not a file name")
    path = folder / name
    root = folder.resolve()
    if Path(name).is_absolute() or (path.resolve() != root and root not in path.resolve().parents):
        raise ValueError(f"{where}: {name!r} lies outside {folder}; refused")
    return path


def sibling(path: str | os.PathLike, tag: str, pid: int | None = None) -> Path:
    """The hidden temporary sibling `.NAME.PID.TAG` of `path` that process `pid` (default: this one) writes;
    the PID lets a later run tell a killed writer's leftovers from a live one's."""
    path = Path(path)
    return path.with_name(f".{path.name}.{pid or os.getpid()}.{tag}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary sibling of `path` to write; when the block ends without an error it is flushed to
    disk and renamed onto `path`. Otherwise it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling(path, "partial")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` (str: UTF-8) to `path` atomically (atomic_path)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
