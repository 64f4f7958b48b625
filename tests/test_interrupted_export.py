"""Exports interrupted with SIGTERM and SIGKILL at several points (a tiny model, in a child process that pauses
at the chosen point), then a second run: no stray staging folders after it, and the artifact at --out is at
every moment either the previous one or the new one, whole (every file its manifest lists, with its hash).
Also: what --out may replace, and a failed swap."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from export.cli import main
from export.converters import output

ROOT = Path(__file__).resolve().parent.parent

# Runs the CLI, pausing (and touching $PAUSE_FLAG) at $PAUSE_AT: "staged" (the new artifact complete in its
# staging folder), "aside" (no atomic exchange: the previous artifact renamed aside, the new one not yet in),
# "swapped" (exchanged, the previous one not yet deleted).
PAUSING_CLI = """
import os, sys, time, pathlib
import export.converters.output as o
point, flag = os.environ["PAUSE_AT"], pathlib.Path(os.environ["PAUSE_FLAG"])
def pause():
    flag.write_text("paused")
    time.sleep(120)
if point == "staged":
    before = o.replace_dir
    o.replace_dir = lambda new, out: (pause(), before(new, out))
elif point == "aside":
    o._exchange = lambda a, b: False
    real = os.replace
    def replace(src, dst):
        real(src, dst)
        if str(dst).endswith(".old"):
            pause()
    os.replace = replace
elif point == "swapped":
    exchange = o._exchange
    o._exchange = lambda a, b: (exchange(a, b), pause())[0]
from export.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _export(model: Path, out: Path, context: int) -> list[str]:
    return ["--target", "onnx", "--model", str(model), "--out", str(out), "--context", str(context), "--no-validate"]


def _whole(out: Path) -> int:
    """The artifact at `out` is whole (exactly the files its manifest lists, each with its hash); -> its context."""
    manifest = json.loads((out / "manifest.json").read_text())
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert files == set(manifest["files"])
    for name, f in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == f["sha256"], name
    return manifest["context_length"]


def _stray(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def previous(tiny_hf, tmp_path_factory):
    """A tiny model and its artifact exported with --context 64 (the 'previous' artifact)."""
    model = tiny_hf("gemma3", tokenizer=True).path
    out = tmp_path_factory.mktemp("previous") / "art"
    assert main(_export(model, out, 64)) == 0
    return model, out


@pytest.mark.parametrize("point, sig", [("staged", signal.SIGTERM), ("staged", signal.SIGKILL),
                                        ("aside", signal.SIGTERM), ("aside", signal.SIGKILL),
                                        ("swapped", signal.SIGTERM), ("swapped", signal.SIGKILL)])
def test_an_interrupted_export_leaves_the_previous_artifact_or_the_new_one_whole(point, sig, previous, tmp_path):
    import shutil
    model, prev = previous
    out = tmp_path / "art"
    shutil.copytree(prev, out)
    flag = tmp_path / "paused"
    env = {**os.environ, "PAUSE_AT": point, "PAUSE_FLAG": str(flag), "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", PAUSING_CLI, *_export(model, out, 32)], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert child.poll() is None and time.monotonic() < deadline, child.stderr.read() if child.poll() else ""
            time.sleep(0.02)
        child.send_signal(sig)
        status = child.wait(60)
    finally:
        child.kill()
    err = child.stderr.read()
    assert "Traceback" not in err, err
    if sig == signal.SIGTERM:            # cleaned up as Ctrl-C is: nothing stray, --out whole at once
        assert status == 143 and "terminated" in err
        assert _stray(tmp_path) == [] and _whole(out) == (32 if point == "swapped" else 64)
    else:                                # killed: --out whole, or (killed between the renames) the previous
        assert status == -signal.SIGKILL  # artifact whole beside it, which the next run puts back
        stray = _stray(tmp_path)
        assert stray and all(output.stage_name(out, "", child.pid).name in s for s in stray)
        if point == "aside":
            assert not out.exists() and _whole(output.stage_name(out, "old", child.pid)) == 64
        else:
            assert _whole(out) == (32 if point == "swapped" else 64)
    assert main(_export(model, out, 32)) == 0                              # the next run
    assert _stray(tmp_path) == [] and _whole(out) == 32


def test_a_dead_runs_set_aside_artifact_is_put_back_before_anything_else(previous, tmp_path):
    """sweep_stale alone: a killed run's `.old` comes back when --out is gone; its partial folder is removed."""
    import shutil
    _, prev = previous
    out = tmp_path / "art"
    dead = _dead_pid()
    shutil.copytree(prev, output.stage_name(out, "old", dead))
    output.stage_name(out, "partial", dead).mkdir()
    (output.stage_name(out, "partial", dead) / "model.onnx").write_bytes(b"half")
    output.stage_name(out, "partial", os.getpid()).mkdir()      # a live process's: left alone
    output.sweep_stale(out)
    assert _whole(out) == 64 and _stray(tmp_path) == [output.stage_name(out, "partial", os.getpid()).name]


def test_a_failed_swap_puts_the_previous_artifact_back(previous, tmp_path, monkeypatch):
    import shutil
    _, prev = previous
    out, new = tmp_path / "art", tmp_path / "new"
    shutil.copytree(prev, out)
    new.mkdir()
    monkeypatch.setattr(output, "_exchange", lambda a, b: False)
    real = os.replace

    def replace(src, dst):
        if Path(src) == new:
            raise OSError(28, "No space left on device", str(dst))
        real(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space"):
        output.replace_dir(new, out)
    assert _whole(out) == 64 and _stray(tmp_path) == []


def test_out_replaces_our_artifact_an_empty_folder_or_with_force_anything(previous, tmp_path):
    model, prev = previous
    import shutil
    ours, empty, theirs = tmp_path / "ours", tmp_path / "empty", tmp_path / "theirs"
    shutil.copytree(prev, ours)
    empty.mkdir()
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    for out in (ours, empty):
        assert main(_export(model, out, 32)) == 0 and _whole(out) == 32
    assert main(_export(model, theirs, 32)) == 2 and (theirs / "notes.txt").read_text() == "mine"
    assert main([*_export(model, theirs, 32), "--force"]) == 0 and _whole(theirs) == 32


def _dead_pid() -> int:
    """The id of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid
