"""Where an artifact is written, and how, so that nothing we did not write is ever destroyed and no reader
ever sees half an artifact:

- `check_out` (called before any work): an existing `--out` is replaced only when it is an empty folder or a
  gemma-export artifact (its manifest.json says so), or with `--force`; never a file, a symbolic link, or a
  folder holding the model being read.
- `staged_dir`: the artifact is written in a staging folder beside `--out` and swapped in whole (one atomic
  RENAME_EXCHANGE where the kernel has it; else the old one is renamed aside, the new one in, the old one
  deleted, and the old one put back if the second rename fails).
- Staging folders carry the writer's PID (`.NAME.PID.TAG`); `sweep_stale` removes those of dead processes (a
  run killed with SIGKILL), restoring a previous artifact that a kill left renamed aside."""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
from pathlib import Path

from runtime_py.files import sibling as stage_name

MANIFEST = "manifest.json"
TOOL = "gemma-export"               # manifest.json "tool": what marks a folder as ours
TAGS = ("partial", "old", "work")   # staging (runtime_py.files.sibling names): the new artifact (or a file being
                                    # written atomically), the previous one set aside, scratch space
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def absolute(path: str | os.PathLike) -> Path:
    """`path` made absolute with `.` and `..` resolved but symbolic links kept (so a link can be refused)."""
    return Path(os.path.abspath(path))


def is_ours(folder: Path) -> bool:
    """`folder` holds a gemma-export artifact: its manifest.json names the tool."""
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("tool") == TOOL
    except (OSError, ValueError, AttributeError):
        return False


def check_out(out: str | os.PathLike, *, force: bool = False, reads: tuple = (), flag: str = "--out",
              file: bool = False, ours=is_ours) -> Path:
    """Refuse an output path whose replacement could destroy something we did not write (ValueError naming
    it), before any work; -> the absolute path. `reads`: the paths the run reads (never inside `out`).
    `file`: the output is a file (else a folder). `ours(path) -> bool`: whether an existing `out` is
    something we wrote (default: an artifact folder)."""
    path = absolute(out)
    if path.parent == path or not path.name:
        raise ValueError(f"{flag} {out}: the root folder cannot be an output")
    for src in (Path(r).resolve() for r in reads if r is not None):
        if src == path.resolve() or path.resolve() in src.parents:
            raise ValueError(f"{flag} {out}: holds {src}, which this run reads; choose another output")
    if path.is_symlink():
        raise ValueError(f"{flag} {out}: is a symbolic link; give the path it points to ({os.path.realpath(path)})")
    if path.exists() and path.is_dir() == file:
        have, want = ("folder", "file") if file else ("file", "folder")
        raise ValueError(f"{flag} {out}: is a {have}; the output is a {want}")
    if path.exists() and not force:
        kind = "file" if file else "folder"
        empty = not file and not any(path.iterdir())
        if not (empty or ours(path)):
            raise ValueError(f"{flag} {out}: an existing {kind} that gemma-export did not write; it is replaced "
                             f"only with --force (or choose a new path)")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {out}: cannot write in {parent}")
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # someone else's live process
        return True
    return True


def sweep_stale(out: Path) -> list[Path]:
    """Remove the staging folders of `out` left by dead processes (restoring a previous artifact a kill
    left aside when `out` itself is gone); -> what was removed."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(\d+)\.({'|'.join(TAGS)})")
    removed = []
    if not out.parent.is_dir():
        return removed
    for p in sorted(out.parent.iterdir(), key=lambda q: q.name.endswith(".old"), reverse=True):
        m = pattern.fullmatch(p.name)
        if m is None or _alive(int(m.group(1))) or p.is_symlink():
            continue
        if m.group(2) == "old" and not os.path.lexists(out):
            os.replace(p, out)                               # killed between the two renames: put it back
            continue
        shutil.rmtree(p) if p.is_dir() else p.unlink()
        removed.append(p)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def replace_dir(new: Path, out: Path) -> None:
    """Put the folder `new` at `out`, replacing a previous folder whole; on failure `out` is as it was."""
    if not out.exists():
        os.replace(new, out)
        return
    if _exchange(new, out):                      # `new` now holds the previous artifact
        shutil.rmtree(new, ignore_errors=True)
        return
    old = stage_name(out, "old")
    try:
        os.replace(out, old)
        os.replace(new, out)
    except BaseException:                        # a failed rename, Ctrl-C, SIGTERM: the previous one goes back
        if os.path.lexists(old) and not os.path.lexists(out):
            os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike):
    """Yield an empty staging folder beside `out`; when the block ends without an error it replaces `out`
    whole (replace_dir); otherwise it is removed and `out` is untouched."""
    out = absolute(out)
    if os.path.lexists(out) and (out.is_symlink() or not out.is_dir()):
        raise ValueError(f"--out {out}: exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(out)
    tmp = stage_name(out, "partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for p in (tmp, *tmp.rglob("*")):        # artifacts are for sharing, whatever the umask
            p.chmod(0o755 if p.is_dir() else 0o644)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def work_dir(out: str | os.PathLike):
    """A scratch folder beside `out` (removed afterwards; by sweep_stale if the process is killed)."""
    out = absolute(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = stage_name(out, "work")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
