"""gemma3-4b-vision to an int4 `.litertlm` at its real shapes, random weights (issue #18): what the conversion
costs on this machine, phase by phase (wall time, peak RSS), in a child process per run.

The LiteRT path converts the torch reference with litert-torch, so the model must exist as float32 tensors (no
meta-device streaming as on the ONNX side): bench.vision_shapes.random_model(materialize=True). A whole 4B model
is 17 GB of float32 before the converter copies anything, past what a shared 24 GB machine can give; `--layers
1,4,8` (the default) converts the decoder cut to that many of its 34 layers, the SigLIP tower whole, and the
figures for 34 layers are extrapolated per layer from the runs (least-squares line; the JSON says which figures
are measured and which extrapolated, and how far each run lies from the line). A watchdog kills a run whose RSS
passes --max-rss-gb or when the machine's available memory falls under --min-available-gb (other engineers
share it).

Phases, in the exporter's order (export.converters.litert.vision with consume=True, as the CLI without --validate
runs it, then bundle.build_litertlm): build (the random float32 model), `convert X` for each of the five models
with `release M` where the exporter frees the float model's weights, then `quantize X` for the quantized ones, then
`bundle`. Each phase's peak is
the process's VmHWM reset at its start (devices.measure); RSS is also sampled every second.

    .venv/bin/python -m bench.litert_vision_shapes [--layers 1,4,8] [--max-rss-gb 18]
Results: bench/results/litert_vision_shapes.json; artifacts in bench/cache/litert_vision_shapes/.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from runtime_py.contract import DEFAULT_CONTEXT

ROOT = Path(__file__).resolve().parent
PRESET, RECIPE = "gemma3-4b-vision", "int4"        # the android target's recipe; its context is DEFAULT_CONTEXT
GB = 2 ** 30


def _status_kb(field: str, path: str = "/proc/self/status") -> int:
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Phases:
    """Named consecutive phases of this process: wall seconds, RSS at the start, peak (VmHWM reset at the start);
    a sampler thread records RSS every `every` s and kills the process past `max_rss_gb` or when the machine has
    less than `min_available_gb` available."""

    def __init__(self, max_rss_gb: float, min_available_gb: float, every: float = 1.0):
        self.done, self.samples, self.name, self.t0 = [], [], None, time.perf_counter()
        self.limits = (max_rss_gb, min_available_gb)
        self._stop = threading.Event()
        threading.Thread(target=self._sample, args=(every,), daemon=True).start()

    def _sample(self, every: float) -> None:
        while not self._stop.wait(every):
            rss = _status_kb("VmRSS") / 2**20
            available = _status_kb("MemAvailable", "/proc/meminfo") / 2**20
            self.samples.append((round(time.perf_counter() - self.t0, 1), round(rss, 2)))
            if rss > self.limits[0] or available < self.limits[1]:
                state = {"phase": self.name, "rss_gb": round(rss, 2), "available_gb": round(available, 2),
                         "phases": self.done}
                print(f"ABORT {json.dumps(state)}", flush=True)
                os._exit(3)

    def switch(self, name: str | None) -> None:
        """End the current phase (if any), start `name` (None: none)."""
        from devices.measure import peak_rss_mb, reset_peak_rss
        now = time.perf_counter()
        if self.name is not None:
            self.done.append({"phase": self.name, "wall_s": round(now - self.start, 1),
                              "rss_start_gb": self.rss_start, "peak_gb": round(peak_rss_mb() / 1024, 2),
                              "rss_end_gb": round(_status_kb("VmRSS") / 2**20, 2)})
        self.name, self.start = name, now
        reset_peak_rss()
        self.rss_start = round(_status_kb("VmRSS") / 2**20, 2)

    def close(self) -> None:
        self.switch(None)
        self._stop.set()


def convert_child(layers: int, out: Path, max_rss_gb: float, min_available_gb: float) -> dict:
    """Build the random model cut to `layers` decoder layers and export it to out/model.litertlm, phase by phase."""
    import export.converters.litert.vision as vision
    from export.converters.litert import export_litert
    from export.converters.litert.bundle import BUNDLE, build_litertlm

    from .vision_shapes import random_model
    phases = Phases(max_rss_gb, min_available_gb)
    phases.switch("build")
    loaded = random_model(PRESET, layers, materialize=True, tower=False)
    params = {"decoder": sum(p.numel() for p in loaded.model.language_model.parameters()),
              "tower": sum(p.numel() for p in loaded.model.vision_tower.parameters()),
              "projector": sum(p.numel() for p in loaded.model.multi_modal_projector.parameters())}
    convert, quantize, release = vision._convert, vision.quantize_tflite, vision.release

    def timed_convert(signatures, composites_of, folder, name, r, flags=None):
        phases.switch(f"convert {name}")
        return convert(signatures, composites_of, folder, name, r, flags)

    def timed_quantize(src, dst, r, *args, **kwargs):
        phases.switch(f"quantize {Path(dst).name}")
        return quantize(src, dst, r, *args, **kwargs)

    def timed_release(module):
        phases.switch(f"release {type(module).__name__}")
        return release(module)

    vision._convert, vision.quantize_tflite, vision.release = timed_convert, timed_quantize, timed_release
    folder = out / "litert"
    shutil.rmtree(out, ignore_errors=True)
    export_litert(loaded, folder, RECIPE, cache_length=DEFAULT_CONTEXT, consume=True)
    phases.switch("bundle")
    build_litertlm(folder, out / BUNDLE)
    phases.close()
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.suffix == ".tflite"}
    return {"layers": layers, "parameters": params, "phases": phases.done, "files": files,
            "bundle_bytes": (out / BUNDLE).stat().st_size, "samples": phases.samples,
            "peak_gb": max(p["peak_gb"] for p in phases.done)}


def child(layers: int, out: Path, args) -> dict:
    cmd = ["nice", "-n", "10", sys.executable, "-m", "bench.litert_vision_shapes", "--child", str(layers), str(out),
           str(args.max_rss_gb), str(args.min_available_gb)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT.parent, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(("RESULT ", "ABORT ")):
            kind, _, body = line.partition(" ")
            return {"status": "ok" if kind == "RESULT" else "aborted by the watchdog", **json.loads(body),
                    "process_wall_s": round(wall, 1), "exit": proc.returncode}
    raise RuntimeError(f"{layers} layers failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def fit(runs: list[dict], layers: int) -> dict:
    """Each phase's wall time and peak, the process peak and the bundle's bytes as a + b x layers, least squares
    over the runs -> a, b, the value at `layers`, and each run's distance from the line (how straight it is)."""
    import numpy as np
    x = np.array([r["layers"] for r in runs], float)

    def line(ys):
        b, a = np.polyfit(x, np.array(ys, float), 1)
        return {"per_layer": round(float(b), 3), "at_0": round(float(a), 2),
                f"at_{layers}": round(float(a + b * layers), 2),
                "residuals": [round(float(y - (a + b * xi)), 2) for xi, y in zip(x, ys)]}

    names = [p["phase"] for p in runs[0]["phases"]]
    by = [{p["phase"]: p for p in r["phases"]} for r in runs]
    return {"from_layers": [r["layers"] for r in runs],
            "phases": {n: {k: line([b[n][k] for b in by]) for k in ("wall_s", "peak_gb")} for n in names},
            "total_wall_s": line([sum(p["wall_s"] for p in r["phases"]) for r in runs]),
            "peak_gb": line([r["peak_gb"] for r in runs]), "bundle_bytes": line([r["bundle_bytes"] for r in runs])}


