"""One sweep cell as a Ray task runs it: the export command's own pipeline (export -> validate, the same flags, so
the artifact and its figures are what `gemma-export --target ...` alone gives), then the host profile on the node
that built it; phones in their own task on the node they are attached to. Also what identifies a result: the tool's
version (its code) and a checkpoint's bytes."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import socket
import tempfile
import time
import traceback
from pathlib import Path

from .. import __version__
from ..converters.artifact import sha256

PACKAGES = ("export", "runtime_py", "devices")


@functools.cache
def tool_version() -> str:
    """`__version__` plus a digest of every file of the packages that build, validate and profile an artifact: any
    change to them (code or bundled data) is another tool."""
    root, h = Path(__file__).resolve().parents[2], hashlib.sha256()
    for package in PACKAGES:
        for p in sorted((root / package).rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return f"{__version__}+{h.hexdigest()[:12]}"


def source_digest(source: str | Path) -> str:
    """The bytes of a checkpoint: a file's sha256, or a folder's over its files' names and hashes."""
    path = Path(source)
    if path.is_file():
        return sha256(path)
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(path).as_posix().encode() + b"\0" + sha256(p).encode())
    return h.hexdigest()


def export_argv(cell: dict, out: Path) -> list[str]:
    """The `gemma-export export` command line of a cell (what the README gives to run one alone)."""
    o = cell["options"]
    v, auto = o["validate"], cell["recipe"] == "auto"
    argv = ["export", "--target", cell["target"], "--quant", cell["recipe"], "--model", cell["source"],
            "--out", str(out), "--json"]
    argv += ["--context", str(o["context"])] if o["context"] else []
    argv += ["--prefill", ",".join(map(str, o["prefill"]))] if o["prefill"] and cell["format"] == "litert" else []
    argv += [] if v["enabled"] else ["--no-validate"]
    min_top1 = o["auto"]["min_top1"] if auto else v.get("min_top1")
    argv += ["--min-top1", str(min_top1)] if min_top1 is not None else []
    argv += ["--max-kl", str(v["max_kl"])] if "max_kl" in v else []
    argv += ["--max-mb", str(o["auto"]["max_mb"])] if auto and "max_mb" in o["auto"] else []
    return argv


def _error(e: BaseException) -> str:
    """One line: the exception's type and message (bad input reads as the CLI's error line)."""
    text = " ".join(str(e).split()) or "".join(traceback.format_exception_only(type(e), e)).strip()
    return f"{type(e).__name__}: {text}"


def run_cell(cell: dict, out: str, driver_version: str, phones: bool) -> tuple[dict, tuple[str, bytes]]:
    """Export -> validate -> host profile of one cell into `out`. -> (its record, the name and bytes of the model
    file phones run, or ("", b"") without phones). Never raises: a failure is the record's `error`."""
    import torch
    started = time.time()
    record = {"node": socket.gethostname(), "tool_version": tool_version(), "status": "error", "error": None,
              "artifact": out, "started": started, "seconds": {}}
    model_file = ("", b"")
    try:
        if tool_version() != driver_version:
            raise RuntimeError(f"this node runs gemma-export {tool_version()}, the driver {driver_version}: install "
                               f"the same code on every node")
        torch.set_num_threads(cell["cpus"])
        from ..cli import build_parser
        from ..pipeline import run
        args = build_parser().parse_args(export_argv(cell, Path(out)))
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            status = run(args)
        summary = json.loads(printed.getvalue())
        record.update({k: summary.get(k) for k in ("recipe", "bytes", "files", "sha256", "validation", "plan")})
        record["seconds"] = dict(summary["seconds"])
        record["status"] = "ok" if status == 0 else "check_failed"
        artifact = next(Path(out).glob("*.litertlm"), Path(out))
        if cell["options"]["profile"]["host"]:
            t0 = time.perf_counter()
            record["profile"] = {"host": _host_profile(artifact, cell, Path(out))}
            record["seconds"]["profile_host"] = round(time.perf_counter() - t0, 2)
        if phones and cell["format"] == "litert":        # ONNX artifacts have no phone runner: host only
            from devices.adb import model_file as phone_file
            found = phone_file(artifact)
            model_file = (found.name, found.read_bytes())
    except Exception as e:           # noqa: BLE001  (recorded: the sweep goes on with the other cells)
        record["error"] = _error(e)
    record["seconds"]["cell"] = round(time.time() - started, 2)
    return record, model_file


def _host_profile(artifact: Path, cell: dict, out: Path) -> dict:
    from devices.host import profile_host
    from devices.profile import write_report
    p = cell["options"]["profile"]
    result = profile_host(artifact, threads=p["threads"] or cell["cpus"], runs=p["runs"],
                          prompt_lengths=p["prompt_lengths"], decode_tokens=p["decode_tokens"], spin=p["spin"])
    paths = write_report(result, out.parent / f"{out.name}.profile-host")
    return {**{k: result[k] for k in ("ttft_ms", "prefill_tok_s", "decode_tok_s", "peak_rss_mb", "load_s")},
            "report": str(paths["json"])}


def run_phone(cell: dict, phone: dict, model_file: tuple[str, bytes]) -> dict:
    """The artifact's model file profiled on an adb phone attached to this node (written here first: the node
    that built it may be another). Never raises."""
    try:
        from devices.adb import make_plan, profile_adb
        p = cell["options"]["profile"]
        with tempfile.TemporaryDirectory(prefix="gemma-export-sweep-") as tmp:
            model = Path(tmp) / model_file[0]
            model.write_bytes(model_file[1])
            plan = make_plan(model, phone["runner"], serial=phone["serial"], runs=p["runs"],
                             prompt_lengths=p["prompt_lengths"], decode_tokens=p["decode_tokens"])
            result = profile_adb(plan)
        return {k: result.get(k) for k in ("ttft_ms", "prefill_tok_s", "decode_tok_s", "peak_rss_mb")}
    except Exception as e:           # noqa: BLE001
        return {"error": _error(e), "node": socket.gethostname()}
