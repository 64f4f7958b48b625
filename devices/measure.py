"""What devices/ and bench/ measure the same way: this process's peak RSS, the machine (CPU model, cores,
memory), its memory bandwidth, and the K/V bytes a decode step reads."""
from __future__ import annotations

import os
import platform
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from runtime_py.contract import FULL_ATTENTION, SLIDING_ATTENTION


def _proc_field(path: str, field: str) -> str | None:
    """The text after `field:` in a /proc file (None where there is no such file or line)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field) and line[len(field):].lstrip().startswith(":"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def cpu_model() -> str:
    return _proc_field("/proc/cpuinfo", "model name") or platform.processor() or platform.machine()


def mem_total_gb() -> float:
    kb = _proc_field("/proc/meminfo", "MemTotal")
    return round(int(kb.split()[0]) / 2**20, 1) if kb else 0.0


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """This process's peak resident set in MB: VmHWM (resettable, reset_peak_rss); elsewhere getrusage's maxrss
    (the lifetime peak; on Linux it also starts from the parent's RSS at fork time, which exec carries over)."""
    hwm = _proc_field("/proc/self/status", "VmHWM")
    kb = int(hwm.split()[0]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / 1024, 1)


def describe(threads: int, load_before: tuple[float, ...] = ()) -> dict:
    """The machine, with the load average (1, 5, 15 min) before a measurement: other jobs on the cores skew every
    figure, the peers' and ours unevenly."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "mem_gb": mem_total_gb(), "threads": threads,
            "machine": platform.machine(), "kernel": platform.release(),
            "load_before": [round(x, 2) for x in load_before]}


def _best(run, repeats: int) -> float:
    run()                                   # the first pass faults the pages in
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t)
    return best


def bandwidth_gb_s(threads: int = 1, mb: int = 256, repeats: int = 5) -> dict:
    """Memory bandwidth in GB/s, best of `repeats`, `threads` numpy calls over disjoint slices (numpy releases the
    GIL): "copy" counts bytes read + bytes written by np.copyto (STREAM's convention; the write-allocate read is
    not counted), "read" the bytes a float32 dot product streams in (a decode step mostly reads weights)."""
    src = np.ones(mb * 2**20 // 4, np.float32)
    dst = np.empty_like(src)
    cuts = np.linspace(0, len(src), threads + 1).astype(int)
    parts = [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:])]
    with ThreadPoolExecutor(threads) as pool:
        copy = _best(lambda: list(pool.map(lambda s: np.copyto(dst[s], src[s]), parts)), repeats)
        read = _best(lambda: list(pool.map(lambda s: np.dot(dst[s], src[s]), parts)), repeats)
    return {"copy": round(2 * src.nbytes / copy / 1e9, 2), "read": round(2 * src.nbytes / read / 1e9, 2)}


def attended_positions(config: dict, position: float) -> float:
    """Cached positions a decode step at `position` attends to, summed over the layers: each global layer all of
    them, each sliding layer at most its window, a recurrent layer none (its state is fixed-size).
    config: our manifest's model config."""
    window = config.get("sliding_window") or position
    span = {FULL_ATTENTION: position, SLIDING_ATTENTION: min(position, window)}
    return sum(span.get(t, 0) for t in config["layer_types"])


def kv_bytes(config: dict, position: float, bytes_per_value: int = 4) -> float:
    """Bytes of K and V a decode step reads at `position` (attended_positions)."""
    return attended_positions(config, position) * 2 * config["num_kv_heads"] * config["head_dim"] * bytes_per_value