def dumps(results: dict) -> str:
    """JSON, indented, each [seconds, GiB] RSS sample on one line."""
    import re
    text = json.dumps(results, indent=1)
    return re.sub(r"\[\s+(-?[\d.]+),\s+(-?[\d.]+)\s+\]", r"[\1, \2]", text) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        layers, out, max_rss, min_avail = int(argv[1]), Path(argv[2]), float(argv[3]), float(argv[4])
        print("RESULT " + json.dumps(convert_child(layers, out, max_rss, min_avail)), flush=True)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="1,4,8", help="decoder layers per run (two or more: the fit's points)")
    ap.add_argument("--max-rss-gb", type=float, default=18.0, help="the watchdog kills a run past this RSS")
    ap.add_argument("--min-available-gb", type=float, default=1.5, help="... or when the machine has less available")
    ap.add_argument("--results", default=str(ROOT / "results" / "litert_vision_shapes.json"))
    args = ap.parse_args(argv)
    from devices.measure import describe

    from .vision_shapes import config, wait_for_memory
    full = len(config(PRESET).text.layer_types)
    results = {"date": time.strftime("%Y-%m-%d"), "machine": describe(2, os.getloadavg()), "preset": PRESET,
               "recipe": RECIPE, "context": DEFAULT_CONTEXT, "full_layers": full, "runs": []}
    for layers in sorted({int(x) for x in args.layers.split(",")}):
        before = wait_for_memory(args.max_rss_gb + 1, 3600.0)
        run = child(layers, ROOT / "cache" / "litert_vision_shapes" / f"{layers}l", args)
        run.update(before=before, load_after=[round(x, 2) for x in os.getloadavg()])
        results["runs"].append(run)
        print(json.dumps({k: v for k, v in run.items() if k != "samples"}, indent=1), flush=True)
    ok = [r for r in results["runs"] if r["status"] == "ok"]
    if len(ok) >= 2:
        results["extrapolated"] = fit(ok, full)
    Path(args.results).write_text(dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
